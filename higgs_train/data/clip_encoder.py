"""Encoded clips: their codes, their content key, the store that keeps them, and the encoder that makes them.

Why apart from ``preprocess``: running upstream's audio tokenizer is the one expensive, model-bound step of
preprocessing, and its rules (solo codes bit for bit, which clips may share an encoder call, what is counted) are
independent of how a row becomes a record. ``SamplePreprocessor`` calls ``ClipEncoder`` per row and per batch; the
codes are kept per clip content (``file_sha256``) in ``AudioCodeStore``, which the token cache opens per audio tokenizer
and which the encoder actors open directly (``CodeStore`` is what the preprocessor needs of it).
Encoder calls are counted per encoder (``ClipEncoder.stats``) and process-wide (``process_encoder_stats``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout

from higgs_train.data.audio_io import AudioLimits, load_audio, resolve_audio_path
from higgs_train.data.reasons import AudioError, Reason
from higgs_train.data.sample_tokens import PreprocessError, row_audio_urls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedAudio:
    """Codes of one clip, ``(num_codebooks, T)`` int16, and its duration at the tokenizer's rate."""

    codes: np.ndarray
    seconds: float


@dataclass
class EncoderStats:
    """Counts of real ``audio_tokenizer.encode`` calls (cache hits are not counted)."""

    calls: int = 0  # clips encoded
    seconds: float = 0.0  # audio seconds passed to the encoder
    cpu_seconds: float = 0.0  # process CPU time spent inside the encoder
    batches: int = 0  # encoder forward passes (a batched pass encodes several clips)

    def add(self, calls: int, seconds: float, cpu_seconds: float, batches: int | None = None) -> None:
        self.calls += calls
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.batches += calls if batches is None else batches

    def copy(self) -> EncoderStats:
        return EncoderStats(self.calls, self.seconds, self.cpu_seconds, self.batches)


_PROCESS_ENCODER_STATS = EncoderStats()


def process_encoder_stats() -> EncoderStats:
    """Encoder calls made by every ``SamplePreprocessor`` of this process so far (a snapshot)."""
    return _PROCESS_ENCODER_STATS.copy()


class CodeStore(Protocol):
    """What the preprocessor needs from a persistent code store (``AudioCodeStore`` below implements it)."""

    def get(self, sha256: str) -> EncodedAudio | None: ...

    def put(self, sha256: str, encoded: EncodedAudio) -> None: ...

    def lock(self, sha256: str, wait: bool = True) -> contextlib.AbstractContextManager[bool]: ...


# glibc's mallopt parameters (malloc.h): allocations at or above the mmap threshold get pages of their own, unmapped
# on free; the heap's free top is given back to the OS once it exceeds the trim threshold.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENCODER_HEAP_REUSE_BYTES = 1 << 30


def keep_freed_memory_for_reuse(limit_bytes: int = ENCODER_HEAP_REUSE_BYTES) -> bool:
    """Make this process's allocator reuse freed blocks up to ``limit_bytes`` instead of returning them to the OS.

    Why: upstream's audio tokenizer allocates and frees blocks of tens to hundreds of MB on every clip (the 24 kHz
    conv encoder's activations and workspaces). glibc serves each block above its mmap threshold (32 MiB at most)
    with fresh pages and unmaps them on free, so every clip pays the page faults and zeroing of its whole working
    set again. Keeping those blocks in the heap encodes 1.75x the audio per CPU second on 10 s clips with the
    real-size tokenizer, 1.14x on 2 s clips, 1.65x on 2 s clips stacked in one call (``benchmarks/encoder_heap.py``,
    README). The price is that the process keeps its peak heap between clips (+1.1 GiB peak RSS there), which an
    encoder actor, alive only to encode, would reach again on the next clip.

    Called by the encoder actors only (``pipeline_stages.PreprocessActor``), never in a driver or a trainer. Returns
    False, changing nothing, where the C library has no ``mallopt`` (not glibc, e.g. macOS or musl).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(int(limit_bytes), 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: the content identity of an audio file (see token_cache for why full hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def decode_clips(
    rows: Iterable[dict[str, Any]],
    audio_base_path: str | Path,
    sampling_rate: int,
    limits: AudioLimits,
    code_store: CodeStore | None = None,
) -> dict[str, np.ndarray]:
    """sha256 -> waveform (mono float32 at ``sampling_rate``) of every clip the rows reference that the code store
    does not hold: the decode/resample half of preprocessing, which needs no model, so a pipeline can run it on
    CPU workers of its own size ahead of the encoder (``SamplePreprocessor.process_batch(rows, decoded)``).
    A clip that cannot be read is left out; the encoding stage meets the same error and quarantines the row."""
    out: dict[str, np.ndarray] = {}
    for row in rows:
        for url in row_audio_urls(row):
            try:
                sha = file_sha256(resolve_audio_path(url, audio_base_path))
                if sha in out or (code_store is not None and code_store.get(sha) is not None):
                    continue
                out[sha] = load_audio(url, audio_base_path, sampling_rate, limits)
            except (OSError, AudioError):  # the row stops at this clip, as its own pass will
                break
    return out


class ClipEncoder:
    """Upstream's audio tokenizer over many clips: several clips per encoder call wherever that gives the solo codes.

    Why exact, and why only clips of equal length: generation encodes a reference clip alone, so the codes a model
    trains on must be those solo codes, bit for bit. Zero padding cannot give them: upstream's semantic teacher
    (HuBERT) normalises its first conv layer over the whole time axis (GroupNorm) and attends over every frame
    without a mask, so padding moves every frame's features, not only the tail (on the tiny stack 31% of a padded
    1.8 s clip's codes changed). Clips of the same sample count need no padding: they are stacked and go through
    upstream's ``_xcodec_encode`` in one call, whose codes equal the solo ones (``tests/unit/test_batched_encoding``).

    One more exclusion: for most lengths upstream finds its acoustic and semantic frame counts differ and runs the
    acoustic encoder a second time on a padded copy, reshaping the input in a way that only holds for one clip.
    So the first clip of every length goes alone, a forward hook counts the acoustic passes it took, and that
    length is batched afterwards only if it took one. The exactness holds on CPU only: on an H200, stacked codes
    differed from the solo ones in 0.06-0.3% of places (``benchmarks/encode_device.py``: the GPU picks other
    convolution kernels per batch shape). And stacking pays only there: on CPU it measured slower than one by one
    (``benchmarks/preprocess_throughput.py``). So the build's actors default to ``max_batch`` 1 on both
    (``stage_sizing.ENCODE_BATCH``); more is for benchmarks and for callers who accept that difference.
    """

    def __init__(self, audio_tokenizer: Any, max_batch: int = 1) -> None:
        self.tokenizer = audio_tokenizer
        self.max_batch = max(1, int(max_batch))
        self.sampling_rate = int(audio_tokenizer.sampling_rate)
        self.num_codebooks = int(audio_tokenizer.num_codebooks)
        self.stats = EncoderStats()
        self._single_pass: dict[int, bool] = {}  # clip length -> upstream's acoustic encoder ran once on it
        self._passes = 0
        self._hooked = False

    def encode_one(self, wave: np.ndarray, url: str) -> EncodedAudio:
        """One clip through upstream's public ``encode``; a failure becomes the row's ``PreprocessError``."""
        return self._solo(wave, url)

    def encode_many(self, waves: dict[str, np.ndarray], urls: dict[str, str]) -> dict[str, EncodedAudio]:
        """Codes for every key whose clip encodes; a clip that fails is left out (its row encodes it alone again
        and reports the reason)."""
        return dict(self.encode_each(waves, urls))

    def encode_each(self, waves: dict[str, np.ndarray], urls: dict[str, str]) -> Iterator[tuple[str, EncodedAudio]]:
        """``encode_many``, each ``(key, codes)`` handed on as soon as its encoder call returns, so a caller can
        store a clip and release its lock while the next clip encodes."""
        by_length: dict[int, list[str]] = {}
        for key, wave in waves.items():
            by_length.setdefault(len(wave), []).append(key)
        for length, keys in by_length.items():
            pending = list(keys)
            while pending:
                if self.max_batch == 1 or len(pending) == 1 or not self._single_pass.get(length, False):
                    key = pending.pop(0)
                    yield from self._solo_or_none(key, waves[key], urls[key])
                    continue
                group, pending = pending[: self.max_batch], pending[self.max_batch :]
                try:
                    encoded = self._stacked([waves[k] for k in group], [urls[k] for k in group])
                except Exception:  # a failed stack is retried clip by clip: each clip's own error is the reason
                    for key in group:
                        yield from self._solo_or_none(key, waves[key], urls[key])
                    continue
                yield from zip(group, encoded, strict=True)

    def _solo_or_none(self, key: str, wave: np.ndarray, url: str) -> Iterator[tuple[str, EncodedAudio]]:
        """``(key, codes)`` of one clip, or nothing when it fails (its row's own pass reports the reason)."""
        try:
            encoded = self._solo(wave, url)
        except PreprocessError:
            return
        yield key, encoded

    def _count_pass(self, *_: Any) -> None:
        self._passes += 1

    def _solo(self, wave: np.ndarray, url: str) -> EncodedAudio:
        import torch  # deferred on purpose: drivers import this module (through preprocess) and never encode

        if not self._hooked and isinstance(getattr(self.tokenizer, "encoder", None), torch.nn.Module):
            self.tokenizer.encoder.register_forward_hook(self._count_pass)
            self._hooked = True
        self._passes = 0
        start = time.process_time()
        try:
            with torch.inference_mode():
                codes = self.tokenizer.encode(wave, self.sampling_rate)
        except Exception as err:  # a model failure on one clip must not take the whole job down
            error = f"{type(err).__name__}: {err}"
            raise PreprocessError("encode", Reason.ENCODE_FAILED.format(url=url, error=error)) from err
        self._single_pass[len(wave)] = self._hooked and self._passes == 1
        seconds = len(wave) / self.sampling_rate
        self._count(1, seconds, time.process_time() - start)
        return self._checked(codes, url, seconds)

    def _stacked(self, waves: list[np.ndarray], urls: list[str]) -> list[EncodedAudio]:
        import torch

        x = torch.from_numpy(np.stack(waves).astype(np.float32))[:, None, :].to(self.tokenizer.device)
        start = time.process_time()
        with torch.inference_mode():
            codes = self.tokenizer._xcodec_encode(x).audio_codes  # (clips, codebooks, frames)
        seconds = len(waves[0]) / self.sampling_rate
        self._count(len(waves), seconds * len(waves), time.process_time() - start, batches=1)
        return [self._checked(c, url, seconds) for c, url in zip(codes, urls, strict=True)]

    def _count(self, clips: int, seconds: float, cpu: float, batches: int | None = None) -> None:
        self.stats.add(clips, seconds, cpu, batches)
        _PROCESS_ENCODER_STATS.add(clips, seconds, cpu, batches)

    def _checked(self, codes: Any, url: str, seconds: float) -> EncodedAudio:
        codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise PreprocessError("encode", Reason.ENCODE_BAD_SHAPE.format(shape=codes.shape, url=url))
        if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int16).max):
            raise PreprocessError("encode", Reason.ENCODE_OUT_OF_RANGE.format(url=url))
        return EncodedAudio(codes.astype(np.int16), float(seconds))


class AudioCodeStore:
    """Codes of every clip ever encoded with one (audio tokenizer, limits), by content sha256; safe across processes.

    ``lock(sha)`` is an inter-process file lock, so two actors meeting the same clip encode it once: the second waits
    and then reads. Each entry is written to a temp file and renamed, so a reader never sees half an entry; one
    damaged afterwards (a truncated copy, a full disk, a bad restore) is removed by ``get``, which reports it as
    absent, so the clip is encoded again instead of its rows being quarantined on every run.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.npz"

    def get(self, sha256: str) -> EncodedAudio | None:
        """The stored codes of a clip, or None when there are none or the entry does not load (then it is removed
        with a one-line warning: the caller encodes the clip again and ``put`` stores good codes)."""
        path = self._path(sha256)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                codes, seconds = data["codes"], float(data["seconds"])
            if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"codes of shape {codes.shape} and type {codes.dtype}")
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as err:
            logger.warning(
                "audio code store: %s is corrupt (%s: %s); removed, the clip is encoded again",
                path,
                type(err).__name__,
                err,
            )
            path.unlink(missing_ok=True)
            return None
        return EncodedAudio(codes.astype(np.int16), seconds)

    def put(self, sha256: str, encoded: EncodedAudio) -> None:
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, codes=encoded.codes, seconds=np.float64(encoded.seconds))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def lock(self, sha256: str, wait: bool = True) -> Iterator[bool]:
        """Hold the clip's lock across processes; yields True. With ``wait=False`` a lock another process holds
        yields False at once instead of waiting (the caller leaves that clip to whoever is encoding it)."""
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.with_suffix(".lock")))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.npz"))
