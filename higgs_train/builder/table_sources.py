"""Sources that are tables: a row per clip, naming its audio file or holding its bytes.

Why these together: Common Voice TSVs, a ``save_to_disk`` folder, a Parquet export and a training manifest are all
read row by row from named columns (``--audio_column``, ``--text_column``, ``--speaker_column``), and a table may
carry what a file tree cannot: audio as bytes, and column types that must never be unpickled (``plain_parquet``
refuses them before a row becomes a Python object). The sources laid out as files are ``file_sources``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from higgs_train.builder.source_listing import (
    EMPTY_TRANSCRIPT,
    OUTSIDE_INPUT,
    UNREADABLE,
    Confinement,
    OutsideInput,
    Rejection,
    SourceError,
    SourceItem,
    SourceListing,
    SourceOptions,
    add_confined_row,
    clean_transcript,
)
from higgs_train.chatml import clips_with_transcripts
from higgs_train.data.manifest import load_manifest
from higgs_train.data.plain_parquet import UnsafeParquetError, check_plain_schema, read_plain_parquet
from higgs_train.data.row_checks import structural_reason

COMMON_VOICE_COLUMNS = ("path", "sentence", "client_id")  # audio, text, speaker


# -------------------------------------------------------------------------------------------- Common Voice


def _tsv_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "validated.tsv").is_file():
        return [path / "validated.tsv"]  # Common Voice: train/dev/test are subsets of it
    return sorted(p for p in path.glob("*.tsv") if p.stem not in ("invalidated", "other"))


def list_tsv(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
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
                add_confined_row(listing, confine, key, speaker, row.get(text_col) or "", clip, tsv.parent)
                if len(listing.items) > before:
                    audio = Path(str(listing.items[-1].audio_path))
                    if audio in seen:  # the same clip in two TSVs of one folder
                        listing.items.pop()
                    seen.add(audio)
    return listing


# ------------------------------------------------------------------------------------------ Hugging Face data


def list_hf_disk(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
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


def list_parquet(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
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
        text, lines = clean_transcript(raw_text if isinstance(raw_text, str) else "")
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


def list_manifest(path: Path, options: SourceOptions, confine: Confinement) -> SourceListing:
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
                add_confined_row(listing, confine, f"{key}:{value}", speaker, text or "", value, root)
    return listing
