"""Checks a driver runs on the user's data before it opens an MLflow run or starts Ray: the natural mistakes.

Row-level problems are the validator's and the quarantine's business (one bad row never stops a job). What is
checked here are mistakes that make *every* row bad, where a report with one identical error per line helps nobody:

* the manifest path is wrong (the message names the flag, the path and the working directory it was read from);
* the file is not JSON at all: a CSV/TSV/list of recordings (LJSpeech's ``metadata.csv``, Common Voice's
  ``*.tsv``): the message points to ``prepare_data.py build``, which makes a manifest of it;
* the JSON is broken as a whole: a JSON list with a syntax error (a trailing comma), or a JSONL file none of whose
  first lines parses: the message names the line and column;
* the file is a manifest of another format: a ``{"samples": [...]}`` wrapper, or flat rows of audio + text such as
  the ``audio_filepath``/``text`` JSONL of other TTS tool kits; the message points to the data format (README) and
  to the manifest builder;
* every row spells a key another way (``audio_path`` for ``audio_url``): the message names the key, the one meant
  and the row;
* no row references audio at all (a text-only chat manifest);
* no audio file of the first rows exists under the audio root: the message names the root that was used and says
  that ``--audio_base_path`` sets it;
* ``--cache_dir`` is an object-store URI (``token_cache.local_cache_root`` says why it is refused).

All of it reads the first ``ROWS_SAMPLED`` rows only (a JSON list is parsed whole), so it takes well under a second.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs_train.data.plain_parquet import UnsafeParquetError, open_plain_parquet_file
from higgs_train.data.token_cache import CacheLocationError, local_cache_root
from higgs_train.storage import is_uri

DATA_FORMAT_HINT = (
    "see README.md, section 'Data format', for the ChatML voice-cloning layout; "
    "`python ray_jobs/prepare_data.py build` builds such a manifest from audio files and transcripts"
)
ROWS_SAMPLED = 8
BUILD_HINT = "`python ray_jobs/prepare_data.py build --input {path} --output DIR` builds a manifest from it"
# Keys of a message and of a content part (upstream's Message, TextContent and AudioContent fields).
MESSAGE_KEYS = ("role", "content", "recipient")
PART_KEYS = ("type", "text", "audio_url", "raw_audio", "offset", "duration", "row_id")
# Names other tool kits use for these keys; difflib catches plain typos.
KEY_SYNONYMS = {
    "audio_path": "audio_url",
    "audio_file": "audio_url",
    "audio_filepath": "audio_url",
    "audio": "audio_url",
    "path": "audio_url",
    "file": "audio_url",
    "wav": "audio_url",
    "url": "audio_url",
    "transcript": "text",
    "sentence": "text",
    "speaker": "role",
    "from": "role",
    "value": "content",
    "text": "content",
    "message": "content",
}


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


def _table_kind(first_line: str, path: Path) -> str:
    """What a non-JSON text file of recordings most likely is, for the message."""
    if "\t" in first_line or path.suffix.lower() == ".tsv":
        return "TSV"
    if "|" in first_line:
        return "'|'-separated list"
    if "," in first_line or path.suffix.lower() == ".csv":
        return "CSV"
    return "plain-text list"


def _json_error(err: json.JSONDecodeError, text: str, line_offset: int = 0) -> str:
    """Where the JSON broke (line L column C) and why, naming a trailing comma when that is what broke it."""
    where = f"line {err.lineno + line_offset} column {err.colno}: {err.msg}"
    before = text[: err.pos].rstrip()
    if before.endswith(",") and text[err.pos : err.pos + 1] in ("]", "}"):
        where += " (a trailing comma before this bracket: JSON allows none)"
    return where


def check_manifest_syntax(flag: str, path: Path) -> None:
    """Refuse a file no row of which can be read: a CSV/TSV/list, a broken JSON list, JSONL whose lines all fail.

    Why here: the reader turns every unreadable line into a quarantined row, so such a file used to cost a Ray
    start and end with one "line N is not valid JSON" per row.
    """
    with path.open("rb") as fh:
        if fh.read(4) == b"PAR1":
            return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return  # the reader reports this with its own message
    stripped = text.lstrip()
    if not stripped:
        raise DataSetupError(f"{flag} {path}: the file is empty; {DATA_FORMAT_HINT}")
    if stripped.startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise DataSetupError(
                f"{flag} {path}: this JSON list cannot be parsed, {_json_error(err, text)}; fix it there (every "
                "row is lost otherwise)"
            ) from None
        return
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()][:ROWS_SAMPLED]
    errors = []
    for n, line in lines:
        try:
            json.loads(line)
            return  # a readable line: the rest are row problems for the validator
        except json.JSONDecodeError as err:
            errors.append((n, line, err))
    if stripped.startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            json.loads(text)
            return  # one JSON object over several lines: check_manifest_format says what it is
        n, line, err = errors[0]
        raise DataSetupError(
            f"{flag} {path}: none of the first {len(errors)} lines is a JSON object; "
            f"{_json_error(err, line, n - 1)}. A JSONL manifest holds one complete JSON object per line; "
            f"{DATA_FORMAT_HINT}"
        )
    first = lines[0][1].strip()
    kind = _table_kind(first, path)
    raise DataSetupError(
        f"{flag} {path}: this is a {kind} (first line {first[:80]!r}), not a manifest (a JSON list, JSONL or "
        f"Parquet of ChatML samples, each with 'messages'); {BUILD_HINT.format(path=path)}"
    )


def _meant(key: str, known: tuple[str, ...]) -> str | None:
    """The known key an unknown ``key`` most likely stands for."""
    if key in KEY_SYNONYMS and KEY_SYNONYMS[key] in known:
        return KEY_SYNONYMS[key]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _misnamed_key(row: dict[str, Any]) -> tuple[str, str, str] | None:
    """(where, the key, the key meant) of the first misspelt message or content key of a row, or None."""
    messages = row.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        for key in message:
            if key not in MESSAGE_KEYS and (meant := _meant(str(key), MESSAGE_KEYS)) and meant not in message:
                return f"messages[{i}]", str(key), meant
        content = message.get("content")
        for part in content if isinstance(content, list) else [content]:
            if not isinstance(part, dict):
                continue
            for key in part:
                if key not in PART_KEYS and (meant := _meant(str(key), PART_KEYS)) and meant not in part:
                    return f"messages[{i}].content", str(key), meant
    return None


def check_manifest_keys(flag: str, path: Path) -> None:
    """Refuse when every sampled row misspells a key (``audio_path``) or no row references audio at all.

    One row with a stray key is that row's problem (quarantined with its reason); the same key in every row is a
    convention of another tool kit and would quarantine them all.
    """
    _, rows = _sample_rows(path)
    samples = [(i, r) for i, r in enumerate(rows) if _has_messages(r)]
    if not samples:
        return
    found = [(i, r, _misnamed_key(r)) for i, r in samples if "messages" in r]
    if found and all(m is not None for _, _, m in found):
        i, row, (where, key, meant) = found[0]
        row_id = f" (id {row['id']!r})" if "id" in row else ""
        raise DataSetupError(
            f"{flag} {path}: row {i}{row_id} {where} has the key {key!r} where {meant!r} is meant (so do the first "
            f"{len(found)} rows); rename {key!r} to {meant!r} in the manifest. {DATA_FORMAT_HINT}"
        )
    if not any(_audio_urls(r) for _, r in samples):
        raise DataSetupError(
            f"{flag} {path}: none of the first {len(samples)} rows references audio (no content part with "
            "'audio_url'), so this is a text-only chat manifest; a voice-cloning sample needs a reference clip and "
            f"the recording of the target text; {DATA_FORMAT_HINT}"
        )


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


def check_cache_location(config: Any) -> None:
    """Refuse a ``--cache_dir`` the token cache cannot live on (an object-store URI), before anything is written."""
    if getattr(config, "cache_dir", ""):
        try:
            local_cache_root(config.cache_dir)
        except CacheLocationError as err:
            raise DataSetupError(str(err)) from None


def check_local_inputs(config: Any) -> None:
    """Refuse local inputs besides the manifests that do not exist: one line naming the flag, not a traceback later.

    ``--audio_base_path`` must exist when given as a local path; a model reference written like a path (``./``,
    ``../``, ``/``, ``~``) must too (anything else may be a hub id, ``org/name``). ``--resume_from`` has its own
    check, on any storage, in ``driver.cluster.check_resume_from``.
    """

    def missing(value: str) -> str | None:
        path = Path(value).expanduser()
        absolute = path if path.is_absolute() else Path.cwd() / path
        if absolute.exists():
            return None
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        return f"{absolute}{where} does not exist"

    value = config.audio_base_path
    if value and not is_uri(value) and (reason := missing(value)):
        raise DataSetupError(f"--audio_base_path {value}: {reason}")
    for flag in ("--model_path", "--audio_tokenizer_path", "--tokenizer_path"):
        value = getattr(config, flag[2:], "") or ""
        if value.startswith(("/", "./", "../", "~")) and (reason := missing(value)):
            raise DataSetupError(f"{flag} {value}: {reason} (a hub model is named org/name)")


def preflight(config: Any) -> None:
    """Every check above for the config's manifests (nothing to check for generated sample data), its cache and its
    other local inputs."""
    check_cache_location(config)
    check_local_inputs(config)
    given_root = bool(config.audio_base_path)
    for flag, value in (("--train_data", config.train_data), ("--val_data", config.val_data)):
        if not value:
            continue
        path = check_manifest_exists(flag, value)
        check_manifest_syntax(flag, path)
        check_manifest_format(flag, path)
        check_manifest_keys(flag, path)
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
