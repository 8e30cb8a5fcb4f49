"""What every source reader hands the builder: items and rejections, and the rules each reader obeys.

Why a module below the readers (``file_sources``, ``table_sources``) and the front door (``sources``): the
vocabulary (``SourceItem``, ``Rejection`` and its categories, ``SourceListing``, ``SourceOptions``), the
confinement of every path a source names to the input folder (``Confinement``), and the transcript checks
(``transcript_problem``, ``clean_transcript``) are shared by every kind of source and by the later steps (audio,
pairing, report). Kept here once, a new source kind is one reader function, and no reader can forget a rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from higgs_train.data.text_checks import text_part_reason

# Speech rarely exceeds ~20 characters a second; a transcript far beyond that does not belong to its clip (a pasted
# chapter, a wrong file), and the trainer would quarantine the row as too long after it had become a reference.
MAX_CHARACTERS_PER_SECOND = 40.0
CHARACTER_SLACK = 20

# Rejection categories: the report groups by these, so keep them stable.
UNREADABLE = "unreadable"
NO_TRANSCRIPT = "no transcript"
EMPTY_TRANSCRIPT = "empty transcript"
NOT_UTF8 = "transcript is not UTF-8"
BAD_LINE = "malformed line"
NO_SPEAKER_FOLDER = "not in a speaker folder"
OUTSIDE_INPUT = "outside the input"
BAD_TRANSCRIPT = "bad transcript"
OTHER_MICROPHONE = "other microphone"


class SourceError(ValueError):
    """The source as a whole cannot be read (missing path, unknown layout, missing column)."""


@dataclass(frozen=True)
class SourceItem:
    """One audio file or dataset row to process.

    ``key`` names it in reports (a path relative to the source, or ``name[row]``). Audio is a file path or, for
    dataset rows, encoded bytes. ``text`` is the whole transcript (None: none given); ``text_lines`` are its
    non-empty lines, which the segmenter uses as per-segment transcripts of a long recording.
    """

    key: str
    speaker: str
    text: str | None
    audio_path: str | None = None
    audio_bytes: bytes | None = None
    text_lines: tuple[str, ...] = ()

    def read_audio_bytes(self) -> bytes:
        if self.audio_bytes is not None:
            return self.audio_bytes
        assert self.audio_path is not None
        return Path(self.audio_path).read_bytes()


@dataclass(frozen=True)
class Rejection:
    """Something left out of the manifests, with its category (``reason``) and the specifics (``detail``)."""

    key: str
    speaker: str | None
    reason: str
    detail: str = ""


@dataclass
class SourceListing:
    kind: str
    items: list[SourceItem] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class SourceOptions:
    """How to read columns and speakers; ``speaker`` names the speaker of single-speaker sources."""

    audio_column: str = "audio"
    text_column: str = "text"
    speaker_column: str = "speaker"
    speaker: str | None = None
    allow_outside: tuple[str, ...] = ()  # folders outside the input that sources may name (``--allow_outside``)


# ------------------------------------------------------------------------------------------------ confinement


class OutsideInput(ValueError):
    """A source names a file outside the input folder (and outside every ``--allow_outside`` folder)."""


@dataclass(frozen=True)
class Confinement:
    """Where a source may read: ``root`` (the input folder) and the ``--allow_outside`` folders.

    Why: a symlink, a ``..`` or an absolute path in a CSV or list file would otherwise copy any readable file of the
    machine into ``DIR/audio`` as a plain file, past the trainer's own "escapes the audio root" check. Both the path
    as written (``..`` collapsed) and its real target (symlinks followed) must lie inside one of the folders.
    """

    root: Path
    allowed: tuple[Path, ...] = ()

    def _inside(self, path: Path) -> bool:
        return any(path.is_relative_to(base) for base in (self.root, *self.allowed))

    def check(self, reference: str | Path, base: Path | None = None) -> Path:
        """The absolute path ``reference`` (relative to ``base``, default the root) names, or ``OutsideInput``.

        Nothing outside is probed: the written path is judged before the file system is asked about it."""
        written = Path(reference)
        lexical = Path(os.path.normpath(written if written.is_absolute() else (base or self.root) / written))
        hint = "; --allow_outside PATH allows a folder"
        if not self._inside(lexical):
            raise OutsideInput(f"{reference} is outside the input folder {self.root}{hint}")
        real = lexical.resolve()
        if real != lexical and not self._inside(real):
            raise OutsideInput(f"{reference} is a symlink to {real}, outside the input folder{hint}")
        return lexical


# --------------------------------------------------------------------------------------------- transcripts


def transcript_problem(text: str, seconds: float | None = None) -> str | None:
    """Why a transcript must not be trained (None: it may): the trainer's own text checks (empty, a control token
    such as ``<|audio_eos|>``, a control character such as NUL or ESC), and, given the clip's length, more text
    than anyone speaks in it (``MAX_CHARACTERS_PER_SECOND``)."""

    reason = text_part_reason(text)
    if reason is None and seconds is not None and len(text) > CHARACTER_SLACK + MAX_CHARACTERS_PER_SECOND * seconds:
        reason = f"{len(text)} characters for a {seconds:.1f}s clip (over {MAX_CHARACTERS_PER_SECOND:g} a second)"
    return reason


def clean_transcript(raw: str) -> tuple[str, tuple[str, ...]]:
    """(the whole transcript on one line, its non-empty lines) with runs of white space collapsed; every reader
    takes its text through here, so a transcript file and a table cell give the same item."""
    lines = tuple(" ".join(line.split()) for line in raw.splitlines() if line.strip())
    return " ".join(lines), lines


def add_confined_row(
    listing: SourceListing, confine: Confinement, key: str, speaker: str, text: str, reference: str, base: Path
) -> None:
    """``add_row`` for an audio path a source wrote down (relative to ``base``): outside the input, it is rejected."""
    try:
        audio = confine.check(reference, base)
    except OutsideInput as err:
        listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
        return
    add_row(listing, key, speaker, text, audio if audio.is_file() else None, f"audio not found: {reference}")


def add_row(listing: SourceListing, key: str, speaker: str, text: str, audio: Path | None, missing: str) -> None:
    """One item, or its rejection: no audio file (``missing`` says which) or an empty transcript."""
    if audio is None:
        listing.rejections.append(Rejection(key, speaker, UNREADABLE, missing))
        return
    text, lines = clean_transcript(text)
    if not text:
        listing.rejections.append(Rejection(key, speaker, EMPTY_TRANSCRIPT, audio.name))
        return
    listing.items.append(SourceItem(key, speaker, text, str(audio), text_lines=lines))
