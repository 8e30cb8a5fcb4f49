"""Checks a driver runs on the user's data before it opens an MLflow run or starts Ray: the natural mistakes.

Row-level problems are the validator's and the quarantine's business (one bad row never stops a job). What is
checked here are mistakes that make *every* row bad, where a report with one identical error per line helps nobody:

* the manifest path is wrong (the message names the flag, the path and the working directory it was read from);
* the file is a manifest of another format: a ``{"samples": [...]}`` wrapper, or flat rows of audio + text such as
  the ``audio_filepath``/``text`` JSONL of other TTS tool kits; the message points to the data format (README) and
  to the manifest builder;
* no audio file of the first rows exists under the audio root: the message names the root that was used and says
  that ``--audio_base_path`` sets it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_FORMAT_HINT = (
    "see README.md, section 'Data format', for the ChatML voice-cloning layout; "
    "`python ray_jobs/prepare_data.py build` builds such a manifest from audio files and transcripts"
)
ROWS_SAMPLED = 8


class DataSetupError(ValueError):
    """The data as given cannot be used at all; the message says what to change."""


@dataclass(frozen=True)
class ManifestCheck:
    """A manifest as a driver will read it: the flag that named it and the audio root of its relative paths."""

    flag: str
    path: Path
    audio_root: Path
    audio_root_given: bool


def check_manifest_exists(flag: str, value: str | Path) -> Path:
    """The manifest as an absolute path; ``DataSetupError`` naming the flag when it is not a file."""
    path = Path(value).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    if absolute.is_file():
        return absolute.resolve()
    where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
    what = "is a folder, not a manifest file" if absolute.is_dir() else "does not exist"
    raise DataSetupError(f"{flag} {value}: the manifest {absolute}{where} {what}")


def _sample_rows(path: Path) -> tuple[Any, list[Any]]:
    """(the whole JSON document when the file is one, else None; the first rows)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        from higgs_train.data.plain_parquet import UnsafeParquetError, open_plain_parquet_file

        try:  # a column of Ray's pickled-object type would run code in this process at to_pylist
            with open_plain_parquet_file(path) as pf:
                table = pf.read_row_group(0) if pf.num_row_groups else None
        except UnsafeParquetError as err:
            raise DataSetupError(f"{err}; write the manifest with plain columns (strings, numbers, lists)") from None
        rows = table.slice(0, ROWS_SAMPLED).to_pylist() if table is not None else []
        return None, rows
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None, []  # the reader reports this with its own message
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, list):
            return document, document[:ROWS_SAMPLED]
        if isinstance(document, dict):
            return document, [document]
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)
        if len(rows) >= ROWS_SAMPLED:
            break
    return None, rows


def _has_messages(row: Any) -> bool:
    return isinstance(row, dict) and ("messages" in row or "messages_json" in row)


def check_manifest_format(flag: str, path: Path) -> None:
    """Refuse a file whose rows are clearly not ChatML samples (wrapper object, flat audio + text rows)."""
    document, rows = _sample_rows(path)
    if isinstance(document, dict) and not _has_messages(document):
        lists = [k for k, v in document.items() if isinstance(v, list)]
        inner = f' with the rows under "{lists[0]}"' if lists else ""
        raise DataSetupError(
            f"{flag} {path}: this file is one JSON object{inner}, not a manifest (a JSON list, JSONL or Parquet of "
            f"samples, each with 'messages'); {DATA_FORMAT_HINT}"
        )
    objects = [r for r in rows if isinstance(r, dict)]
    if objects and not any(_has_messages(r) for r in objects):
        keys = sorted({str(k) for r in objects for k in r})
        raise DataSetupError(
            f"{flag} {path}: its rows have the keys {keys} but no 'messages', so this is not a ChatML voice-cloning "
            f"manifest (flat audio + text rows need a reference clip and a target turn each); {DATA_FORMAT_HINT}"
        )


def _audio_urls(row: dict[str, Any]) -> list[str]:
    messages = row.get("messages")
    if messages is None and isinstance(row.get("messages_json"), str):
        try:
            messages = json.loads(row["messages_json"])
        except json.JSONDecodeError:
            return []
    urls: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, dict) and isinstance(part.get("audio_url"), str):
                urls.append(part["audio_url"])
    return urls


def check_audio_root(check: ManifestCheck) -> None:
    """Refuse when none of the first rows' audio files exists under the audio root (a wrong root, not bad rows)."""
    _, rows = _sample_rows(check.path)
    urls = [u for r in rows if isinstance(r, dict) for u in _audio_urls(r) if u.strip()]
    if not urls:
        return
    root = check.audio_root
    if any(os.path.exists(Path(u) if Path(u).is_absolute() else root / u) for u in urls):
        return
    source = "given by --audio_base_path" if check.audio_root_given else "the manifest's folder (the default)"
    raise DataSetupError(
        f"{check.flag} {check.path}: none of the first {len(urls)} audio files exists under the audio root {root} "
        f"({source}), e.g. {urls[0]!r} -> {root / urls[0]}; set --audio_base_path to the folder the manifest's "
        "audio paths are relative to"
    )


def preflight(config: Any) -> None:
    """Every check above for the config's manifests (nothing to check for generated sample data)."""
    given_root = bool(config.audio_base_path)
    for flag, value in (("--train_data", config.train_data), ("--val_data", config.val_data)):
        if not value:
            continue
        path = check_manifest_exists(flag, value)
        check_manifest_format(flag, path)
        root = Path(config.audio_base_path).expanduser().resolve() if given_root else path.parent
        check_audio_root(ManifestCheck(flag, path, root, given_root))


def missing_audio_hint(reasons: list[str], audio_root: Path | str) -> str | None:
    """One line for reports where rows failed with "audio file not found": which root was searched, and the flag."""
    missing = sum(1 for r in reasons if "audio file not found" in r)
    if not missing:
        return None
    return (
        f"{missing} row(s) name audio files that do not exist under the audio root {audio_root}; "
        "--audio_base_path sets the folder that relative audio paths are resolved under"
    )
