"""Row-level content keys: a manifest edit reprocesses only the rows it changed, and the entry layout they live in.

Why: the entry key (``cache_key``) covers the whole manifest, so one edited row makes a new entry; preprocessing
every row again costs about 17 ms per row even when every clip comes from the code store (tokenizing, validating,
loading headers): 30 minutes for 100k rows on 2 CPUs. A record depends only on its row's content, the content of the
audio it references, the tokenizers and the settings, so a key over exactly those (``row_keys``) identifies a
record that any earlier entry may already hold, whatever its position there.

A build (``ray_pipeline.build_token_cache``) therefore:

1. computes every manifest row's key,
2. looks them up in the ``rows.parquet`` of the newest complete entries under the cache root (``find_reusable``),
3. preprocesses only the rows not found (quarantined rows are never reused: they are preprocessed again, so their
   reasons always reflect the present files), and
4. writes the new entry by gathering reused records from the old entries and new records from the build, in
   ``row_index`` order, a chunk at a time (``write_entry``): the driver never holds the dataset in memory.

The row key is the sha256 of: the row's manifest columns except ``row_index`` (a row moved by an insertion above it
is the same record with a new index, which ``write_entry`` rewrites), the content fingerprints of the audio it
references (in order), and one context digest of the text and audio tokenizer identities, the preprocessing settings
and the cache format.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from higgs_train.data.cache_key import referenced_audio
from higgs_train.data.plain_parquet import open_plain_parquet_file, read_plain_parquet
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.data.record_codec import RECORD_SCHEMA
from higgs_train.data.shard_stream import (
    DATA_DIR,
    ROWS_FILE,
    ROWS_PER_FILE,
    ROWS_PER_GROUP,
    SUCCESS_FILE,
    data_file_name,
    entry_refusal,
)

logger = logging.getLogger(__name__)

ROW_KEY_COLUMNS = ("id", "speaker", "start_index", "messages_json", "misc_json", "parse_error")
ROWS_SCHEMA = pa.schema(
    [
        pa.field("row_index", pa.int64()),
        pa.field("num_tokens", pa.int64()),
        pa.field("row_key", pa.string()),
        pa.field("file", pa.int32()),
        pa.field("row_group", pa.int32()),
        pa.field("offset", pa.int32()),
    ]
)
MAX_SOURCE_ENTRIES = 8  # newest complete entries searched for reusable rows
CHUNK_ROWS = 2048  # rows gathered and written at a time
OPEN_GROUPS = 64  # row groups kept while gathering (reused rows of a chunk usually come from a few)


def row_context_digest(
    text_identity: dict[str, Any], audio_identity: dict[str, Any], settings: PreprocessSettings, cache_format: str
) -> str:
    """What every record of a build depends on besides its own row and audio."""
    blob = {"format": cache_format, "text": text_identity, "audio": audio_identity, "settings": settings.identity()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def row_keys(manifest: pa.Table, fingerprints: dict[str, str], context_digest: str) -> list[str]:
    """One content key per manifest row (see the module docstring), in manifest order."""
    n = manifest.num_rows
    cols = {c: manifest.column(c).to_pylist() if c in manifest.column_names else [None] * n for c in ROW_KEY_COLUMNS}
    keys = []
    for i in range(n):
        row = [cols[c][i] for c in ROW_KEY_COLUMNS]
        audio = [[url, fingerprints.get(url)] for url in referenced_audio([cols["messages_json"][i]])]
        blob = json.dumps([context_digest, row, audio], default=str).encode()
        keys.append(hashlib.sha256(blob).hexdigest()[:32])
    return keys


@dataclass
class Reusable:
    """Records found in earlier entries, by row key."""

    data_dirs: list[Path]
    by_key: dict[str, tuple[int, int, int, int]]  # row key -> (index into data_dirs, file, row_group, offset)

    def where(self, key: str) -> tuple[Path, int, int]:
        """(data file, row_group, offset) of the record with ``key``."""
        source, file, group, offset = self.by_key[key]
        return self.data_dirs[source] / data_file_name(file), group, offset


def find_reusable(cache_root: Path, wanted: set[str], exclude: set[str] = frozenset()) -> Reusable:
    """Locations of the records with keys in ``wanted`` in the newest complete entries under ``cache_root``.

    An entry whose ``rows.parquet`` or a data file is refused (``plain_parquet``: an extension-typed column, or a
    footer that does not parse) is skipped with a warning: its rows are preprocessed again instead.
    """
    entries = []
    for child in cache_root.iterdir() if cache_root.is_dir() else []:
        if child.name in exclude or child.name.startswith("."):
            continue
        success, rows = child / SUCCESS_FILE, child / ROWS_FILE
        if success.is_file() and rows.is_file():
            entries.append((success.stat().st_mtime, child))
    reusable = Reusable([], {})
    remaining = set(wanted)
    for _, entry in sorted(entries, reverse=True)[:MAX_SOURCE_ENTRIES]:
        if not remaining:
            break
        refusal = entry_refusal(str(entry))
        if refusal is not None:
            logger.warning("token-cache entry %s is not reused (its rows are preprocessed again): %s", entry, refusal)
            continue
        table = read_plain_parquet(entry / ROWS_FILE, columns=["row_key", "file", "row_group", "offset"])
        keys = table.column("row_key").to_pylist()
        file, group, offset = (table.column(c).to_numpy() for c in ("file", "row_group", "offset"))
        source = len(reusable.data_dirs)
        used = False
        for j, key in enumerate(keys):
            if key in remaining:
                reusable.by_key[key] = (source, int(file[j]), int(group[j]), int(offset[j]))
                remaining.discard(key)
                used = True
        if used:
            reusable.data_dirs.append(entry / DATA_DIR)
    return reusable


class GroupReader:
    """Row groups of many Parquet files, the last ``OPEN_GROUPS`` kept (a chunk's reused rows are usually adjacent)."""

    def __init__(self) -> None:
        self._files: dict[Path, pq.ParquetFile] = {}
        self._groups: OrderedDict[tuple[Path, int], pa.Table] = OrderedDict()

    def group(self, path: Path, index: int) -> pa.Table:
        key = (path, index)
        table = self._groups.get(key)
        if table is None:
            pf = self._files.get(path)
            if pf is None:
                pf = self._files[path] = open_plain_parquet_file(path)
            table = pf.read_row_group(index, columns=RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
            self._groups[key] = table
            if len(self._groups) > OPEN_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return table

    def close(self) -> None:
        for pf in self._files.values():
            pf.close()
        self._files.clear()
        self._groups.clear()


def index_new_records(data_dir: Path) -> tuple[list[Path], dict[int, tuple[int, int, int]]]:
    """Parquet files of freshly built records and row_index -> (file, row_group, offset) in them."""
    files = sorted(data_dir.glob("*.parquet"))
    where: dict[int, tuple[int, int, int]] = {}
    for f, path in enumerate(files):
        pf = open_plain_parquet_file(path)
        for g in range(pf.num_row_groups):
            for k, ridx in enumerate(pf.read_row_group(g, columns=["row_index"]).column("row_index").to_pylist()):
                where[int(ridx)] = (f, g, k)
        pf.close()
    return files, where


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def write_entry(
    out_dir: Path,
    rows: list[tuple[int, str, tuple[Path, int, int]]],
) -> int:
    """Write ``data/part-*.parquet`` and ``rows.parquet`` of an entry from ``rows``: (row_index, row key, where its
    record is: (file path, row_group, offset)), sorted by row_index here. Returns the number of records written.

    Records are gathered a chunk at a time, their ``row_index`` set to the new one, and written in row groups of
    ``ROWS_PER_GROUP`` (without statistics, so the footer stays small), ``ROWS_PER_FILE`` rows per file.
    """
    rows = sorted(rows, key=lambda r: r[0])
    data_dir = out_dir / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("*.parquet"):
        stale.unlink()
    reader = GroupReader()
    index: dict[str, list[Any]] = {name: [] for name in ROWS_SCHEMA.names}
    writer: pq.ParquetWriter | None = None
    file_index, rows_in_file = -1, 0
    try:
        for chunk in _chunks(len(rows), CHUNK_ROWS):
            table = _gather(reader, [rows[i][2] for i in chunk])
            table = table.set_column(
                table.schema.get_field_index("row_index"),
                "row_index",
                pa.array([rows[i][0] for i in chunk], pa.int64()),
            )
            start = 0
            while start < table.num_rows:
                if writer is None or rows_in_file >= ROWS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    file_index, rows_in_file = file_index + 1, 0
                    writer = pq.ParquetWriter(
                        data_dir / data_file_name(file_index), RECORD_SCHEMA, write_statistics=False
                    )
                take = min(table.num_rows - start, ROWS_PER_FILE - rows_in_file)
                writer.write_table(table.slice(start, take), row_group_size=ROWS_PER_GROUP)
                positions = np.arange(rows_in_file, rows_in_file + take)
                index["file"].extend([file_index] * take)
                index["row_group"].extend((positions // ROWS_PER_GROUP).tolist())
                index["offset"].extend((positions % ROWS_PER_GROUP).tolist())
                rows_in_file += take
                start += take
            index["num_tokens"].extend(table.column("num_tokens").to_pylist())
        index["row_index"] = [r[0] for r in rows]
        index["row_key"] = [r[1] for r in rows]
    finally:
        if writer is not None:
            writer.close()
        reader.close()
    pq.write_table(pa.table(index, schema=ROWS_SCHEMA), out_dir / ROWS_FILE)
    return len(rows)


def _gather(reader: GroupReader, where: list[tuple[Path, int, int]]) -> pa.Table:
    """The records at ``where`` (file, row_group, offset), in that order."""
    groups: dict[tuple[Path, int], list[int]] = {}
    for k, (path, group, _offset) in enumerate(where):
        groups.setdefault((path, group), []).append(k)
    pieces, order = [], []
    for (path, group), ks in groups.items():
        table = reader.group(path, group)
        pieces.append(table.take(pa.array([where[k][2] for k in ks], pa.int64())))
        order.extend(ks)
    if not pieces:
        return RECORD_SCHEMA.empty_table()
    return pa.concat_tables(pieces).take(pa.array(np.argsort(np.asarray(order), kind="stable")))
