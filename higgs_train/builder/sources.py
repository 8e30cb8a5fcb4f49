"""Step 1 of the builder: find out what kind of source the user pointed at and list its clips.

A source becomes ``SourceItem``s (one audio file or one dataset row, its speaker and transcript) plus
``Rejection``s for what cannot become an item (a missing, empty or non-UTF-8 transcript, an audio file outside any
speaker folder). Nothing is decoded here: listing a 100 h corpus must stay fast; audio work happens in the actors.

Source kinds (``detect_source_kind`` tells them apart, ``--source_kind`` skips it); speakers come from the layout:

* ``hf_disk``: a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` or ``dataset_dict.json``);
  e.g. ``--input hf_dataset --text_column sentence --speaker_column client_id``;
* ``ljspeech``: ``metadata.csv`` (or a folder holding it): ``id|text``, ``id|text|normalized`` or
  ``id|text|normalized|speaker``, audio in ``wavs/<id>.wav`` (or ``<id>.wav``); e.g. ``--input LJSpeech-1.1``;
* ``tsv``: Common Voice: a ``.tsv`` file (or a folder of them: ``validated.tsv`` if present, else every ``*.tsv``
  but ``invalidated``/``other``) with ``path``, ``sentence`` and ``client_id`` (the speaker) columns, audio in
  ``clips/<path>``; e.g. ``--input cv-corpus-17.0/en/train.tsv``;
* ``vctk``: VCTK: ``txt/<spk>/<utt>.txt`` beside ``wav48*/<spk>/<utt>[_mic1|_mic2].wav|flac`` (one microphone
  per utterance: mic1, else the other); e.g. ``--input VCTK-Corpus-0.92``;
* ``parquet``: a ``.parquet`` file or a folder of them (a Hugging Face dataset's Parquet export) *without*
  ``messages``: columns ``--audio_column`` (``{"bytes", "path"}`` or ``{"array", "sampling_rate"}``),
  ``--text_column``, ``--speaker_column``; e.g. ``--input hf_dataset_parquet/ --text_column sentence``;
* ``manifest``: a training manifest (``.json`` / ``.jsonl``, or Parquet with ``messages``/``messages_json``);
  its clips are re-paired; e.g. ``--input data/train.jsonl``;
* ``list``: any other text file of ``audio|text`` or ``audio|speaker|text`` lines (paths relative to the file);
  e.g. ``--input clips.txt``;
* ``libritts``: LibriTTS / LibriTTS-R: ``<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt`` (preferred)
  or ``<utt>.original.txt``; the speaker is the folder two levels up; e.g. ``--input LibriTTS_R/train-clean-100``;
* ``folders``: a folder with one sub-folder per speaker of ``*.wav|flac|mp3|ogg``, each with a ``.txt`` or ``.lab``
  transcript of the same name; e.g. ``--input recordings`` (``recordings/<speaker>/<name>.wav`` + ``<name>.txt``).

Every path a source names (a symlink, a ``..`` or absolute path in a CSV, TSV, list, dataset or manifest) must
resolve inside the input folder (``--allow_outside PATH`` adds a folder); a recording without a transcript file is
kept (cut at pauses when long) and listed in ``DIR/to_transcribe.tsv`` for you to fill.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.chatml import clips_with_transcripts
from higgs_train.data.manifest import load_manifest
from higgs_train.data.plain_parquet import UnsafeParquetError, check_plain_schema, parquet_schema, read_plain_parquet
from higgs_train.data.validation import structural_reason, text_part_reason

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
TRANSCRIPT_EXTENSIONS = (".txt", ".lab")
SOURCE_KINDS = ("hf_disk", "ljspeech", "tsv", "vctk", "parquet", "manifest", "list", "libritts", "folders")
LIBRITTS_TRANSCRIPTS = (".normalized.txt", ".original.txt")  # LibriTTS's normalized text first: numbers spelled out
COMMON_VOICE_COLUMNS = ("path", "sentence", "client_id")  # audio, text, speaker
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


# ------------------------------------------------------------------------------------------------ detection


def detect_source_kind(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"input not found: {path}")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_disk"
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        first = next((p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS), None)
        if first is not None and any(_sidecar(first, ext).is_file() for ext in LIBRITTS_TRANSCRIPTS):
            return "libritts"  # before tsv: a LibriTTS chapter folder holds a .trans.tsv
        if any(_is_common_voice_tsv(t) for t in path.glob("*.tsv")):
            return "tsv"
        if (path / "txt").is_dir() and any(d.is_dir() for d in path.glob("wav48*")):
            return "vctk"
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
            return "manifest" if _parquet_is_manifest(next(iter(sorted(path.rglob("*.parquet"))))) else "parquet"
        return "folders"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "manifest" if _parquet_is_manifest(path) else "parquet"
    if suffix in (".json", ".jsonl"):
        return "manifest"
    if suffix == ".tsv":
        return "tsv"
    if path.name == "metadata.csv":
        return "ljspeech"
    first = _first_fields(path)
    if first and Path(first[0]).suffix.lower() not in AUDIO_EXTENSIONS:
        return "ljspeech"
    return "list"


def _is_common_voice_tsv(path: Path) -> bool:
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        return COMMON_VOICE_COLUMNS[0] in handle.readline().rstrip("\r\n").split("\t")


def _parquet_is_manifest(path: Path) -> bool:
    try:
        names = set(parquet_schema(path).names)
    except UnsafeParquetError as err:
        raise SourceError(f"{err}; write it with plain columns") from None
    return bool(names & {"messages", "messages_json"})


def _first_fields(path: Path) -> list[str]:
    try:
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            if line.strip():
                return line.split("|")
    except UnicodeDecodeError as err:
        raise SourceError(f"list file is not UTF-8 text: {path}") from err
    return []


def input_root(path: str | Path) -> Path:
    """The folder a source may read from: the input folder, or the folder holding an input file."""
    src = Path(path).resolve()
    return src if src.is_dir() else src.parent


def list_source(path: str | Path, options: SourceOptions | None = None, kind: str | None = None) -> SourceListing:
    """Detect (unless ``kind`` is given) and list a source; items whose transcript fails the trainer's text checks
    become rejections here, before any audio is decoded."""
    src = Path(path).resolve()  # the confinement judges real paths; listing them from the real root keeps keys
    options = options or SourceOptions()
    kind = kind or detect_source_kind(src)
    readers = {
        "hf_disk": _list_hf_disk,
        "parquet": _list_parquet,
        "manifest": _list_manifest,
        "ljspeech": _list_ljspeech,
        "tsv": _list_tsv,
        "vctk": _list_vctk,
        "list": _list_pipe_file,
        "libritts": _list_libritts,
        "folders": _list_folders,
    }
    if kind not in readers:
        raise SourceError(f"unknown source kind {kind!r}; one of {', '.join(SOURCE_KINDS)}")
    confine = Confinement(input_root(src), tuple(Path(p).resolve() for p in options.allow_outside))
    listing = readers[kind](src, options, confine)
    listing.kind = kind
    items, listing.items = listing.items, []
    for item in items:
        problem = transcript_problem(item.text) if item.text is not None else None
        if problem:
            listing.rejections.append(Rejection(item.key, item.speaker, BAD_TRANSCRIPT, problem))
        else:
            listing.items.append(item)
    return listing


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


def _transcript(raw: str) -> tuple[str, tuple[str, ...]]:
    lines = tuple(" ".join(line.split()) for line in raw.splitlines() if line.strip())
    return " ".join(lines), lines


def _read_transcript_file(path: Path, key: str, speaker: str) -> tuple[SourceItem | None, Rejection | None]:
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return None, Rejection(key, speaker, NOT_UTF8, f"{path.name}: byte {err.start}")
    except OSError as err:
        return None, Rejection(key, speaker, UNREADABLE, f"{path.name}: {err.strerror}")
    text, lines = _transcript(raw)
    if not text:
        return None, Rejection(key, speaker, EMPTY_TRANSCRIPT, path.name)
    return SourceItem(key, speaker, text, text_lines=lines), None


def _sidecar(audio: Path, extension: str) -> Path:
    return audio.with_name(audio.stem + extension)


def _add_audio_file(
    listing: SourceListing, key: str, speaker: str, audio: Path, transcript: Path | None, confine: Confinement
) -> None:
    """One audio file and its transcript file (None: none; the clip is kept unlabelled for ``to_transcribe.tsv``)."""
    try:
        confine.check(audio)
        if transcript is not None:
            confine.check(transcript)
    except OutsideInput as err:
        listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
        return
    if transcript is None:
        listing.items.append(SourceItem(key, speaker, None, str(audio)))
        return
    item, rejection = _read_transcript_file(transcript, key, speaker)
    if rejection:
        listing.rejections.append(rejection)
    else:
        assert item is not None
        listing.items.append(SourceItem(key, speaker, item.text, str(audio), text_lines=item.text_lines))


def _audio_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise SourceError(f"no audio files ({'|'.join(AUDIO_EXTENSIONS)}) under {root}")
    return files


# ---------------------------------------------------------------------------------------- folders and LibriTTS


def _list_folders(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    listing = SourceListing("folders")
    for audio in _audio_files(root):
        rel = audio.relative_to(root)
        key = rel.as_posix()
        if len(rel.parts) < 2 and not options.speaker:
            listing.rejections.append(Rejection(key, None, NO_SPEAKER_FOLDER, "audio must be in <speaker>/"))
            continue
        speaker = options.speaker or rel.parts[0]
        transcript = next((t for ext in TRANSCRIPT_EXTENSIONS if (t := audio.with_suffix(ext)).is_file()), None)
        _add_audio_file(listing, key, speaker, audio, transcript, confine)
    return listing


def _list_libritts(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """``<speaker>/<chapter>/<utt>.wav``: the speaker is two folders up, whatever level ``--input`` names (the
    corpus, a subset such as ``train-clean-100``, one speaker's or one chapter's folder)."""
    listing = SourceListing("libritts")
    extensions = (*LIBRITTS_TRANSCRIPTS, *TRANSCRIPT_EXTENSIONS)
    for audio in _audio_files(root):
        key = audio.relative_to(root).as_posix()
        speaker = options.speaker or audio.parent.parent.name
        transcript = next((t for ext in extensions if (t := _sidecar(audio, ext)).is_file()), None)
        _add_audio_file(listing, key, speaker, audio, transcript, confine)
    return listing


# ------------------------------------------------------------------------------------------------------ VCTK

_MIC = re.compile(r"^(?P<utt>.+?)(?:_mic(?P<mic>\d+))?$")


def _list_vctk(root: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """``wav48*/<spk>/<utt>[_micN].wav|flac`` with ``txt/<spk>/<utt>.txt``. VCTK 0.92 ships every utterance from
    two microphones: one is kept (mic1 first), the other is reported, so a reference is never the target's own
    sentence from the other microphone."""
    listing = SourceListing("vctk")
    folders = sorted((d for d in root.glob("wav48*") if d.is_dir()), key=lambda d: ("trimmed" not in d.name, d.name))
    if not folders:
        raise SourceError(f"no wav48* folder in {root} (VCTK keeps its audio in wav48_silence_trimmed/ or wav48/)")
    audio_root = folders[0]
    kept: dict[tuple[str, str], Path] = {}
    for audio in sorted(_audio_files(audio_root), key=lambda p: (p.parent.name, p.stem)):
        rel = audio.relative_to(audio_root)
        key = f"{audio_root.name}/{rel.as_posix()}"
        if len(rel.parts) != 2:
            listing.rejections.append(Rejection(key, None, NO_SPEAKER_FOLDER, "VCTK audio must be in <speaker>/"))
            continue
        speaker, match = rel.parts[0], _MIC.match(audio.stem)
        assert match is not None
        utt = match["utt"]
        if (speaker, utt) in kept:
            detail = f"same utterance as {kept[speaker, utt].name} (one microphone is kept)"
            listing.rejections.append(Rejection(key, speaker, OTHER_MICROPHONE, detail))
            continue
        kept[speaker, utt] = audio
        transcript = root / "txt" / speaker / f"{utt}.txt"
        _add_audio_file(
            listing, key, options.speaker or speaker, audio, transcript if transcript.is_file() else None, confine
        )
    return listing


# ------------------------------------------------------------------------------------------- pipe-separated


def _pipe_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path} is not UTF-8 text (byte {err.start})") from err
    return [(n, line.split("|")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _list_ljspeech(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    csv_file = path / "metadata.csv" if path.is_dir() else path
    root = csv_file.parent
    default_speaker = options.speaker or root.name
    listing = SourceListing("ljspeech")
    for line_no, fields in _pipe_lines(csv_file):
        key = f"{csv_file.name}:{line_no}"
        if len(fields) not in (2, 3, 4):
            listing.rejections.append(Rejection(key, None, BAD_LINE, f"{len(fields)} fields, expected 2-4"))
            continue
        file_id, text = fields[0].strip(), fields[1]
        if len(fields) >= 3 and fields[2].strip():
            text = fields[2]  # the normalized column spells out numbers and abbreviations
        speaker = fields[3].strip() if len(fields) == 4 and fields[3].strip() else default_speaker
        try:
            candidates = [confine.check(c, root) for c in (f"wavs/{file_id}.wav", f"{file_id}.wav", file_id)]
        except OutsideInput as err:
            listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
            continue
        audio = next((c for c in candidates if c.is_file()), None)
        _add_row(listing, key, speaker, text, audio, f"audio not found: wavs/{file_id}.wav")
    return listing


def _list_pipe_file(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    listing = SourceListing("list")
    for line_no, fields in _pipe_lines(path):
        key = f"{path.name}:{line_no}"
        if len(fields) == 2:
            audio_rel, speaker, text = fields[0], options.speaker or path.stem, fields[1]
        elif len(fields) == 3:
            audio_rel, speaker, text = fields[0], fields[1].strip(), fields[2]
        else:
            listing.rejections.append(Rejection(key, None, BAD_LINE, f"{len(fields)} fields, expected 2 or 3"))
            continue
        _add_confined_row(listing, confine, key, speaker, text, audio_rel.strip(), path.parent)
    return listing


def _add_confined_row(
    listing: SourceListing, confine: Confinement, key: str, speaker: str, text: str, reference: str, base: Path
) -> None:
    try:
        audio = confine.check(reference, base)
    except OutsideInput as err:
        listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
        return
    _add_row(listing, key, speaker, text, audio if audio.is_file() else None, f"audio not found: {reference}")


def _add_row(listing: SourceListing, key: str, speaker: str, text: str, audio: Path | None, missing: str) -> None:
    if audio is None:
        listing.rejections.append(Rejection(key, speaker, UNREADABLE, missing))
        return
    text, lines = _transcript(text)
    if not text:
        listing.rejections.append(Rejection(key, speaker, EMPTY_TRANSCRIPT, audio.name))
        return
    listing.items.append(SourceItem(key, speaker, text, str(audio), text_lines=lines))


# -------------------------------------------------------------------------------------------- Common Voice


def _tsv_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "validated.tsv").is_file():
        return [path / "validated.tsv"]  # Common Voice: train/dev/test are subsets of it
    return sorted(p for p in path.glob("*.tsv") if p.stem not in ("invalidated", "other"))


def _list_tsv(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """Common Voice TSVs (``path``, ``sentence``, ``client_id``), audio in ``clips/`` beside them. A column flag
    (``--audio_column`` ...) names another column when the file has it."""
    listing = SourceListing("tsv")
    seen: set[Path] = set()
    for tsv in _tsv_files(path):
        with tsv.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = reader.fieldnames or []
            wanted = (options.audio_column, options.text_column, options.speaker_column)
            audio_col, text_col, speaker_col = (
                flag if flag in header else default for flag, default in zip(wanted, COMMON_VOICE_COLUMNS, strict=True)
            )
            missing = [c for c in (audio_col, text_col) if c not in header]
            if missing:
                raise SourceError(f"{tsv}: no column {missing[0]!r} (columns: {', '.join(header)})")
            for line_no, row in enumerate(reader, start=2):
                key = f"{tsv.name}:{line_no}"
                speaker = (row.get(speaker_col) or "").strip() or options.speaker or tsv.parent.name
                reference = (row.get(audio_col) or "").strip()
                clip = f"clips/{reference}" if (tsv.parent / "clips" / reference).is_file() else reference
                before = len(listing.items)
                _add_confined_row(listing, confine, key, speaker, row.get(text_col) or "", clip, tsv.parent)
                if len(listing.items) > before:
                    audio = Path(str(listing.items[-1].audio_path))
                    if audio in seen:  # the same clip in two TSVs of one folder
                        listing.items.pop()
                    seen.add(audio)
    return listing


# ------------------------------------------------------------------------------------------ Hugging Face data


def _list_hf_disk(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """Rows of a ``save_to_disk`` folder; a DatasetDict contributes every split.

    The Arrow table is read as stored (audio as ``{"bytes", "path"}``), never through ``datasets``' audio
    decoding, which needs torchcodec and would decode every clip in this process.
    """
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [("", loaded)]
    listing = SourceListing("hf_disk")
    for split, dataset in splits:
        name = f"{path.name}/{split}" if split else path.name
        _add_table_rows(listing, dataset.data.table, name, path, options, confine)
    return listing


def _list_parquet(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    listing = SourceListing("parquet")
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        try:
            table = read_plain_parquet(file)
        except UnsafeParquetError as err:  # a pickled-object column would run code at to_pylist
            raise SourceError(f"{err}; write it with plain columns") from None
        _add_table_rows(listing, table, name, file.parent, options, confine)
    return listing


def _add_table_rows(
    listing: SourceListing, table: Any, name: str, root: Path, options: SourceOptions, confine: Confinement
) -> None:
    columns = set(table.column_names)
    for column in (options.audio_column, options.text_column):
        if column not in columns:
            raise SourceError(f"{name}: no column {column!r} (columns: {', '.join(sorted(columns))})")
    has_speaker = options.speaker_column in columns
    # Only the columns used become Python objects, and none of an extension type (Ray's pickled-object type would
    # run code at to_pylist; a save_to_disk folder is Arrow, not Parquet, so plain_parquet has not seen it).
    used = [options.audio_column, options.text_column, *([options.speaker_column] if has_speaker else [])]
    table = table.select(list(dict.fromkeys(used)))
    try:
        check_plain_schema(table.schema, name)
    except UnsafeParquetError as err:
        raise SourceError(f"{err}; write it with plain columns") from None
    default_speaker = options.speaker or Path(name).parts[0]
    for index, row in enumerate(table.to_pylist()):
        key = f"{name}[{index}]"
        speaker = str(row[options.speaker_column]) if has_speaker and row[options.speaker_column] else default_speaker
        try:
            audio_bytes, audio_path = _row_audio(row[options.audio_column], root, confine)
        except OutsideInput as err:
            listing.rejections.append(Rejection(key, speaker, OUTSIDE_INPUT, str(err)))
            continue
        except ValueError as err:
            listing.rejections.append(Rejection(key, speaker, UNREADABLE, str(err)))
            continue
        raw_text = row[options.text_column]
        text, lines = _transcript(raw_text if isinstance(raw_text, str) else "")
        if not text:
            listing.rejections.append(Rejection(key, speaker, EMPTY_TRANSCRIPT, options.text_column))
            continue
        listing.items.append(SourceItem(key, speaker, text, audio_path, audio_bytes, lines))


def _row_audio(value: Any, root: Path, confine: Confinement) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` or ``(None, path)`` from a datasets Audio value (stored or decoded form)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None
        if value.get("array") is not None and value.get("sampling_rate"):
            import numpy as np
            import soundfile as sf

            buffer = io.BytesIO()
            sf.write(buffer, np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"]), format="WAV")
            return buffer.getvalue(), None
        value = value.get("path")
    if isinstance(value, str) and value:
        path = confine.check(value, root)
        if path.is_file():
            return None, str(path)
        raise ValueError(f"audio not found: {value}")
    raise ValueError("no audio in the row")


# ------------------------------------------------------------------------------------------------ manifest


def _list_manifest(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
    """Every distinct (audio, transcript) of a training manifest, by speaker: targets and references alike."""

    listing = SourceListing("manifest")
    seen: set[str] = set()
    root = path.parent if path.is_file() else path
    for row in load_manifest(path):
        key = f"{path.name}[{row.get('row_index')}]"
        reason, turns = structural_reason(row)
        if reason:
            listing.rejections.append(Rejection(key, row.get("speaker"), UNREADABLE, reason))
            continue
        speaker = row.get("speaker") or options.speaker
        if not speaker:
            listing.rejections.append(Rejection(key, None, UNREADABLE, "row has no speaker (use --speaker)"))
            continue
        for text, value in clips_with_transcripts(turns):
            if value not in seen:
                seen.add(value)
                _add_confined_row(listing, confine, f"{key}:{value}", speaker, text or "", value, root)
    return listing


def describe_kinds() -> str:
    """The ``--help`` text listing the source kinds (this module's docstring, from the list on)."""
    doc = __doc__ or ""
    return doc[doc.index("Source kinds") :].strip()
