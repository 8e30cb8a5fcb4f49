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
store is given (``token_cache.AudioCodeStore``), at most once across processes, epochs and reruns. Encoder calls are
counted process-wide (``process_encoder_stats``) and per batch (``BatchResult.stats``), which the pipeline
aggregates into the cache's ``stats.json``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from higgs_train.data.audio_io import (
    AudioError,
    AudioLimits,
    AudioUnavailable,
    audio_header_seconds,
    display_name,
    load_audio,
    resolve_audio_path,
    unreadable_reason,
)
from higgs_train.data.reasons import Reason

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = "2"  # bump whenever a record's content for the same inputs would change
WHISPER_SAMPLE_RATE = 16_000  # Whisper's feature extractor rate; upstream resamples to it anyway
WHISPER_EMBEDS_PER_SECOND = 25  # 3000 mel frames / 30 s, pooled by 4 in the audio tower (upstream constant)
IGNORE_INDEX = -100
AUDIO_IN_TOKEN = "<|AUDIO|>"
AUDIO_OUT_TOKEN = "<|AUDIO_OUT|>"


class PreprocessError(ValueError):
    """A row that cannot become a training record; ``stage`` and ``reason`` go to the quarantine."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class RowFailure:
    """One quarantined row: which row, which stage failed and why."""

    id: str
    row_index: int
    stage: str
    reason: str
    # (audio_url, state) of files that were unavailable (file-system state, see audio_io.AudioUnavailable): the
    # token cache keys the entry by this state so a restored file is preprocessed again on the next run.
    unavailable: tuple[tuple[str, str], ...] = ()


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


@dataclass
class BatchResult:
    """Output of ``SamplePreprocessor.process_batch``: good records, quarantined rows and the batch's cost."""

    records: list[dict[str, Any]]
    failures: list[RowFailure]
    stats: dict[str, float] = field(default_factory=dict)


class CodeStore(Protocol):
    """What the preprocessor needs from a persistent code store (``token_cache.AudioCodeStore`` implements it)."""

    def get(self, sha256: str) -> EncodedAudio | None: ...

    def put(self, sha256: str, encoded: EncodedAudio) -> None: ...

    def lock(self, sha256: str) -> contextlib.AbstractContextManager: ...


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything besides the inputs and the tokenizers that decides a record's content (part of the cache key)."""

    limits: AudioLimits = field(default_factory=AudioLimits)
    whisper: bool = False
    encode_audio_in_tokens: bool = True
    whisper_sample_rate: int = WHISPER_SAMPLE_RATE
    max_tokens_per_row: int = 0  # 0: no limit (the job passes the model's positions by default)

    def identity(self) -> dict[str, Any]:
        return {"version": PREPROCESS_VERSION, **asdict(self)}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: the content identity of an audio file (see token_cache for why full hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def estimate_num_tokens(
    num_text_tokens: int,
    frames: Iterable[int],
    is_out: Iterable[bool],
    num_codebooks: int,
    whisper_seconds: Iterable[float] = (),
    encode_audio_in_tokens: bool = True,
) -> int:
    """Length of the merged sequence the decoder processes for one sample (before the model's round-to-8 pad).

    The model replaces each ``<|AUDIO|>``/``<|AUDIO_OUT|>`` placeholder by that clip's code columns after the
    collator adds a stream BOS and EOS column (+2) and the delay pattern shifts codebook ``k`` right by ``k``
    (+num_codebooks-1): ``T + num_codebooks + 1`` positions per segment. Audio-in codes are merged only when the
    model encodes audio-in tokens; Whisper embeddings add about 25 positions per second of audio-in. This is what
    the batcher budgets, since attention/MLP cost follows the merged length, not the text length.
    """
    total = num_text_tokens
    for t, out in zip(frames, is_out, strict=True):
        total -= 1
        if out or encode_audio_in_tokens:
            total += t + num_codebooks + 1
    for sec in whisper_seconds:
        total += math.ceil(WHISPER_EMBEDS_PER_SECOND * sec)
    return int(total)


def row_to_chatml(row: dict[str, Any]) -> dict[str, Any]:
    """A fresh ChatML dict from a canonical row (``messages`` or ``messages_json``); upstream mutates its input.

    Values are passed through unchecked (a list ``misc``, a string ``start_index``): the validator's
    ``structural_reason`` judges them next, so a job rejects exactly what ``--validate_data_only`` rejects.
    """
    if row.get("parse_error"):  # canonical manifests keep unreadable rows with the reason, for us to quarantine
        raise PreprocessError("parse", str(row["parse_error"]))
    fields = {}
    for name in ("messages", "misc"):
        value = row.get(name)
        raw = row.get(f"{name}_json")
        if value is None and raw is not None:
            if not isinstance(raw, str):
                raise PreprocessError("parse", Reason.MESSAGES_JSON_TYPE.format(type=type(raw).__name__))
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as err:
                raise PreprocessError("parse", Reason.MESSAGES_NOT_JSON) from err
        fields[name] = copy.deepcopy(value)
    start = row.get("start_index")
    if isinstance(start, float) and math.isnan(start):
        start = None
    elif isinstance(start, np.integer):  # Arrow/pandas hand back numpy ints; dacite(check_types=True) wants int
        start = int(start)
    speaker = row.get("speaker")
    if isinstance(speaker, float) and math.isnan(speaker):
        speaker = None
    return {"messages": fields["messages"], "start_index": start, "speaker": speaker, "misc": fields["misc"]}


def tokenize_chatml(sample: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int], list[Any], str | None]:
    """Upstream ``prepare_chatml_sample`` (on a copy), raising ``PreprocessError`` with its message on failure."""
    from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

    printed = io.StringIO()  # upstream prints its exception and returns Nones; keep the message as the reason
    with contextlib.redirect_stdout(printed):
        input_ids, label_ids, audio_contents, speaker = prepare_chatml_sample(copy.deepcopy(sample), tokenizer)
    if input_ids is None:
        first = next((line for line in printed.getvalue().splitlines() if line.strip()), "unknown error")
        raise PreprocessError("tokenize", Reason.TOKENIZE_FAILED.format(error=first[:300]))
    return input_ids, label_ids, audio_contents, speaker


def _optional_int(value: Any) -> int | None:
    # Arrow/pandas hand back numpy ints or NaN; upstream validates with dacite(check_types=True), which wants int.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def audio_contents_in_order(messages: list[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(message index, role, content) of every audio content, in the order upstream emits placeholders."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        items = content if isinstance(content, list) else [content]
        for item in items:
            if isinstance(item, dict) and item.get("type") == "audio":
                out.append((i, message.get("role"), item))
    return out


def row_audio_urls(row: dict[str, Any]) -> list[str]:
    """The audio URLs of a row in the order ``SamplePreprocessor`` encodes them, up to the first content it would
    refuse; [] for a row it cannot read. Never raises: the row's own pass reports what is wrong with it."""
    from higgs_train.data.row_length import chatml_sample

    try:
        layout = audio_contents_in_order(chatml_sample(row_to_chatml(row))["messages"])
    except Exception:
        return []
    urls = []
    for _, _, content in layout:
        try:
            urls.append(SamplePreprocessor._check_content(content))
        except (PreprocessError, AudioError):
            break
    return urls


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
    length is batched afterwards only if it took one. Whether batching pays depends on the device: on CPU, stacking
    long clips measured slower than one by one (``benchmarks/preprocess_throughput.py``), so CPU actors default to
    ``max_batch`` 1; on a GPU it fills the device.
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
        by_length: dict[int, list[str]] = {}
        for key, wave in waves.items():
            by_length.setdefault(len(wave), []).append(key)
        out: dict[str, EncodedAudio] = {}
        for length, keys in by_length.items():
            pending = list(keys)
            while pending:
                if self.max_batch == 1 or len(pending) == 1 or not self._single_pass.get(length, False):
                    key = pending.pop(0)
                    with contextlib.suppress(PreprocessError):
                        out[key] = self._solo(waves[key], urls[key])
                    continue
                group, pending = pending[: self.max_batch], pending[self.max_batch :]
                try:
                    out.update(
                        zip(group, self._stacked([waves[k] for k in group], [urls[k] for k in group]), strict=True)
                    )
                except Exception:  # a failed stack is retried clip by clip: each clip's own error is the reason
                    for key in group:
                        with contextlib.suppress(PreprocessError):
                            out[key] = self._solo(waves[key], urls[key])
        return out

    def _count_pass(self, *_: Any) -> None:
        self._passes += 1

    def _solo(self, wave: np.ndarray, url: str) -> EncodedAudio:
        import torch

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
        from higgs_train.data.row_length import RowLengthLimit, chatml_sample

        sample = row_to_chatml(row)
        self._check_structure(sample)
        sample = chatml_sample(sample)
        layout = audio_contents_in_order(sample["messages"])
        encoded: list[EncodedAudio] = []
        header_seconds: list[float] = []
        waves: list[np.ndarray] = []
        for msg_index, role, content in layout:
            try:
                url = self._check_content(content)
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
        from higgs_train.data.validation import structural_reason, text_reason

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

    @staticmethod
    def _check_content(content: dict[str, Any]) -> str:
        # Slicing and inline audio would need the slice/bytes in the code-store key; refuse rather than guess.
        if content.get("offset") is not None or content.get("duration") is not None:
            raise PreprocessError("audio", Reason.AUDIO_SLICING_UNSUPPORTED)
        url = content.get("audio_url")
        if not url:
            if content.get("raw_audio"):
                raise PreprocessError("audio", Reason.RAW_AUDIO_UNSUPPORTED)
            raise AudioError(Reason.AUDIO_URL_EMPTY)
        return str(url)

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

    def _encode_ahead(self, rows: list[dict[str, Any]], decoded: dict[str, np.ndarray]) -> None:
        """Encode the clips these rows need that no cache holds, together (``ClipEncoder.encode_many``).

        Only what succeeds is kept: a clip that cannot be read, decoded or encoded is left to its row's own pass,
        which raises the error with the reason the row is quarantined for. Code-store locks are taken in sorted
        order, so two actors sharing clips cannot deadlock, and each clip is still encoded by one actor only.
        """
        wanted: dict[str, str] = {}  # sha -> url
        for row in rows:
            for url in self._clips_of(row):
                try:
                    path = resolve_audio_path(url, self.audio_base_path)
                    sha = self._sha_of[path] = self._sha(path)
                except (OSError, AudioError):
                    break
                if sha not in self._memo and sha not in wanted:
                    wanted[sha] = url
        if not wanted:
            return
        with contextlib.ExitStack() as locks:
            if self.code_store is not None:
                for sha in sorted(wanted):
                    locks.enter_context(self.code_store.lock(sha))
                for sha in list(wanted):
                    stored = self.code_store.get(sha)
                    if stored is not None:
                        self._ahead[sha] = stored
                        del wanted[sha]
            waves: dict[str, np.ndarray] = {}
            for sha, url in wanted.items():
                wave = decoded.get(sha)
                if wave is None:
                    try:
                        wave = load_audio(url, self.audio_base_path, self.sampling_rate, self.limits)
                    except AudioError:
                        continue
                waves[sha] = wave
            for sha, enc in self.clip_encoder.encode_many(waves, wanted).items():
                self._ahead[sha] = enc
                if self.code_store is not None:
                    self.code_store.put(sha, enc)

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
        waveform at the tokenizer's rate when an earlier stage already decoded it (``decode_clips``), so this
        stage only encodes.
        """
        rows = list(rows)
        before = self.encoder_stats.copy()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        records: list[dict[str, Any]] = []
        failures: list[RowFailure] = []
        try:
            try:
                self._encode_ahead(rows, decoded or {})
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
