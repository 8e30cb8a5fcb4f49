"""Preprocess one canonical manifest row into one Arrow-friendly training record (a pure stage; no Ray here).

Why a separate, pure stage: the expensive work of a voice-cloning fine-tune on CPU-side is running the Higgs audio
tokenizer over every clip. Doing it once, ahead of training, in a function that the Ray pipeline
(``ray_pipeline.py``), the notebook dataset (``dataset.py``) and the tests all share, means the bytes the trainer
sees are the bytes the tests checked, and the encoder never runs inside the training loop.

A record (``RECORD_SCHEMA``) holds exactly what ``ChatMLDatasetSample`` needs, flattened into Arrow types so it can
be written to Parquet, streamed by Ray Data and rebuilt with ``record_to_sample``:

* ``input_ids`` / ``label_ids`` (int32): upstream ``prepare_chatml_sample`` output; labels are -100 before
  ``start_index`` (the reference turn) and on every non-assistant token.
* ``audio_codes`` (int16, flattened codebook-major, i.e. row ``k`` of the ``(num_codebooks, total_T)`` matrix
  lies at ``[k*total_T, (k+1)*total_T)``) with ``audio_codes_shape = [num_codebooks, total_T]``; int16 halves the
  cache against int32 and holds any codebook of <= 32767 entries (Higgs uses 1024).
* ``audio_ids_start``: start column of every audio (in and out, message order) in the concatenated codes.
* ``audio_is_out``: True for assistant audio (``<|AUDIO_OUT|>``), False for user/system audio (``<|AUDIO|>``).
* ``audio_waveforms`` / ``audio_waveforms_start`` / ``audio_sample_rates``: 16 kHz mono waveforms of the
  audio-in contents only, in order, and only when the model encodes Whisper embeddings; otherwise empty.
* ``num_tokens``: the merged sequence length the model will see (see ``estimate_num_tokens``), used by the
  token-budget batcher.
* ``audio_seconds``: seconds of all audio in the row.

Each distinct audio file is encoded at most once per process (an LRU keyed by content hash) and, when a code
store is given (``clip_encoder.AudioCodeStore``), at most once across processes, epochs and reruns. Encoder calls are
counted process-wide (``clip_encoder.process_encoder_stats``) and per batch (``BatchResult.stats``), which the
pipeline aggregates into the cache's ``stats.json``. What a row's tokens are (and how long the model sees it) is
``sample_tokens``, shared with the validator and the length limit; running the audio tokenizer is ``clip_encoder``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from higgs_train.data.audio_io import (
    AudioLimits,
    audio_header_seconds,
    display_name,
    load_audio,
    resolve_audio_path,
    unreadable_reason,
)
from higgs_train.data.clip_encoder import ClipEncoder, CodeStore, EncodedAudio, EncoderStats, file_sha256
from higgs_train.data.preprocess_settings import PreprocessSettings
from higgs_train.data.reasons import AudioError, AudioUnavailable, Reason
from higgs_train.data.row_checks import structural_reason, text_reason
from higgs_train.data.row_length import RowLengthLimit
from higgs_train.data.sample_tokens import (
    AUDIO_IN_TOKEN,
    AUDIO_OUT_TOKEN,
    PreprocessError,
    audio_contents_in_order,
    audio_url_of,
    chatml_sample,
    estimate_num_tokens,
    row_audio_urls,
    row_to_chatml,
    tokenize_chatml,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowFailure:
    """One quarantined row: which row, which stage failed and why."""

    id: str
    row_index: int
    stage: str
    reason: str
    # (audio_url, state) of files that were unavailable (file-system state, see reasons.AudioUnavailable): the
    # token cache keys the entry by this state so a restored file is preprocessed again on the next run.
    unavailable: tuple[tuple[str, str], ...] = ()


@dataclass
class BatchResult:
    """Output of ``SamplePreprocessor.process_batch``: good records, quarantined rows and the batch's cost."""

    records: list[dict[str, Any]]
    failures: list[RowFailure]
    stats: dict[str, float] = field(default_factory=dict)


def _optional_int(value: Any) -> int | None:
    # Arrow/pandas hand back numpy ints or NaN; upstream validates with dacite(check_types=True), which wants int.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


class SamplePreprocessor:
    """Canonical row -> record: tokenize text, load + encode audio, prepare Whisper input, estimate length.

    Stateless apart from an in-process LRU of encoded clips (by content hash) and encoder counters, so one instance
    per process (e.g. per Ray actor) is the intended use; tokenizers load once, in the caller.
    """

    def __init__(
        self,
        text_tokenizer: Any,
        audio_tokenizer: Any,
        audio_base_path: str | Path,
        limits: AudioLimits | None = None,
        whisper: bool = False,
        *,
        encode_audio_in_tokens: bool = True,
        code_store: CodeStore | None = None,
        memo_size: int = 256,
        max_tokens_per_row: int = 0,
        encode_batch_size: int = 1,
    ) -> None:
        self.tokenizer = text_tokenizer
        self.audio_tokenizer = audio_tokenizer
        self.audio_base_path = Path(audio_base_path)
        self.settings = PreprocessSettings(
            limits=limits or AudioLimits(),
            whisper=bool(whisper),
            encode_audio_in_tokens=encode_audio_in_tokens,
            max_tokens_per_row=int(max_tokens_per_row),
        )
        self.code_store = code_store
        self.sampling_rate = int(audio_tokenizer.sampling_rate)
        self.num_codebooks = int(audio_tokenizer.num_codebooks)
        self.audio_in_id = text_tokenizer.convert_tokens_to_ids(AUDIO_IN_TOKEN)
        self.audio_out_id = text_tokenizer.convert_tokens_to_ids(AUDIO_OUT_TOKEN)
        self.clip_encoder = ClipEncoder(audio_tokenizer, encode_batch_size)
        self._memo: OrderedDict[str, EncodedAudio] = OrderedDict()
        self._memo_size = memo_size
        self._ahead: dict[str, EncodedAudio] = {}  # this batch's clips, encoded together before its rows run
        self._sha_of: dict[Path, str] = {}  # this batch's file hashes, so each file is read once per batch

    @property
    def encoder_stats(self) -> EncoderStats:
        return self.clip_encoder.stats

    @property
    def limits(self) -> AudioLimits:
        return self.settings.limits

    # --- one row ---
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Preprocess one row; raises ``AudioError`` or ``PreprocessError`` (never returns a partial record).

        Checks run in the validator's order (structure, text, audio, length) with the validator's functions and
        reasons; tokenizer-only checks (placeholders, encoder failures, the exact length) come where they can.
        """
        sample = row_to_chatml(row)
        self._check_structure(sample)
        sample = chatml_sample(sample)
        layout = audio_contents_in_order(sample["messages"])
        encoded: list[EncodedAudio] = []
        header_seconds: list[float] = []
        waves: list[np.ndarray] = []
        for msg_index, role, content in layout:
            try:
                url = audio_url_of(content)
                encoded.append(self._encoded(url))
                header_seconds.append(audio_header_seconds(resolve_audio_path(url, self.audio_base_path)))
                if self.settings.whisper and role != "assistant":
                    waves.append(load_audio(url, self.audio_base_path, self.settings.whisper_sample_rate, self.limits))
            except AudioUnavailable as err:
                message = Reason.AUDIO_PROBLEM.format(i=msg_index, error=err)
                raise AudioUnavailable(message, err.url or content.get("audio_url"), err.state) from err
            except AudioError as err:
                raise AudioError(Reason.AUDIO_PROBLEM.format(i=msg_index, error=err)) from err
        input_ids, label_ids, audio_contents, speaker = tokenize_chatml(sample, self.tokenizer)
        is_out = self._check_layout(input_ids, layout, len(audio_contents))
        limit = RowLengthLimit(
            self.settings.max_tokens_per_row,
            self.num_codebooks,
            float(self.audio_tokenizer.tps),
            self.settings.encode_audio_in_tokens,
            self.settings.whisper,
        )
        too_long = limit.reason(limit.estimate(len(input_ids), header_seconds, is_out))
        if too_long:
            raise PreprocessError("length", too_long)
        record = self._record(row, sample, speaker, input_ids, label_ids, encoded, is_out, waves)
        too_long = limit.reason(int(record["num_tokens"]))  # the exact length; differs from the estimate by frames
        if too_long:
            raise PreprocessError("length", too_long)
        return record

    def _check_structure(self, sample: dict[str, Any]) -> None:
        """The validator's schema, role, layout and text checks, so a job quarantines exactly what
        ``--validate_data_only`` reports (audio checks happen below, while loading)."""
        reason, turns = structural_reason(sample)
        reason = reason or text_reason(turns, self.tokenizer)
        if reason:
            raise PreprocessError("validation", reason)

    def _check_layout(self, input_ids: list[int], layout: list[tuple[int, str, dict]], n_audio: int) -> list[bool]:
        placeholders = [t for t in input_ids if t in (self.audio_in_id, self.audio_out_id)]
        if len(placeholders) != n_audio or len(layout) != n_audio:
            raise PreprocessError(
                "layout", Reason.PLACEHOLDER_MISMATCH.format(placeholders=len(placeholders), contents=n_audio)
            )
        is_out = [t == self.audio_out_id for t in placeholders]
        if True in is_out:
            first_out = is_out.index(True)
            for k in range(first_out + 1, n_audio):
                if not is_out[k]:  # the validator's structural check catches this first; kept as a guard
                    raise PreprocessError("layout", Reason.AUDIO_IN_AFTER_OUT.format(i=layout[k][0], role=layout[k][1]))
        return is_out

    # --- audio ---
    def _sha(self, path: Path) -> str:
        sha = self._sha_of.get(path)
        return sha if sha is not None else file_sha256(path)

    def _encoded(self, url: str) -> EncodedAudio:
        path = resolve_audio_path(url, self.audio_base_path)
        try:
            sha = self._sha(path)
        except OSError as err:  # e.g. permission denied: this row's problem, worded as the validator words it
            raise AudioUnavailable(unreadable_reason(err, display_name(path, self.audio_base_path)), url) from err
        hit = self._memo.get(sha) or self._ahead.get(sha)
        if hit is not None:
            self._memo[sha] = hit
            self._memo.move_to_end(sha)
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
            return hit
        if self.code_store is None:
            enc = self._load_and_encode(url)
        else:
            enc = self.code_store.get(sha)
            if enc is None:
                with self.code_store.lock(sha):  # another actor may be encoding the same file right now
                    enc = self.code_store.get(sha)
                    if enc is None:
                        enc = self._load_and_encode(url)
                        self.code_store.put(sha, enc)
        self._memo[sha] = enc
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return enc

    def _load_and_encode(self, url: str) -> EncodedAudio:
        wave = load_audio(url, self.audio_base_path, self.sampling_rate, self.limits)
        return self.clip_encoder.encode_one(wave, url)

    def _clips_of(self, row: dict[str, Any]) -> list[str]:
        """The audio URLs the row pass (``__call__``) would encode, in its order; [] for a row it rejects first."""
        try:
            self._check_structure(row_to_chatml(row))
        except Exception:  # the row pass raises the same error and quarantines the row with its reason
            return []
        return row_audio_urls(row)

    def _encode_ahead(self, rows: list[dict[str, Any]], decoded: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Encode the clips these rows need that no cache holds, together (``ClipEncoder.encode_each``); returns the
        rows in the order their own pass should take them.

        Only what succeeds is kept: a clip that cannot be read, decoded or encoded is left to its row's own pass,
        which raises the error with the reason the row is quarantined for.

        Each clip is still encoded by one actor only, and no actor waits here: a clip whose code-store lock another
        actor holds (it is encoding that clip, typically a reference shared by many rows) is skipped, and this actor
        encodes its other clips meanwhile; the rows that need a skipped clip go last in the row pass, which reads its
        codes from the store, waiting for the lock only if the other actor is still at it. Each lock is released as
        soon as its clip is stored, not when the batch is done: holding them all to the end kept 2 actors in
        lockstep, each batch of one waiting for the whole batch of the other (``benchmarks/preprocess_throughput.py``
        on 10 s clips: 2 actors 1.56x one, their batches ending within 0.1 s of each other). Never waiting here also
        means locks cannot deadlock.
        """
        wanted: dict[str, str] = {}  # sha -> url
        needs: list[set[str]] = []  # per row, the clips it will read
        for row in rows:
            needs.append(set())
            for url in self._clips_of(row):
                try:
                    path = resolve_audio_path(url, self.audio_base_path)
                    sha = self._sha_of[path] = self._sha(path)
                except (OSError, AudioError):
                    break
                needs[-1].add(sha)
                if sha not in self._memo and sha not in wanted:
                    wanted[sha] = url
        if not wanted:
            return rows
        elsewhere: set[str] = set()  # clips another actor is encoding now
        held: dict[str, contextlib.ExitStack] = {}
        try:
            if self.code_store is not None:
                for sha in list(wanted):
                    lock = contextlib.ExitStack()
                    if lock.enter_context(self.code_store.lock(sha, wait=False)):
                        held[sha] = lock
                    else:
                        lock.close()
                        elsewhere.add(sha)
                        del wanted[sha]
                for sha in list(wanted):
                    stored = self.code_store.get(sha)
                    if stored is not None:
                        self._ahead[sha] = stored
                        del wanted[sha]
                        held.pop(sha).close()
            waves: dict[str, np.ndarray] = {}
            for sha, url in wanted.items():
                wave = decoded.get(sha)
                if wave is None:
                    try:
                        wave = load_audio(url, self.audio_base_path, self.sampling_rate, self.limits)
                    except AudioError:
                        continue
                waves[sha] = wave
            for sha, enc in self.clip_encoder.encode_each(waves, wanted):
                self._ahead[sha] = enc
                if self.code_store is not None:
                    self.code_store.put(sha, enc)
                    held.pop(sha).close()  # an actor waiting for this clip reads it now
        finally:
            for lock in held.values():
                lock.close()
        ready = [row for row, need in zip(rows, needs, strict=True) if not need & elsewhere]
        return ready + [row for row, need in zip(rows, needs, strict=True) if need & elsewhere]

    # --- record ---
    def _record(
        self,
        row: dict[str, Any],
        sample: dict[str, Any],
        speaker: str | None,
        input_ids: list[int],
        label_ids: list[int],
        encoded: list[EncodedAudio],
        is_out: list[bool],
        waves: list[np.ndarray],
    ) -> dict[str, Any]:
        k = self.num_codebooks
        frames = [e.codes.shape[1] for e in encoded]
        codes = np.concatenate([e.codes for e in encoded], axis=1) if encoded else np.zeros((k, 0), np.int16)
        wave_lengths = [len(w) for w in waves]
        return {
            "id": str(row.get("id", "")),
            "row_index": _optional_int(row.get("row_index")) if row.get("row_index") is not None else -1,
            "speaker": speaker if speaker is not None else sample.get("speaker"),
            "input_ids": np.asarray(input_ids, np.int32),
            "label_ids": np.asarray(label_ids, np.int32),
            "audio_codes": np.ascontiguousarray(codes).reshape(-1),
            "audio_codes_shape": np.asarray(codes.shape, np.int32),
            "audio_ids_start": np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
            if frames
            else np.zeros(0, np.int64),
            "audio_is_out": np.asarray(is_out, np.bool_),
            "audio_waveforms": np.concatenate(waves).astype(np.float32) if waves else np.zeros(0, np.float32),
            "audio_waveforms_start": np.concatenate([[0], np.cumsum(wave_lengths)[:-1]]).astype(np.int64)
            if waves
            else np.zeros(0, np.int64),
            "audio_sample_rates": np.full(len(waves), self.settings.whisper_sample_rate, np.int32),
            "num_tokens": estimate_num_tokens(
                len(input_ids),
                frames,
                is_out,
                k,
                [n / self.settings.whisper_sample_rate for n in wave_lengths],
                self.settings.encode_audio_in_tokens,
            ),
            "audio_seconds": float(sum(e.seconds for e in encoded)),
        }

    # --- many rows ---
    def process_batch(
        self, rows: Iterable[dict[str, Any]], decoded: dict[str, np.ndarray] | None = None
    ) -> BatchResult:
        """Preprocess rows, keeping failures (with stage and reason) instead of raising, plus the batch's cost.

        The batch's clips are encoded first, together (``_encode_ahead``); ``decoded`` maps a file's sha256 to its
        waveform at the tokenizer's rate when an earlier stage already decoded it (``clip_encoder.decode_clips``),
        so this stage only encodes.
        """
        rows = list(rows)
        before = self.encoder_stats.copy()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        records: list[dict[str, Any]] = []
        failures: list[RowFailure] = []
        try:
            try:
                rows = self._encode_ahead(rows, decoded or {})
            except Exception as err:  # e.g. a code store that cannot lock: the rows still run, each on its own
                logger.warning(
                    "encoding the batch's clips together failed (%s: %s); encoding row by row", type(err).__name__, err
                )
            self._process_rows(rows, records, failures)
        finally:
            self._ahead.clear()
            self._sha_of.clear()
        stats = {
            "rows": len(records) + len(failures),
            "rows_ok": len(records),
            "rows_failed": len(failures),
            "encoder_calls": self.encoder_stats.calls - before.calls,
            "encoder_batches": self.encoder_stats.batches - before.batches,
            "encoded_seconds": self.encoder_stats.seconds - before.seconds,
            "audio_seconds": float(sum(r["audio_seconds"] for r in records)),
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0,
        }
        return BatchResult(records, failures, stats)

    def _process_rows(self, rows: list[dict[str, Any]], records: list, failures: list[RowFailure]) -> None:
        for row in rows:
            rid, ridx = str(row.get("id", "")), row.get("row_index")
            ridx = int(ridx) if ridx is not None else -1
            try:
                records.append(self(row))
            except PreprocessError as err:
                failures.append(RowFailure(rid, ridx, err.stage, err.reason))
            except AudioUnavailable as err:
                unavailable = ((err.url, err.state),) if err.url else ()
                failures.append(RowFailure(rid, ridx, "audio", str(err), unavailable))
            except AudioError as err:
                failures.append(RowFailure(rid, ridx, "audio", str(err)))
            except Exception as err:  # unexpected: quarantined under its own stage so it stays visible
                failures.append(RowFailure(rid, ridx, "unexpected", f"{type(err).__name__}: {err}"))
