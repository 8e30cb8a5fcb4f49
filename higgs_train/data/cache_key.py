"""The token-cache key: what a cache entry (and a code-store folder) is named by, computed before any storage.

Why a module apart from the cache (``token_cache``): the key is a pure function of the inputs (manifest rows, audio
files, tokenizers, settings) that the driver computes before a single file of the cache is read or written, and
that ``row_reuse`` and the builds' ``fingerprints_as_seen`` correction use too; the cache itself only looks a key
up, stages and publishes. Keeping the hashing here keeps the storage rules (staging, atomic publish, the code
store's locks) readable on their own, and says in one place what makes two builds the same.

The key hashes:

* the manifest rows (row_index, id, speaker, start_index, messages_json, misc_json, parse_error) in order;
* the full sha256 of every referenced audio file (missing or unreadable files hash as "missing: <reason>" so their
  later appearance changes the key). A file that vanishes *during* the build is keyed as the build saw it
  (``fingerprints_as_seen``): a failure that depends on file-system state is never kept under a key that claims the
  file was there. Full hashes rather than size/mtime or head/tail samples: a clip edited in place with equal size, or a
  copy with a fresh mtime, must neither be a stale hit nor a needless miss. The cost (reading each file once) is
  small next to encoding it and is paid once: ``fingerprints.json`` remembers the hash of an unchanged file by a
  stat key that every write changes (``FingerprintMemo``);
* the text tokenizer's content: its whole serialized pipeline (vocabulary, merges, normalizer, pre-tokenizer,
  post-processor, added tokens), special tokens and settings; not its path, so a moved copy still hits;
* the audio tokenizer: sha256 of each small file of a local directory (config, generation markers) and size +
  mtime_ns of large ones (weights; hashing a 1 GB checkpoint per run is the wrong trade), or the id of a hub model.
  The HuBERT teacher the tokenizer loads from the HF cache is not hashed; for the embedded stack its size and seed
  are in the hashed ``higgs_train_generated.json``;
* the preprocessing settings (limits, Whisper flag and rate, audio-in token flag, ``PREPROCESS_VERSION``).

The code store is keyed only by (audio tokenizer, limits, version) and clip content, so a *changed manifest* (a new
key) still re-encodes nothing already encoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from higgs_train.data.audio_io import display_name, resolve_audio_path, unreadable_reason
from higgs_train.data.clip_encoder import file_sha256
from higgs_train.data.preprocess_settings import PREPROCESS_VERSION, PreprocessSettings
from higgs_train.data.reasons import AudioError
from higgs_train.data.sample_tokens import audio_contents_in_order

CACHE_FORMAT = "2"  # 2: sorted part files in small row groups + rows.parquet (streamable); hashed into every key
KEY_COLUMNS = ("row_index", "id", "speaker", "start_index", "messages_json", "misc_json", "parse_error")
SMALL_FILE_BYTES = 1 << 20  # audio-tokenizer files up to this size are hashed; larger ones use size + mtime


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# --- identities -----------------------------------------------------------------------------------------------------
# Tokenizer settings that are paths or decode-only: they never change an id, and a moved copy must still hit.
_TOKENIZER_KWARGS_IGNORED = frozenset(
    {"name_or_path", "vocab_file", "merges_file", "tokenizer_file", "special_tokens_map_file", "cache_dir"}
)


def _tokenizer_pipeline_sha256(tokenizer: Any) -> str:
    """sha256 of everything that turns text into ids: the fast tokenizer's whole serialized pipeline.

    ``backend_tokenizer.to_str()`` is the ``tokenizer.json`` form: model (vocabulary *and* merges), normalizer,
    pre-tokenizer, post-processor, decoder and added tokens. It is parsed and re-dumped with sorted keys so that
    key order never matters; ``truncation`` and ``padding`` are left out because transformers resets them on every
    call (they are call state, not identity). A slow tokenizer has no such form: the files it saves its vocabulary
    to (vocab, merges, sentencepiece model) are hashed instead.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        return _sha(pipeline)
    with tempfile.TemporaryDirectory(prefix="higgs-tokenizer-") as tmp:
        files = sorted(Path(f) for f in tokenizer.save_vocabulary(tmp))
        return _sha({f.name: file_sha256(f) for f in files})


def text_tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """Content identity of a loaded text tokenizer, not its path (a moved copy still hits).

    Why the whole pipeline and not the vocabulary: other merges or an added ``Lowercase`` normalizer give other ids
    with the same vocabulary, and a key blind to them would serve rows tokenized by the old tokenizer. Besides the
    pipeline: the special tokens and their ids, and the tokenizer's settings (``init_kwargs`` such as
    ``add_bos_token``, less paths), which decide ids the pipeline does not.
    """
    added = sorted((str(k), str(v)) for k, v in getattr(tokenizer, "added_tokens_decoder", {}).items())
    kwargs = {
        k: v
        for k, v in getattr(tokenizer, "init_kwargs", {}).items()
        if k not in _TOKENIZER_KWARGS_IGNORED and isinstance(v, str | int | float | bool | type(None))
    }
    return {
        "class": type(tokenizer).__name__,
        "len": len(tokenizer),
        "pipeline_sha256": _tokenizer_pipeline_sha256(tokenizer),
        "added_sha256": _sha(added),
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "settings_sha256": _sha(kwargs),
    }


def audio_tokenizer_identity(path: str | Path) -> dict[str, Any]:
    """Identity of an audio tokenizer directory (small files hashed, weights by size + mtime) or hub id."""
    local = Path(path)
    if not local.is_dir():
        return {"hub_id": str(path)}
    files = {}
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        st = f.stat()
        rel = str(f.relative_to(local))
        files[rel] = file_sha256(f) if st.st_size <= SMALL_FILE_BYTES else [st.st_size, st.st_mtime_ns]
    return {"files": files}


# --- fingerprints ---------------------------------------------------------------------------------------------------
class FingerprintMemo:
    """sha256 of files, remembered by their stat key in one JSON file so unchanged files are not re-read.

    The stat key is (real path, size, mtime_ns, ctime_ns, inode). Size and mtime alone are not enough: ``cp -p``,
    ``tar -x`` and ``rsync -t`` write new bytes and set the old mtime back. ctime cannot be set by a user and moves
    on every write, rename or utime, and a replaced file (written elsewhere and renamed over) has a new inode, so an
    edit always changes the key. Timestamps tick coarsely (a few ms on Linux, up to seconds on some network
    mounts), so a file changed within ``RACY_SECONDS`` before it was hashed could change again with the same ctime;
    such a hash is not remembered (git's "racy clean" rule) and the file is hashed again next time.
    ``benchmarks/fingerprint_memo.py`` measures what the memo saves against re-hashing every file.

    Concurrent builders may overwrite each other's memo (last writer wins); that only costs a re-hash later.
    """

    RACY_SECONDS = 2.0

    def __init__(self, path: Path, racy_seconds: float | None = None) -> None:
        self.path = path
        self.racy_ns = int((self.RACY_SECONDS if racy_seconds is None else racy_seconds) * 1e9)
        self._data: dict[str, list] = {}
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                self._data = json.loads(path.read_text())
        self._dirty = False
        self.hashed = 0  # files read and hashed by this memo (not served from it)

    @staticmethod
    def stat_key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def sha256(self, file: Path) -> str:
        real = str(file.resolve())
        now = time.time_ns()  # before the stat and the read: a change during the read is never remembered
        st = file.stat()
        key = self.stat_key(st)
        hit = self._data.get(real)
        if isinstance(hit, list) and hit[:-1] == key:
            return hit[-1]
        digest = file_sha256(file)
        self.hashed += 1
        if st.st_ctime_ns + self.racy_ns < now:
            self._data[real] = [*key, digest]
            self._dirty = True
        elif self._data.pop(real, None) is not None:
            self._dirty = True
        return digest

    def save(self) -> None:
        if self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.path, json.dumps(self._data))
            self._dirty = False


def referenced_audio(messages_json: list[str]) -> list[str]:
    """Distinct ``audio_url`` values of all rows, in first-seen order (unparseable rows contribute none)."""
    seen: dict[str, None] = {}
    for raw in messages_json:
        try:
            messages = json.loads(raw) if isinstance(raw, str) else []
        except json.JSONDecodeError:
            continue
        for _, _, content in audio_contents_in_order(messages if isinstance(messages, list) else []):
            url = content.get("audio_url")
            if isinstance(url, str) and url:
                seen.setdefault(url, None)
    return list(seen)


def unavailable_fingerprint(state: str) -> str:
    """The fingerprint of a file that could not be reached, by the reason (``AudioUnavailable.state``)."""
    return f"missing: {state}"


def audio_fingerprints(urls: list[str], audio_base_path: str | Path, memo: FingerprintMemo) -> dict[str, str]:
    """url -> sha256 of its file, or ``missing: <reason>`` when it does not resolve or cannot be read."""
    out = {}
    for url in urls:
        try:
            path = resolve_audio_path(url, audio_base_path)
            out[url] = memo.sha256(path)
        except AudioError as err:
            out[url] = unavailable_fingerprint(str(err))
        except OSError as err:  # unreadable (permission denied, I/O error): that row's problem, not the driver's
            out[url] = unavailable_fingerprint(unreadable_reason(err, display_name(path, audio_base_path)))
    memo.save()
    return out


def fingerprints_as_seen(fingerprints: dict[str, str], unavailable: dict[str, str]) -> dict[str, str]:
    """Key-time fingerprints corrected by what preprocessing found unavailable (url -> state).

    A file that was there when the key was computed but missing or unreadable when an actor reached it makes the
    build's quarantine a statement about that moment's file system. Publishing it under the key-time fingerprints
    would keep the failure after the file is back (the next run computes the same key and hits). Keyed by the
    state the build saw instead, a later run with the file present misses and preprocesses the row again, and a
    run while it is still missing hits.
    """
    return {**fingerprints, **{url: unavailable_fingerprint(state) for url, state in unavailable.items()}}


# --- key ------------------------------------------------------------------------------------------------------------
def manifest_digest(table: pa.Table) -> str:
    """sha256 over the key columns of every row, in order (absent optional columns count as null)."""
    digest = hashlib.sha256()
    cols = {
        c: (table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows) for c in KEY_COLUMNS
    }
    for i in range(table.num_rows):
        digest.update(json.dumps([cols[c][i] for c in KEY_COLUMNS], default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def compute_cache_key(
    manifest: pa.Table,
    fingerprints: dict[str, str],
    text_identity: dict[str, Any],
    audio_identity: dict[str, Any],
    settings: PreprocessSettings,
) -> str:
    """The token-cache key (24 hex chars of sha256; collisions are not a practical concern at that length)."""
    return _sha(
        {
            "format": CACHE_FORMAT,
            "manifest": manifest_digest(manifest),
            "audio": sorted(fingerprints.items()),
            "text_tokenizer": text_identity,
            "audio_tokenizer": audio_identity,
            "settings": settings.identity(),
        }
    )[:24]


def code_store_key(audio_identity: dict[str, Any], settings: PreprocessSettings) -> str:
    """Codes depend on the audio tokenizer and on the clip; limits decide whether a clip is accepted at all."""
    return _sha({"version": PREPROCESS_VERSION, "audio_tokenizer": audio_identity, "limits": settings.limits})[:24]
