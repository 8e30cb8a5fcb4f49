"""Workers stream their shard of a token-cache entry from any pyarrow filesystem, one step ahead, in bounded memory.

Why: loading every record of the cache into Python objects costs about 24 KB per row on every worker (2.4 GB per
worker at 100k rows), and needs the cache on a POSIX path every node sees. A worker only ever needs the rows of its
own micro-batches, and the batch plan only needs the lengths.

Layout of an entry (written by ``row_reuse.write_entry``; ``token_cache`` describes the rest of the entry)::

    <key>/data/part-00000.parquet   records sorted by row_index, ROWS_PER_FILE rows per file, ROWS_PER_GROUP per
    <key>/data/part-00001.parquet   row group (no column statistics: a small footer even with many row groups)
    <key>/rows.parquet              one small row per record, same order: row_index, num_tokens, row_key (see
                                    ``row_reuse``) and the record's place: file, row_group, offset

A worker reads ``rows.parquet`` (a few columns, ~20 bytes per row), plans its epoch from ``num_tokens`` alone with
``batching.build_epoch_plan`` -- the same deterministic function on every worker and on the driver, so every worker
gets the same number of steps -- and then reads only the row groups holding the rows of its next step. Reading a
row group for a row over-reads at most ``ROWS_PER_GROUP - 1`` rows; at 32 rows of a few KB that is well under a MB.

Memory is bounded by two steps of records (the one being trained and the one prefetched by a background thread)
plus the footers of the few files open, independent of the number of rows in the entry.

Where the entry lives: a local path, ``file://``, ``s3://`` or ``gs://`` (``pyarrow.fs.FileSystem.from_uri``; for
S3 the usual AWS variables apply, ``AWS_ENDPOINT_URL`` for an S3-compatible endpoint). ``publish_entry`` copies a
locally built entry there, ``_SUCCESS`` last, so a reader never sees half an entry.

Every file is opened through ``plain_parquet``: a part or ``rows.parquet`` with an extension-typed column (Ray's
pickled-object type would run code in the worker when read) is refused. ``publish_entry`` checks an entry already
on the stream storage the same way and publishes it again when a file is refused; a worker that still meets one
fails with ``StreamError`` naming the file and the column.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from higgs_train.data.plain_parquet import (
    UnsafeParquetError,
    open_plain_parquet_file,
    parquet_refusal,
    read_plain_parquet,
)
from higgs_train.data.record_codec import iter_records
from higgs_train.storage import filesystem_and_path, is_uri, join

logger = logging.getLogger(__name__)

ROWS_FILE = "rows.parquet"
DATA_DIR = "data"
SUCCESS_FILE = "_SUCCESS"
ROWS_PER_GROUP = 32
ROWS_PER_FILE = 8192
OPEN_FILES = 4  # footers kept open per reader (a step rarely spans more files than that)
LOCATION_COLUMNS = ["num_tokens", "file", "row_group", "offset"]


def data_file_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class StreamError(RuntimeError):
    """An entry that cannot be streamed (absent, incomplete, or without the streaming layout)."""


@dataclass(frozen=True)
class RowLocations:
    """Where each record of an entry lies, in entry order (row_index ascending), and its length."""

    num_tokens: np.ndarray
    file: np.ndarray
    row_group: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.num_tokens)


class EntryReader:
    """Random access to the records of one entry by position, on any pyarrow filesystem. Thread-safe."""

    def __init__(self, location: str) -> None:
        self.location = str(location)
        self.fs, self.path = filesystem_and_path(self.location)
        if self.fs.get_file_info(f"{self.path}/{SUCCESS_FILE}").type != pafs.FileType.File:
            raise StreamError(f"no complete token-cache entry at {self.location} (no {SUCCESS_FILE})")
        if self.fs.get_file_info(f"{self.path}/{ROWS_FILE}").type != pafs.FileType.File:
            raise StreamError(f"{self.location} has no {ROWS_FILE}: an entry of an older cache format; rebuild it")
        rows_file = f"{self.path}/{ROWS_FILE}"
        try:
            rows = read_plain_parquet(
                rows_file, columns=LOCATION_COLUMNS, filesystem=self.fs, name=self._uri(ROWS_FILE)
            )
        except UnsafeParquetError as err:
            raise StreamError(f"{err}; rerun the job to publish the entry again") from None
        self.locations = RowLocations(*(rows.column(c).to_numpy() for c in LOCATION_COLUMNS))
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.locations)

    def _uri(self, relative: str) -> str:
        """How messages name a file of the entry: under the location as given (``s3://...`` stays a URI)."""
        return f"{self.location.rstrip('/')}/{relative}"

    def _file(self, index: int) -> pq.ParquetFile:
        with self._lock:
            pf = self._files.get(index)
            if pf is not None:
                self._files.move_to_end(index)
                return pf
        relative = f"{DATA_DIR}/{data_file_name(index)}"
        try:
            pf = open_plain_parquet_file(f"{self.path}/{relative}", filesystem=self.fs, name=self._uri(relative))
        except UnsafeParquetError as err:
            raise StreamError(f"{err}; rerun the job to publish the entry again") from None
        with self._lock:
            self._files[index] = pf
            while len(self._files) > OPEN_FILES:
                self._files.popitem(last=False)[1].close()
        return pf

    def read_table(self, positions: Sequence[int]) -> pa.Table:
        """The records at ``positions`` (in that order; repeats allowed), reading only the row groups holding them."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return pa.table({})
        if positions.min() < 0 or positions.max() >= len(self):
            raise IndexError(f"row position out of range 0..{len(self) - 1}")
        loc = self.locations
        groups: dict[tuple[int, int], list[int]] = {}
        for k, p in enumerate(positions):
            groups.setdefault((int(loc.file[p]), int(loc.row_group[p])), []).append(k)
        pieces, order = [], []
        for (file, group), ks in groups.items():
            table = self._file(file).read_row_group(group)
            pieces.append(table.take(pa.array(loc.offset[positions[ks]], pa.int64())))
            order.extend(ks)
        combined = pa.concat_tables(pieces)
        return combined.take(pa.array(np.argsort(np.asarray(order), kind="stable")))

    def read(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """Records as dicts of numpy arrays (``preprocess.iter_records``), in the order of ``positions``."""
        return list(iter_records(self.read_table(positions)))

    def close(self) -> None:
        with self._lock:
            for pf in self._files.values():
                pf.close()
            self._files.clear()


class ShardStream:
    """The records of one worker's steps, read one step ahead: what ``HiggsAudioTrainer`` indexes as its records.

    ``lengths()`` serves the plan; ``schedule(steps)`` tells the stream the order of the epoch's steps (lists of
    micro-batches of positions); ``stream[i]`` returns record ``i`` of the current step, moving on to the next
    scheduled step that holds ``i`` when it is not there (waiting for the background read only if it is not done
    yet) and starting the read of the step after it. At most ``prefetch_steps`` reads are in flight, so at most
    ``1 + prefetch_steps`` steps of records are in memory. A position outside the schedule is read on the spot.

    ``read_log`` (when ``log_reads``) lists, per ``schedule`` call, the ``row_index`` of every record read: tests
    check each row is read once per epoch.
    """

    def __init__(self, reader: EntryReader, prefetch_steps: int = 1, log_reads: bool = False) -> None:
        if prefetch_steps < 0:
            raise ValueError("prefetch_steps must be >= 0")
        self.reader = reader
        self.prefetch_steps = prefetch_steps
        self.log_reads = log_reads
        self.read_log: list[list[int]] = []
        self.steps_read = 0
        self.max_in_flight = 0
        self.wait_seconds = 0.0
        self._steps: list[list[int]] = []
        self._cursor = -1
        self._current: dict[int, dict[str, Any]] = {}
        self._pending: OrderedDict[int, Future] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") if prefetch_steps else None

    # --- what the trainer and the planner see ---
    def __len__(self) -> int:
        return len(self.reader)

    def lengths(self) -> np.ndarray:
        return self.reader.locations.num_tokens

    def schedule(self, steps: Sequence[Sequence[Sequence[int]]]) -> None:
        """The epoch's steps in training order (each a list of micro-batches of positions); drops earlier reads.

        The same schedule again before its first step (the trainer plans epoch 0 in ``setup`` and in ``train``)
        keeps the read already under way.
        """
        new = [sorted({int(i) for batch in step for i in batch}) for step in steps]
        if new == self._steps and self._cursor == -1:
            return
        self._drop_pending()
        self._steps = new
        self._cursor = -1
        self._current = {}
        if self.log_reads:
            self.read_log.append([])
        self._prefetch_from(0)

    def __getitem__(self, position: int) -> dict[str, Any]:
        position = int(position)
        hit = self._current.get(position)
        if hit is not None:
            return hit
        for s in range(self._cursor + 1, len(self._steps)):
            if position in self._steps[s]:
                self._advance_to(s)
                return self._current[position]
        logger.debug("position %d is not in the remaining schedule; reading it on the spot", position)
        return self._read([position])[0]

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.reader.close()

    # --- internals ---
    def _read(self, positions: list[int]) -> list[dict[str, Any]]:
        records = self.reader.read(positions)
        if self.log_reads and self.read_log:
            self.read_log[-1].extend(int(r["row_index"]) for r in records)
        return records

    def _load(self, s: int) -> dict[int, dict[str, Any]]:
        rows = self._steps[s]
        return dict(zip(rows, self._read(rows), strict=True))

    def _advance_to(self, s: int) -> None:
        for stale in [k for k in self._pending if k < s]:
            self._pending.pop(stale).cancel()
        future = self._pending.pop(s, None)
        start = time.perf_counter()
        self._current = {}  # release the previous step before holding the next one
        self._current = future.result() if future is not None else self._load(s)
        self.wait_seconds += time.perf_counter() - start
        self.steps_read += 1
        self._cursor = s
        self._prefetch_from(s + 1)

    def _prefetch_from(self, first: int) -> None:
        if self._pool is None:
            return
        for s in range(first, min(first + self.prefetch_steps, len(self._steps))):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(self._load, s)
        self.max_in_flight = max(self.max_in_flight, len(self._pending))

    def _drop_pending(self) -> None:
        for future in self._pending.values():
            future.cancel()
        for future in self._pending.values():
            if not future.cancelled():
                future.exception()  # wait, so a late read cannot log into the next schedule
        self._pending.clear()


def record_lengths(records: Any) -> np.ndarray:
    """``num_tokens`` per record of a list of records or a ``ShardStream`` (which answers without reading records)."""
    if isinstance(records, ShardStream):
        return records.lengths()
    return np.asarray([int(r["num_tokens"]) for r in records], dtype=np.int64)


def schedule_steps(records: Any, steps: Sequence[Sequence[Sequence[int]]]) -> None:
    """Tell a ``ShardStream`` the epoch's step order (a list of records needs nothing)."""
    if isinstance(records, ShardStream):
        records.schedule(steps)


def open_shard_stream(root: str, key: str, prefetch_steps: int = 1, log_reads: bool = False) -> ShardStream:
    """The stream of entry ``key`` under ``root`` (a local path or a URI)."""
    return ShardStream(EntryReader(join(root, key)), prefetch_steps, log_reads)


def entry_refusal(location: str, extra_files: Sequence[str] = ()) -> str | None:
    """The first refusal (``plain_parquet.parquet_refusal``: an extension-typed column or a footer that does not
    parse) among the ``rows.parquet``, the data files and the ``extra_files`` present of the entry at ``location``
    (a local path or a URI), or None. Reads footers only: a few files per entry."""
    fs, path = filesystem_and_path(location)
    selector = pafs.FileSelector(f"{path}/{DATA_DIR}", allow_not_found=True)
    parts = sorted(i.base_name for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)
    for relative in [ROWS_FILE, *extra_files, *(f"{DATA_DIR}/{name}" for name in parts if name.endswith(".parquet"))]:
        if fs.get_file_info(f"{path}/{relative}").type != pafs.FileType.File:
            continue
        refusal = parquet_refusal(f"{path}/{relative}", filesystem=fs, name=f"{location.rstrip('/')}/{relative}")
        if refusal is not None:
            return refusal
    return None


def publish_entry(local_entry: str | Path, root: str) -> str:
    """Copy a complete local entry to ``<root>/<key>`` on any pyarrow filesystem, ``_SUCCESS`` last; returns it.

    An entry already complete there is left as it is (same key, same content) once its files pass
    ``entry_refusal``; one with a refused file (planted or damaged there) is deleted and published again. A local
    ``root`` that is the entry's own parent is a no-op (``token_cache.TokenCache.lookup`` checked that entry).
    """
    local_entry = Path(local_entry)
    target = join(root, local_entry.name)
    if not is_uri(root) and Path(root).resolve() == local_entry.parent.resolve():
        return str(local_entry)
    fs, path = filesystem_and_path(target)
    if fs.get_file_info(f"{path}/{SUCCESS_FILE}").type == pafs.FileType.File:
        refusal = entry_refusal(target)
        if refusal is None:
            return target
        logger.warning("token-cache entry at %s is corrupt and is published again: %s", target, refusal)
        fs.delete_file(f"{path}/{SUCCESS_FILE}")  # no reader takes it from here on
        fs.delete_dir_contents(path)
    local = pafs.LocalFileSystem()
    fs.create_dir(path, recursive=True)
    for file in sorted(p for p in local_entry.rglob("*") if p.is_file() and p.name != SUCCESS_FILE):
        rel = file.relative_to(local_entry).as_posix()
        if "/" in rel:
            fs.create_dir(f"{path}/{rel.rsplit('/', 1)[0]}", recursive=True)
        pafs.copy_files(str(file), f"{path}/{rel}", source_filesystem=local, destination_filesystem=fs)
    pafs.copy_files(
        str(local_entry / SUCCESS_FILE), f"{path}/{SUCCESS_FILE}", source_filesystem=local, destination_filesystem=fs
    )
    logger.info("published token-cache entry %s to %s", local_entry.name, target)
    return target


def stream_root_for_workers(local_entries: Sequence[str | Path], stream_cache_uri: str) -> str:
    """The root workers stream the entries (training, validation) from: ``stream_cache_uri`` after publishing them
    there, else the local cache root (a single node, or a cache on a mount every node sees)."""
    local_entries = [Path(entry).resolve() for entry in local_entries]
    if not stream_cache_uri:
        return str(local_entries[0].parent)
    for entry in local_entries:
        publish_entry(entry, stream_cache_uri)
    return stream_cache_uri


def read_entry(root: str, key: str) -> list[dict[str, Any]]:
    """Every record of entry ``key`` under ``root`` (a local path or a URI), in the entry's order: for a small entry
    that each worker needs whole (the validation set), read from wherever the training entry streams from, so no
    worker needs the driver's disk."""
    reader = EntryReader(join(root, key))
    try:
        return reader.read(range(len(reader)))
    finally:
        reader.close()
