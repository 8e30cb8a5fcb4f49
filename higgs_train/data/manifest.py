"""Read ChatML voice-cloning manifests (JSON list, JSONL, Parquet) into one canonical Parquet manifest.

Every later stage (validation, preprocessing actors, the trainer) reads the canonical form, so format quirks are
handled once, here. Canonical schema (``CANONICAL_SCHEMA``), one row per source sample, in source order:

==============  =======================  ==========================================================================
column          type                     meaning
==============  =======================  ==========================================================================
row_index       int64                    position of the sample in the source (JSONL: among non-blank lines)
id              string                   the given id (made unique with a ``#k`` suffix), else a stable id:
                                         ``"row-" + sha256(canonical JSON of the row)[:16]``
speaker         string, nullable         speaker label
start_index     int64, nullable          first trained turn; earlier turns are context
messages_json   string                   the ``messages`` value as canonical JSON (``"null"`` when absent)
misc_json       string, nullable         the ``misc`` value as canonical JSON
source          string                   path of the source manifest
parse_error     string, nullable         why the row could not be read; such rows are kept so validation
                                         reports them instead of losing them silently
==============  =======================  ==========================================================================

Messages are stored as JSON text, not as Parquet structs, because message content mixes plain strings with
``{"type": "audio", ...}`` objects: struct inference either fails on that or fills every missing field with null,
which upstream's strict ``dacite`` conversion then rejects. Canonical JSON is ``json.dumps`` with sorted keys and
compact separators, so equal samples give equal text (and equal stable ids) whichever form they came from.

Top-level keys other than id/speaker/start_index/messages/misc are dropped: upstream ignores them too.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from higgs_train.data.plain_parquet import UnsafeParquetError, read_plain_parquet
from higgs_train.data.reasons import Reason

CANONICAL_SCHEMA = pa.schema(
    [
        pa.field("row_index", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("speaker", pa.string()),
        pa.field("start_index", pa.int64()),
        pa.field("messages_json", pa.string(), nullable=False),
        pa.field("misc_json", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("parse_error", pa.string()),
    ]
)

SAMPLE_KEYS = ("speaker", "start_index", "messages", "misc")
PARSE_ERROR_KEY = "parse_error"

# Row-level reasons found while reading (catalogued in reasons.py); validation reports them verbatim.
NOT_JSON = Reason.NOT_JSON
NOT_OBJECT = Reason.NOT_OBJECT
MESSAGES_NOT_JSON = Reason.MESSAGES_NOT_JSON
SPEAKER_TYPE = Reason.SPEAKER_TYPE
START_INDEX_TYPE = Reason.START_INDEX_TYPE


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, truncated JSON list, unreadable Parquet, a Parquet
    column of an extension type: ``plain_parquet``)."""


@dataclass(frozen=True)
class ConversionReport:
    """Counts from one conversion; printed by ``ray_jobs/prepare_data.py``."""

    source: str
    output: str
    rows: int
    parse_errors: int
    generated_ids: int
    duplicate_ids: int

    def summary(self) -> str:
        return (
            f"{self.source} -> {self.output}: {self.rows} rows, {self.parse_errors} unreadable, "
            f"{self.generated_ids} generated ids, {self.duplicate_ids} duplicate ids renamed"
        )


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, compact, UTF-8 kept (not escaped)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def stable_id(row: dict[str, Any]) -> str:
    """``row-`` + 16 hex of the sha256 of the row's canonical JSON (its ``id`` key excluded)."""
    body = {k: v for k, v in row.items() if k != "id"}
    return "row-" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- reading


def read_manifest_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw sample dicts in source order; unreadable rows come back as ``{"parse_error": reason}``.

    The form is chosen by content, not only by name: Parquet by its magic bytes, a text file starting with ``[``
    as a JSON list, any other text file as JSONL (one object per line, blank lines ignored).
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest not found: {p}")
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return _read_parquet(p)
    raw = p.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]:  # UTF-16/32 or binary: no line would parse
        raise ManifestError(f"manifest is neither Parquet nor UTF-8 text: {p}")
    # An invalid byte must cost one row, not the manifest: undecodable bytes become lone surrogates, which the
    # canonical form then reports as that row's INVALID_UNICODE (or NOT_JSON, if the byte broke the JSON syntax).
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"JSON manifest cannot be parsed ({err}): {p}") from err
        return [_object_or_error(item) for item in items]
    return _read_jsonl(text)


def _read_jsonl(text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            rows.append({PARSE_ERROR_KEY: NOT_JSON.format(line=line_no)})
            continue
        rows.append(_object_or_error(item))
    return rows


def _object_or_error(item: Any) -> dict[str, Any]:
    return item if isinstance(item, dict) else {PARSE_ERROR_KEY: NOT_OBJECT}


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        table = read_plain_parquet(path)
    except UnsafeParquetError as err:  # its one line names the file and the column
        raise ManifestError(f"Parquet manifest refused: {err}; write it with plain columns") from None
    except (pa.ArrowException, OSError) as err:
        raise ManifestError(f"Parquet manifest cannot be read ({err}): {path}") from err
    records = table.to_pylist()
    if "messages_json" in table.column_names:
        return [_from_canonical_record(r) for r in records]
    return [_from_raw_parquet_record(r) for r in records]


def _from_canonical_record(rec: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": rec.get("id"), "speaker": rec.get("speaker"), "start_index": rec.get("start_index")}
    if rec.get("parse_error"):
        row[PARSE_ERROR_KEY] = rec["parse_error"]
    for column in ("messages_json", "misc_json"):
        if rec.get(column) is not None and not isinstance(rec[column], str):
            row.setdefault(PARSE_ERROR_KEY, Reason.MESSAGES_JSON_TYPE.format(type=type(rec[column]).__name__))
            row["messages"] = row["misc"] = None
            return row
    try:
        row["messages"] = json.loads(rec["messages_json"]) if rec.get("messages_json") is not None else None
        row["misc"] = json.loads(rec["misc_json"]) if rec.get("misc_json") is not None else None
    except json.JSONDecodeError:
        row.setdefault(PARSE_ERROR_KEY, MESSAGES_NOT_JSON)
        row["messages"] = None
        row["misc"] = None
    return row


def _from_raw_parquet_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A Parquet written straight from sample dicts: ``messages`` is JSON text or a list of structs.

    Struct columns give every row every field, with null where the source had none; those nulls are dropped
    inside messages so ``{"type": "audio", "audio_url": ..., "text": null}`` becomes the intended audio part.
    """
    row = {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}
    messages = row.get("messages")
    if isinstance(messages, str):
        try:
            row["messages"] = json.loads(messages)
        except json.JSONDecodeError:
            return {"id": row.get("id"), PARSE_ERROR_KEY: MESSAGES_NOT_JSON}
    elif isinstance(messages, list):
        row["messages"] = [_drop_nulls(m) for m in messages]
    return row


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- canonical form


def _canonical_records(rows: list[dict[str, Any]], source: str) -> tuple[list[dict[str, Any]], ConversionReport]:
    records: list[dict[str, Any]] = []
    generated = 0
    for index, raw in enumerate(rows):
        row = raw if isinstance(raw, dict) else {PARSE_ERROR_KEY: NOT_OBJECT}
        error = row.get(PARSE_ERROR_KEY) or None
        try:
            messages_json = canonical_json(row.get("messages"))
            misc_json = None if row.get("misc") is None else canonical_json(row["misc"])
        except (TypeError, ValueError):  # e.g. bytes from a binary Parquet column
            error = error or MESSAGES_NOT_JSON
            messages_json, misc_json = canonical_json(None), None
        if not error and not _encodable(messages_json, misc_json, row.get("speaker"), row.get("id")):
            error = Reason.INVALID_UNICODE  # Arrow (and every later stage) needs valid UTF-8
        if error and not _encodable(messages_json, misc_json):
            messages_json, misc_json = canonical_json(None), None
        speaker = row.get("speaker")
        start_index, start_ok = _start_index(row.get("start_index"))
        if not error and speaker is not None and not isinstance(speaker, str):
            error = SPEAKER_TYPE
        if not error and not start_ok:
            error = START_INDEX_TYPE
        given = row.get("id")
        if given is None or given == "":
            # An unreadable row has no trustworthy content to hash; its reason and position identify it.
            body = {k: row.get(k) for k in SAMPLE_KEYS} if not error else {PARSE_ERROR_KEY: error, "row_index": index}
            sample_id = stable_id(body)
            generated += 1
        else:
            sample_id = given if isinstance(given, str) else canonical_json(given)
            if not _encodable(sample_id):
                sample_id = stable_id({PARSE_ERROR_KEY: error, "row_index": index})
        records.append(
            {
                "row_index": index,
                "id": sample_id,
                "speaker": speaker if isinstance(speaker, str) and _encodable(speaker) else None,
                "start_index": start_index,
                "messages_json": messages_json,
                "misc_json": misc_json,
                "source": source,
                "parse_error": str(error) if error else None,
            }
        )
    duplicates = _make_ids_unique(records)
    errors = sum(1 for r in records if r["parse_error"])
    return records, ConversionReport(source, "", len(records), errors, generated, duplicates)


def _encodable(*values: Any) -> bool:
    """Whether every string among ``values`` encodes to UTF-8 (a lone surrogate, e.g. ``"\\ud800"``, does not)."""
    try:
        for value in values:
            if isinstance(value, str):
                value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _start_index(value: Any) -> tuple[int | None, bool]:
    """``(value as int or None, whether it was an acceptable type)``.

    Integral floats are accepted because pandas writes a nullable int column as float64 (missing = NaN).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, True
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int):
        return value, True
    if isinstance(value, float) and value.is_integer():
        return int(value), True
    return None, False


def _make_ids_unique(records: list[dict[str, Any]]) -> int:
    """Rename repeated ids to ``<id>#k`` (smallest free k >= 2) in row order; returns how many were renamed.

    Every original id is reserved first, so a renamed row never takes an id that a later row already carries.
    """
    taken = {r["id"] for r in records}
    seen: set[str] = set()
    renamed = 0
    for rec in records:
        if rec["id"] not in seen:
            seen.add(rec["id"])
            continue
        k = 2
        while f"{rec['id']}#{k}" in taken:
            k += 1
        rec["id"] = f"{rec['id']}#{k}"
        taken.add(rec["id"])
        seen.add(rec["id"])
        renamed += 1
    return renamed


def to_canonical_table(rows: list[dict[str, Any]], source: str) -> pa.Table:
    """Rows from ``read_manifest_rows`` as a table with ``CANONICAL_SCHEMA``."""
    records, _ = _canonical_records(rows, source)
    return pa.Table.from_pylist(records, schema=CANONICAL_SCHEMA)


MANIFEST_SUFFIXES = (".json", ".jsonl", ".parquet")  # the forms ``write_manifest`` writes, named by suffix


def write_manifest(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write sample rows as the manifest file ``path`` in the form its suffix names: a JSON list (``.json``), JSONL
    (``.jsonl``) or the canonical Parquet (``.parquet``; nested messages become ``messages_json``, see above), so
    ``read_manifest_rows`` reads back the rows given."""
    path = Path(path)
    if path.suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(f"a manifest file must end in one of {', '.join(MANIFEST_SUFFIXES)}: {path}")
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(to_canonical_table(rows, str(path)), path)
    else:
        path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def convert_manifest(src: str | Path, dst_parquet: str | Path) -> ConversionReport:
    """Read any manifest form and write the canonical Parquet (atomically: temp file, then rename)."""
    records, report = _canonical_records(read_manifest_rows(src), str(src))
    dst = Path(dst_parquet)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(records, schema=CANONICAL_SCHEMA), tmp)
    tmp.replace(dst)
    return replace(report, output=str(dst))


def table_to_samples(table: pa.Table) -> list[dict[str, Any]]:
    """Canonical rows as sample dicts: id, speaker, start_index, messages, misc, row_index (+ parse_error if any).

    The extra keys are harmless to upstream's ``prepare_chatml_sample``, which keeps only ChatMLSample fields.
    """
    samples = []
    for rec in table.to_pylist():
        sample: dict[str, Any] = {
            "id": rec["id"],
            "speaker": rec["speaker"],
            "start_index": rec["start_index"],
            "messages": json.loads(rec["messages_json"]),
            "misc": None if rec["misc_json"] is None else json.loads(rec["misc_json"]),
            "row_index": rec["row_index"],
        }
        if rec.get("parse_error"):
            sample[PARSE_ERROR_KEY] = rec["parse_error"]
        samples.append(sample)
    return samples


def load_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Any manifest form straight to canonical sample dicts (unique ids, parse errors kept), without a file."""
    return table_to_samples(to_canonical_table(read_manifest_rows(path), str(path)))
