"""Step 1 of the builder: find out what kind of source the user pointed at and list its clips.

A source becomes ``SourceItem``s (one audio file or one dataset row, its speaker and transcript) plus
``Rejection``s for what cannot become an item (a missing, empty or non-UTF-8 transcript, an audio file outside any
speaker folder). Nothing is decoded here: listing a 100 h corpus must stay fast; audio work happens in the actors.

Source kinds (``detect_source_kind``), checked in this order:

* ``hf_disk``: a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` or ``dataset_dict.json``);
* ``parquet``: a ``.parquet`` file or a folder of them (a Hugging Face dataset's Parquet export) *without*
  ``messages``: columns ``--audio_column`` (``{"bytes", "path"}`` or ``{"array", "sampling_rate"}``),
  ``--text_column``, ``--speaker_column``;
* ``manifest``: a training manifest (``.json`` / ``.jsonl``, or Parquet with ``messages``/``messages_json``);
  its clips are re-paired;
* ``ljspeech``: ``metadata.csv`` (or a folder holding it): ``id|text``, ``id|text|normalized`` or
  ``id|text|normalized|speaker``, audio in ``wavs/<id>.wav`` (or ``<id>.wav`` / the id as a path);
* ``list``: any other text file of ``audio|text`` or ``audio|speaker|text`` lines (paths relative to the file);
* ``folders``: a folder with one sub-folder per speaker of ``*.wav|flac|mp3|ogg``, each with a ``.txt`` or ``.lab``
  transcript of the same name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
TRANSCRIPT_EXTENSIONS = (".txt", ".lab")
SOURCE_KINDS = ("hf_disk", "parquet", "manifest", "ljspeech", "list", "folders")

# Rejection categories: the report groups by these, so keep them stable.
UNREADABLE = "unreadable"
NO_TRANSCRIPT = "no transcript"
EMPTY_TRANSCRIPT = "empty transcript"
NOT_UTF8 = "transcript is not UTF-8"
BAD_LINE = "malformed line"
NO_SPEAKER_FOLDER = "not in a speaker folder"


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


# ------------------------------------------------------------------------------------------------ detection


def detect_source_kind(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"input not found: {path}")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_disk"
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
            return "manifest" if _parquet_is_manifest(next(iter(sorted(path.rglob("*.parquet"))))) else "parquet"
        return "folders"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "manifest" if _parquet_is_manifest(path) else "parquet"
    if suffix in (".json", ".jsonl"):
        return "manifest"
    if path.name == "metadata.csv":
        return "ljspeech"
    first = _first_fields(path)
    if first and Path(first[0]).suffix.lower() not in AUDIO_EXTENSIONS:
        return "ljspeech"
    return "list"


def _parquet_is_manifest(path: Path) -> bool:
    from higgs_train.data.plain_parquet import UnsafeParquetError, parquet_schema

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


def list_source(path: str | Path, options: SourceOptions | None = None, kind: str | None = None) -> SourceListing:
    """Detect (unless ``kind`` is given) and list a source."""
    src = Path(path)
    options = options or SourceOptions()
    kind = kind or detect_source_kind(src)
    readers = {
        "hf_disk": _list_hf_disk,
        "parquet": _list_parquet,
        "manifest": _list_manifest,
        "ljspeech": _list_ljspeech,
        "list": _list_pipe_file,
        "folders": _list_folders,
    }
    if kind not in readers:
        raise SourceError(f"unknown source kind {kind!r}; one of {', '.join(SOURCE_KINDS)}")
    listing = readers[kind](src, options)
    listing.kind = kind
    return listing


# --------------------------------------------------------------------------------------------- transcripts


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


# ------------------------------------------------------------------------------------------------- folders


def _list_folders(root: Path, options: SourceOptions) -> SourceListing:
    listing = SourceListing("folders")
    for audio in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
        rel = audio.relative_to(root)
        key = rel.as_posix()
        if len(rel.parts) < 2:
            listing.rejections.append(Rejection(key, None, NO_SPEAKER_FOLDER, "audio must be in <speaker>/"))
            continue
        speaker = rel.parts[0]
        transcript = next((t for ext in TRANSCRIPT_EXTENSIONS if (t := audio.with_suffix(ext)).is_file()), None)
        if transcript is None:
            listing.rejections.append(Rejection(key, speaker, NO_TRANSCRIPT, "no .txt or .lab next to it"))
            continue
        item, rejection = _read_transcript_file(transcript, key, speaker)
        if rejection:
            listing.rejections.append(rejection)
        else:
            assert item is not None
            listing.items.append(SourceItem(key, speaker, item.text, str(audio), text_lines=item.text_lines))
    if not listing.items and not listing.rejections:
        raise SourceError(f"no audio files ({'|'.join(AUDIO_EXTENSIONS)}) under {root}")
    return listing


# ------------------------------------------------------------------------------------------- pipe-separated


def _pipe_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path} is not UTF-8 text (byte {err.start})") from err
    return [(n, line.split("|")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _list_ljspeech(path: Path, options: SourceOptions) -> SourceListing:
    csv = path / "metadata.csv" if path.is_dir() else path
    root = csv.parent
    default_speaker = options.speaker or root.name
    listing = SourceListing("ljspeech")
    for line_no, fields in _pipe_lines(csv):
        key = f"{csv.name}:{line_no}"
        if len(fields) not in (2, 3, 4):
            listing.rejections.append(Rejection(key, None, BAD_LINE, f"{len(fields)} fields, expected 2-4"))
            continue
        file_id, text = fields[0].strip(), fields[1]
        if len(fields) >= 3 and fields[2].strip():
            text = fields[2]  # the normalized column spells out numbers and abbreviations
        speaker = fields[3].strip() if len(fields) == 4 and fields[3].strip() else default_speaker
        candidates = [root / "wavs" / f"{file_id}.wav", root / f"{file_id}.wav", root / file_id]
        audio = next((c for c in candidates if c.is_file()), None)
        _add_row(listing, key, speaker, text, audio, f"audio not found: wavs/{file_id}.wav")
    return listing


def _list_pipe_file(path: Path, options: SourceOptions) -> SourceListing:
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
        audio = (path.parent / audio_rel.strip()).resolve()
        _add_row(listing, key, speaker, text, audio if audio.is_file() else None, f"audio not found: {audio_rel}")
    return listing


def _add_row(listing: SourceListing, key: str, speaker: str, text: str, audio: Path | None, missing: str) -> None:
    if audio is None:
        listing.rejections.append(Rejection(key, speaker, UNREADABLE, missing))
        return
    text, lines = _transcript(text)
    if not text:
        listing.rejections.append(Rejection(key, speaker, EMPTY_TRANSCRIPT, audio.name))
        return
    listing.items.append(SourceItem(key, speaker, text, str(audio), text_lines=lines))


# ------------------------------------------------------------------------------------------ Hugging Face data


def _list_hf_disk(path: Path, options: SourceOptions) -> SourceListing:
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
        _add_table_rows(listing, dataset.data.table, name, path, options)
    return listing


def _list_parquet(path: Path, options: SourceOptions) -> SourceListing:
    from higgs_train.data.plain_parquet import UnsafeParquetError, read_plain_parquet

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    listing = SourceListing("parquet")
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        try:
            table = read_plain_parquet(file)
        except UnsafeParquetError as err:  # a pickled-object column would run code at to_pylist
            raise SourceError(f"{err}; write it with plain columns") from None
        _add_table_rows(listing, table, name, file.parent, options)
    return listing


def _add_table_rows(listing: SourceListing, table: Any, name: str, root: Path, options: SourceOptions) -> None:
    from higgs_train.data.plain_parquet import UnsafeParquetError, check_plain_schema

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
            audio_bytes, audio_path = _row_audio(row[options.audio_column], root)
        except ValueError as err:
            listing.rejections.append(Rejection(key, speaker, UNREADABLE, str(err)))
            continue
        raw_text = row[options.text_column]
        text, lines = _transcript(raw_text if isinstance(raw_text, str) else "")
        if not text:
            listing.rejections.append(Rejection(key, speaker, EMPTY_TRANSCRIPT, options.text_column))
            continue
        listing.items.append(SourceItem(key, speaker, text, audio_path, audio_bytes, lines))


def _row_audio(value: Any, root: Path) -> tuple[bytes | None, str | None]:
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
        path = Path(value) if Path(value).is_absolute() else root / value
        if path.is_file():
            return None, str(path)
        raise ValueError(f"audio not found: {value}")
    raise ValueError("no audio in the row")


# ------------------------------------------------------------------------------------------------ manifest


def _list_manifest(path: Path, options: SourceOptions) -> SourceListing:
    """Every distinct (audio, transcript) of a training manifest, by speaker: targets and references alike."""
    from higgs_train.data.manifest import load_manifest
    from higgs_train.data.validation import structural_reason

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
        text: str | None = None
        for role, parts in turns:
            for kind, value in parts:
                if kind == "text" and role == "user":
                    text = value
                elif kind == "audio" and role == "assistant" and value not in seen:
                    seen.add(value)
                    audio = root / value
                    _add_row(listing, f"{key}:{value}", speaker, text or "", audio if audio.is_file() else None,
                             f"audio not found: {value}")  # fmt: skip
    return listing


def describe_kinds() -> str:
    """The ``--help`` text listing the source kinds (this module's docstring, from the list on)."""
    doc = __doc__ or ""
    return doc[doc.index("Source kinds") :].strip()
