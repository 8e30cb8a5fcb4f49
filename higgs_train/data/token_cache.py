"""A content-addressed cache of preprocessed records, plus a per-clip store of audio codes.

Why: encoding audio is the dominant CPU cost of a fine-tune and its result depends only on (inputs, tokenizers,
settings). Keying the cache by exactly those makes a rerun, a second epoch, another trial or another run on the same
data a read instead of an encode, and makes *any* change to them a different key rather than a stale read.

Layout under ``cache_root``::

    <key>/data/part-*.parquet   records (record_codec.RECORD_SCHEMA), one row per good manifest row, sorted by
                                row_index in small row groups (``shard_stream`` says why)
    <key>/rows.parquet          per record: row_index, num_tokens, row-level content key (``row_reuse``), place
    <key>/quarantine.parquet    rows that failed, with stage and reason
    <key>/stats.json            rows ok/quarantined, encoder calls, audio seconds, CPU seconds, throughput
    <key>/_SUCCESS              written last; a key directory without it is never read
    audio_codes/<audio_key>/    one .npz of codes per distinct clip content (AudioCodeStore)
    fingerprints.json           memo of file sha256 by (path, size, mtime_ns, ctime_ns, inode): FingerprintMemo
    builds.jsonl                one line per build (hit or miss) with its encoder calls: a ledger across processes

Completeness is atomic: a build writes into ``.staging/<key>-<uuid>/``, writes ``_SUCCESS`` last and renames the
directory to ``<key>``; a crash leaves only staging debris, and two concurrent builders cannot both publish.

What the key hashes, and why those inputs and no others, is ``cache_key``'s to say: this module only looks a key
up, stages, publishes and sweeps.

The code store is keyed only by (audio tokenizer, limits, version) and clip content, so a *changed manifest* (a new
key) still re-encodes nothing already encoded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from higgs_train.data.cache_key import CACHE_FORMAT, FingerprintMemo, code_store_key
from higgs_train.data.clip_encoder import AudioCodeStore
from higgs_train.data.plain_parquet import read_plain_parquet
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.data.record_codec import RECORD_SCHEMA, iter_records
from higgs_train.data.shard_stream import entry_refusal  # the entry layout's home
from higgs_train.processes import process_alive
from higgs_train.storage import is_uri

logger = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS"
STATS_FILE = "stats.json"
QUARANTINE_FILE = "quarantine.parquet"
DATA_DIR = "data"


# --- cache entries --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    """One complete cache directory."""

    key: str
    path: Path
    stats: dict[str, Any]

    @property
    def data_dir(self) -> Path:
        return self.path / DATA_DIR

    @property
    def quarantine_path(self) -> Path:
        return self.path / QUARANTINE_FILE

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All records sorted by ``row_index`` (file order from parallel writers is not deterministic)."""
        files = sorted(self.data_dir.glob("*.parquet"))
        schema = RECORD_SCHEMA if columns is None else pa.schema([RECORD_SCHEMA.field(c) for c in columns])
        if not files:
            return schema.empty_table()
        wanted = columns if columns is None or "row_index" in columns else [*columns, "row_index"]
        table = pa.concat_tables([read_plain_parquet(f, columns=wanted) for f in files]).sort_by("row_index")
        return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA) if columns is None else table.select(columns)

    def records(self) -> list[dict[str, Any]]:
        """Records as dicts of numpy arrays, ready for ``record_codec.record_to_sample``."""
        return list(iter_records(self.table()))

    def lengths(self) -> np.ndarray:
        """``num_tokens`` per record, in ``table()`` order (what the batcher plans with)."""
        rows = self.path / "rows.parquet"  # shard_stream.ROWS_FILE: the lengths without opening the records
        if rows.is_file():
            return read_plain_parquet(rows, columns=["num_tokens"]).column("num_tokens").to_numpy()
        return self.table(["num_tokens"]).column("num_tokens").to_numpy()

    @property
    def num_rows(self) -> int:
        return int(self.stats.get("rows_ok", self.table(["row_index"]).num_rows))

    def quarantine_table(self) -> pa.Table:
        return read_plain_parquet(self.quarantine_path)


STAGING_OWNER_FILE = "_builder.json"
STAGING_MAX_AGE_SECONDS = 7 * 24 * 3600


class CacheIncompleteError(FileNotFoundError):
    """The key has no complete cache (absent, or a directory without ``_SUCCESS``)."""


class CacheLocationError(ValueError):
    """``--cache_dir`` names storage the token cache cannot be built on; the message says what to use instead."""


def local_cache_root(location: str | Path, flag: str = "--cache_dir") -> Path:
    """The cache root as a local path: a path as given, a ``file://`` URI as its path; other URIs are refused.

    Why refused rather than taken: a build publishes its entry with an atomic directory rename, serialises encoders
    with file locks and appends to a ledger, none of which object stores (s3://, gs://) offer, and Ray Data actors
    write the records with plain paths. Without this check ``Path("s3://bucket/x")`` is the relative folder
    ``s3:/bucket/x`` in the working directory. Shared storage is reached two ways instead: a folder every node
    mounts (NFS, a FUSE mount of the bucket) as ``--cache_dir``, or ``--stream_cache_uri``, to which the entry the
    driver built locally is copied and from which every worker streams its rows (``shard_stream``).
    """
    text = str(location)
    if not is_uri(text):
        return Path(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        try:
            _, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError, pa.ArrowInvalid) as err:
            raise CacheLocationError(f"{flag} {text}: not a valid file:// URI ({err})") from err
        return Path(path)
    raise CacheLocationError(
        f"{flag} {text}: the token cache must be a local or mounted shared folder (it is built with atomic renames "
        f"and file locks, which {scheme}:// storage lacks); keep --cache_dir local (or a shared mount) and pass "
        f"--stream_cache_uri {text} so workers stream the built cache from there"
    )


class TokenCache:
    """Lookup, staging and atomic publication of cache entries under one root (a local path or ``file://`` URI)."""

    def __init__(self, root: str | Path) -> None:
        self.root = local_cache_root(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> CacheEntry | None:
        """The complete entry for ``key``, or None.

        A complete entry with a Parquet file the project must not read (``plain_parquet``: an extension-typed column,
        which could run code when read, or a footer that does not parse) is corrupt: it is removed with a one-line
        warning and the key misses, so the build makes it again. Only footers are read: a few files per entry.
        """
        path = self.entry_dir(key)
        if not (path / SUCCESS_FILE).exists():
            return None
        refusal = entry_refusal(str(path), extra_files=(QUARANTINE_FILE,))
        if refusal is not None:
            logger.warning("token-cache entry %s is corrupt and is rebuilt: %s", key, refusal)
            self.remove_entry(path)
            return None
        stats_path = path / STATS_FILE
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        return CacheEntry(key, path, stats)

    def open(self, key: str) -> CacheEntry:
        """Like ``lookup`` but raises ``CacheIncompleteError`` when there is no complete entry."""
        entry = self.lookup(key)
        if entry is None:
            raise CacheIncompleteError(f"no complete token cache for key {key} under {self.root}")
        return entry

    def staging(self, key: str) -> Path:
        """A fresh private directory on the same file system as the entry (so publishing is a rename).

        It records its builder (host, pid); debris of builders that died is removed first (``sweep_staging``).
        """
        self.sweep_staging()
        path = self.root / ".staging" / f"{key}-{uuid.uuid4().hex[:12]}"
        (path / DATA_DIR).mkdir(parents=True)
        (path / STAGING_OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        return path

    def sweep_staging(self, max_age_seconds: float = STAGING_MAX_AGE_SECONDS) -> list[Path]:
        """Remove staging directories left by crashed builds; returns what was removed.

        A directory goes when its builder ran on this host and is no longer alive, or when it is older than
        ``max_age_seconds`` (a builder on another host sharing the cache root, or one without an owner record).
        A live builder's directory, here or on another host within that age, is never touched: two jobs (or a
        sweep and a job) may build caches under one root at the same time.
        """
        removed: list[Path] = []
        root = self.root / ".staging"
        if not root.is_dir():
            return removed
        host, now = socket.gethostname(), time.time()
        for path in root.iterdir():
            try:
                owner = json.loads((path / STAGING_OWNER_FILE).read_text())
            except (OSError, ValueError):
                owner = {}
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            dead_here = owner.get("host") == host and not process_alive(int(owner.get("pid", -1)))
            if dead_here or age > max_age_seconds:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if removed:
            logger.info("removed %d staging folder(s) of crashed token-cache builds under %s", len(removed), root)
        return removed

    def publish(self, key: str, staging: Path, stats: dict[str, Any]) -> CacheEntry:
        """Write ``stats.json`` and then ``_SUCCESS`` into ``staging`` and rename it to the key's directory.

        The caller has written ``data/`` and ``quarantine.parquet``. If another builder published the key first,
        its entry wins and this staging directory is discarded (both hold the same content by construction).
        """
        (staging / DATA_DIR).mkdir(exist_ok=True)
        (staging / STAGING_OWNER_FILE).unlink(missing_ok=True)
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        success = {
            "key": key,
            "format": CACHE_FORMAT,
            "files": files,
            "rows": stats.get("rows_ok"),
            "time": time.time(),
        }
        (staging / SUCCESS_FILE).write_text(json.dumps(success, indent=2) + "\n")
        final = self.entry_dir(key)
        if final.exists() and not (final / SUCCESS_FILE).exists():
            shutil.rmtree(final, ignore_errors=True)  # debris of an older, non-atomic layout
        try:
            os.rename(staging, final)
        except OSError:
            if self.lookup(key) is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return self.open(key)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def remove_entry(self, path: Path) -> None:
        """Take a corrupt entry out of the cache: ``_SUCCESS`` first (no reader takes it from then on), then the rest."""
        (path / SUCCESS_FILE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)

    def code_store(self, audio_identity: dict[str, Any], settings: PreprocessSettings) -> AudioCodeStore:
        return AudioCodeStore(self.root / "audio_codes" / code_store_key(audio_identity, settings))

    def fingerprint_memo(self) -> FingerprintMemo:
        return FingerprintMemo(self.root / "fingerprints.json")

    # --- the build ledger: a persistent count of encoder work across processes and runs ---
    def record_build(self, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": time.time(), **entry}, sort_keys=True) + "\n"
        with open(self.root / "builds.jsonl", "a") as fh:  # one short O_APPEND write per build
            fh.write(line)

    def builds(self) -> list[dict[str, Any]]:
        path = self.root / "builds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
