"""Voice-cloning inference that feeds the model exactly what training fed it, up to the trained turn.

Why a module of its own: a fine-tune is only useful if inference conditions the model the way training did. Here
the prompt is built from the training layout (``chatml``), tokenized by upstream's
``prepare_chatml_sample`` (as ``SamplePreprocessor`` does), the reference is loaded by ``audio_io.load_audio`` and
encoded by the same audio tokenizer call, and the batch comes from the training collator (``build_collator``). Only
two things differ from a training batch, both as upstream's ``HiggsAudioServeEngine`` does them:

* the prompt stops after the target turn's ``<|start_header_id|>assistant<|end_header_id|>\\n\\n<|audio_out_bos|>``
  (the ``<|audio_out_bos|>`` forces audio rather than text), i.e. it is the training sample's ``input_ids`` cut
  right before ``<|AUDIO_OUT|>`` -- tests/unit/test_export_generate.py checks this token for token;
* the collator does not round the length up to 8: right-padding a prompt would put pad tokens between the prompt
  and the first generated token.

Decoding is upstream's ``HiggsAudioModel.generate`` with a dynamic KV cache (the serve engine's static caches and
CUDA graphs only pay off on CUDA). Greedy decoding (``temperature == 0``) also switches off repetition-aware
sampling (RAS): RAS re-draws a token by multinomial sampling whenever it repeats inside its window, which would make
"greedy" output random.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from higgs_train.chatml import (
    AUDIO_OUT_BOS,
    GENERATION_PREFIX,
    cloning_context,
    context_of,
    target_audio_url,
    text_of,
)
from higgs_train.data.audio_io import AudioLimits

logger = logging.getLogger(__name__)

# Upstream serve engine's stop strings plus the end of the audio turn: the prompt asks for one audio turn, so the
# first ``<|audio_eos|>`` (which upstream forces once the delayed stream has ended) ends generation. Otherwise a
# model that has not learnt to close its turn would spend up to max_new_tokens steps on text nobody uses.
STOP_STRINGS = ("<|end_of_text|>", "<|eot_id|>", "<|audio_eos|>")
AUDIO_IN_ROLES = ("user", "system")


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding knobs. ``temperature == 0`` means greedy (and RAS off); ``seed`` makes sampling repeatable."""

    temperature: float = 0.7
    top_k: int | None = 50
    top_p: float = 0.95
    max_new_tokens: int = 1024  # one step per audio frame (25 per second) plus the delay tail and a few text tokens
    seed: int | None = None
    ras_win_len: int | None = 7
    ras_win_max_num_repeat: int = 2
    # The audio stream may not end before this many complete frames (5 = 0.2 s at 25 frames/s): no utterance is
    # shorter, and an under-trained adapter that ends the stream at once still yields a clip the audio check can
    # measure (it is then reported as too short) instead of nothing. 0 leaves the end entirely to the model.
    min_audio_frames: int = 5

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenerationPrompt:
    """One prompt: a ``ChatMLDatasetSample`` ending in ``<|audio_out_bos|>``, plus the target codes if known."""

    sample_id: str
    sample: Any  # boson_multimodal ChatMLDatasetSample, label_ids None
    target_codes: np.ndarray | None = None  # (num_codebooks, T) of the target turn, for code agreement
    text: str = ""  # the target text (the last user turn), what the audio check measures the clip against


@dataclass
class GenerationResult:
    """Generated codes (``(num_codebooks, T)``, BOS/EOS stripped, delay reverted), waveform and diagnostics."""

    sample_id: str
    codes: np.ndarray
    waveform: np.ndarray | None
    sampling_rate: int
    finished: bool  # the audio stream ended with EOS (False: max_new_tokens cut it)
    text: str  # generated text tokens (normally just "<|audio_eos|>", where generation stops)
    code_agreement: float | None = None  # share of target code positions reproduced exactly
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationStack:
    """Everything generation needs, loaded once: model (LoRA applied or merged), tokenizers and collator."""

    model: Any
    tokenizer: Any
    audio_tokenizer: Any
    collator: Any
    model_config: Any
    whisper_processor: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# ----------------------------------------------------------------------------------------------- loading
def load_generation_stack(
    model_path: str,
    audio_tokenizer_path: str = "embedded",
    adapter: str | Path | None = None,
    tokenizer_path: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_base_mismatch: bool = False,
) -> GenerationStack:
    """Load a base or merged model (plus an optional adapter, checked by ``adapter.load_adapter``).

    The text tokenizer defaults to the model directory's (merged exports carry it alongside the weights).
    """
    from higgs_train.adapter import load_adapter
    from higgs_train.models import (
        load_audio_tokenizer,
        load_model,
        load_text_tokenizer,
        load_whisper_processor,
        resolve_paths,
    )

    paths = resolve_paths(model_path, audio_tokenizer_path, tokenizer_path or None)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = load_model(paths.model_path, device=device, dtype=dtype)
    if adapter:
        model = load_adapter(model, adapter, base_model_path=model_path, allow_base_mismatch=allow_base_mismatch)
    model.eval()
    config = model.config
    whisper = load_whisper_processor(paths.model_path, config)
    return GenerationStack(
        model=model,
        tokenizer=load_text_tokenizer(paths.tokenizer_path),
        audio_tokenizer=load_audio_tokenizer(paths.audio_tokenizer_path, device=device),
        collator=generation_collator(config, whisper),
        model_config=config,
        whisper_processor=whisper,
    )


def generation_collator(model_config: Any, whisper_processor: Any = None):
    """The training collator (same flags from the same config) without rounding the prompt length up."""
    from higgs_train.data.collate import build_collator

    return build_collator(model_config, whisper_processor, round_to=1)


# ----------------------------------------------------------------------------------------------- prompts
def build_prompt(
    context: dict[str, Any],
    tokenizer: Any,
    audio_tokenizer: Any,
    audio_base_path: str | Path,
    *,
    whisper: bool = False,
    limits: AudioLimits | None = None,
    target_codes: np.ndarray | None = None,
) -> GenerationPrompt:
    """Tokenize ``context`` (see ``context_of``) and encode its audio as preprocessing does; append the prefix."""
    import contextlib
    import io

    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

    from higgs_train.data.audio_io import load_audio
    from higgs_train.data.sample_tokens import WHISPER_SAMPLE_RATE, audio_contents_in_order

    chatml = {"messages": copy.deepcopy(context["messages"]), "start_index": None, "speaker": context.get("speaker")}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # upstream prints and returns Nones on a malformed sample
        input_ids, _, _, _ = prepare_chatml_sample(chatml, tokenizer)
    if input_ids is None:
        raise ValueError(f"prompt {context.get('id')!r} cannot be tokenized: {printed.getvalue().strip()[:300]}")
    input_ids = list(input_ids) + tokenizer.encode(GENERATION_PREFIX + AUDIO_OUT_BOS, add_special_tokens=False)

    limits = limits or AudioLimits()
    rate = int(audio_tokenizer.sampling_rate)
    codes, waves = [], []
    for _, role, content in audio_contents_in_order(context["messages"]):
        url = content.get("audio_url")
        if not url:
            raise ValueError(f"prompt {context.get('id')!r}: audio contents need an audio_url")
        wave = load_audio(url, audio_base_path, rate, limits)
        with torch.inference_mode():
            encoded = audio_tokenizer.encode(wave, rate)
        # Training stores codes as int16 (token cache); the round trip is exact for codebooks <= 32767 entries.
        codes.append(torch.as_tensor(np.asarray(encoded.cpu()), dtype=torch.long))
        if whisper and role in AUDIO_IN_ROLES:
            waves.append(torch.from_numpy(load_audio(url, audio_base_path, WHISPER_SAMPLE_RATE, limits)))
    num_codebooks = int(audio_tokenizer.num_codebooks)
    starts = np.concatenate([[0], np.cumsum([c.shape[1] for c in codes])[:-1]]) if codes else np.zeros(0)
    wave_starts = np.concatenate([[0], np.cumsum([len(w) for w in waves])[:-1]]) if waves else np.zeros(0)
    sample = ChatMLDatasetSample(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        label_ids=None,
        audio_ids_concat=torch.cat(codes, dim=1) if codes else torch.zeros((num_codebooks, 0), dtype=torch.long),
        audio_ids_start=torch.as_tensor(starts, dtype=torch.long),
        audio_waveforms_concat=torch.cat(waves) if waves else torch.zeros(0),
        audio_waveforms_start=torch.as_tensor(wave_starts, dtype=torch.long),
        audio_sample_rate=torch.full((len(waves),), WHISPER_SAMPLE_RATE, dtype=torch.long),
        audio_speaker_indices=torch.full((len(codes),), -1, dtype=torch.long),
    )
    text = text_of(context["messages"][-1].get("content")) if context["messages"] else ""
    return GenerationPrompt(str(context.get("id", "prompt")), sample, target_codes, text)


def prompt_from_record(record: dict[str, Any], audio_out_bos_id: int) -> GenerationPrompt:
    """A preprocessed training record cut before its last ``<|AUDIO_OUT|>``: the prompt training conditioned on.

    The cut keeps ``<|audio_out_bos|>`` and drops the target's codes, which become ``target_codes``.
    Used for samples during training (validation records are already encoded) and to test ``build_prompt``.
    """
    from higgs_train.data.record_codec import record_to_sample

    sample = record_to_sample(record)
    ids = sample.input_ids
    bos_positions = (ids == audio_out_bos_id).nonzero().flatten()
    is_out = np.asarray(record["audio_is_out"], dtype=bool)
    if len(bos_positions) == 0 or len(is_out) == 0 or not is_out[-1]:
        raise ValueError(f"record {record.get('id')!r} does not end in an assistant audio turn")
    cut = int(bos_positions[-1]) + 1
    last_start = int(sample.audio_ids_start[-1])
    target = sample.audio_ids_concat[:, last_start:].numpy().copy()
    return GenerationPrompt(
        str(record.get("id", "record")),
        replace(
            sample,
            input_ids=ids[:cut].clone(),
            label_ids=None,
            audio_ids_concat=sample.audio_ids_concat[:, :last_start].clone(),
            audio_ids_start=sample.audio_ids_start[:-1].clone(),
            audio_speaker_indices=sample.audio_speaker_indices[:-1].clone(),
        ),
        target,
    )


# ----------------------------------------------------------------------------------------------- decoding
def generation_inputs(prompt: GenerationPrompt, collator: Any, device: torch.device) -> dict[str, Any]:
    """The collated prompt as ``HiggsAudioModel.generate`` keyword arguments (labels and reward dropped)."""
    batch = collator([prompt.sample])
    inputs = {k: v for k, v in asdict(batch).items() if k not in ("label_ids", "label_audio_ids", "reward")}
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


class TextTokenMask:
    """Logits processor: the text head never emits an id that sampling must not pick.

    Two kinds of ids get ``-inf``:

    * ids beyond the tokenizer: checkpoints pad the text embedding and LM head (the tiny model rounds its
      vocabulary up to a multiple of 64) and padding ids have no token. Upstream ``_sample`` raises "Next generated
      token ... greater than the tokenizer's vocabulary size" when one is picked (an untrained head often does);
    * the audio placeholders ``<|AUDIO|>`` / ``<|AUDIO_OUT|>``: only the model inserts them (in audio mode, with
      codes). One sampled as text has no codes behind it, and upstream's embedding merge then fails on the next
      step ("index 0 is out of bounds").

    ``HiggsAudioModel.generate`` hands one ``logits_processor`` list to both heads: text scores come with
    ``input_ids``, audio scores (``(num_codebooks, codebook_size + 2)``) with ``input_ids=None`` and are left
    alone. Transformers runs custom processors before temperature / top-k / top-p, so the warpers only ever see
    tokens that may be generated.
    """

    def __init__(self, vocab_size: int, placeholder_ids: Sequence[int] = ()) -> None:
        self.vocab_size = int(vocab_size)
        self.placeholder_ids = sorted({int(i) for i in placeholder_ids})

    @classmethod
    def for_stack(cls, tokenizer: Any, model_config: Any) -> TextTokenMask:
        return cls(len(tokenizer), (model_config.audio_in_token_idx, model_config.audio_out_token_idx))

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        if input_ids is None:
            return scores
        banned = torch.arange(scores.shape[-1], device=scores.device) >= self.vocab_size
        banned[[i for i in self.placeholder_ids if i < scores.shape[-1]]] = True
        return scores.masked_fill(banned, float("-inf"))


class AudioEndFloor:
    """Keeps the audio stream open until ``min_frames`` frames are complete.

    Upstream ends the stream as soon as any codebook draws ``audio_stream_eos_id`` and fills the rest of the delay
    tail itself, so a single early EOS yields a 0-frame clip. This processor sees the audio scores (upstream passes
    them with ``input_ids=None``) and, for the first ``min_frames + delay`` audio steps, bans the stream's EOS and
    BOS ids (BOS is only ever placed by upstream's delay pattern, never drawn). Text scores pass untouched. One
    instance per ``generate`` call: it counts that call's audio steps.
    """

    def __init__(self, min_frames: int, num_codebooks: int, stream_ids: Sequence[int], use_delay_pattern: bool) -> None:
        delay = num_codebooks - 1 if use_delay_pattern else 0
        self.remaining = int(min_frames) + delay if min_frames > 0 else 0
        self.banned = sorted({int(i) for i in stream_ids})

    @classmethod
    def for_stack(cls, model_config: Any, min_frames: int) -> AudioEndFloor:
        return cls(
            min_frames,
            int(model_config.audio_num_codebooks),
            (model_config.audio_stream_bos_id, model_config.audio_stream_eos_id),
            bool(model_config.use_delay_pattern),
        )

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        if input_ids is not None or self.remaining <= 0:
            return scores
        self.remaining -= 1
        banned = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        banned[[i for i in self.banned if i < scores.shape[-1]]] = True
        return scores.masked_fill(banned, float("-inf"))


def sampling_kwargs(settings: SamplingSettings) -> dict[str, Any]:
    """``generate`` arguments for ``settings``; greedy passes no sampling knobs (transformers warns on them)."""
    if settings.greedy:
        return {"do_sample": False, "ras_win_len": None}
    return {
        "do_sample": True,
        "temperature": settings.temperature,
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "ras_win_len": settings.ras_win_len if settings.ras_win_len and settings.ras_win_len > 0 else None,
        "ras_win_max_num_repeat": settings.ras_win_max_num_repeat,
    }


def codes_from_delayed(
    audio_sequence: torch.Tensor, codebook_size: int, use_delay_pattern: bool = True
) -> tuple[np.ndarray, bool]:
    """Generated ``(K, L)`` delayed stream -> ``(K, T)`` codes without the stream BOS and EOS, and whether a
    non-code id (normally the EOS) ended the stream.

    Upstream's serve engine reverts the delay and drops the first and last column. That is right only when the
    stream ended with EOS; a stream cut by ``max_new_tokens`` would lose a real frame. Here every column from the
    first that holds a non-code id (EOS, or an out-of-place BOS) on any codebook is dropped instead.
    """
    from boson_multimodal.model.higgs_audio.utils import revert_delay_pattern

    data = audio_sequence.detach().cpu().long()
    if use_delay_pattern:
        if data.shape[1] < data.shape[0]:
            return np.zeros((data.shape[0], 0), dtype=np.int64), False
        data = revert_delay_pattern(data)
    data = data[:, 1:]  # the stream BOS column
    special = (data >= codebook_size).any(dim=0).nonzero().flatten()
    finished = len(special) > 0
    end = int(special[0]) if finished else data.shape[1]
    return data[:, :end].numpy(), finished


@torch.no_grad()
def generate_codes(
    stack: GenerationStack, prompt: GenerationPrompt, settings: SamplingSettings
) -> tuple[np.ndarray, bool, str]:
    """Run upstream ``generate`` on one prompt; returns (codes, finished, generated text)."""
    from transformers import LogitsProcessorList

    model = _generation_model(stack.model)
    was_training = model.training
    model.eval()
    inputs = generation_inputs(prompt, stack.collator, stack.device)
    try:
        sequences, audio_sequences = model.generate(
            **inputs,
            max_new_tokens=settings.max_new_tokens,
            use_cache=True,
            stop_strings=list(STOP_STRINGS),
            tokenizer=stack.tokenizer,
            logits_processor=LogitsProcessorList(
                [
                    TextTokenMask.for_stack(stack.tokenizer, stack.model_config),
                    AudioEndFloor.for_stack(stack.model_config, settings.min_audio_frames),
                ]
            ),
            seed=settings.seed,
            **sampling_kwargs(settings),
        )
    finally:
        model.train(was_training)
    if not audio_sequences:
        return np.zeros((stack.model_config.audio_num_codebooks, 0), dtype=np.int64), False, ""
    codes, finished = codes_from_delayed(
        audio_sequences[0], stack.model_config.audio_codebook_size, stack.model_config.use_delay_pattern
    )
    new_tokens = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return codes, finished, stack.tokenizer.decode(new_tokens)


def _generation_model(model: Any) -> Any:
    """The ``HiggsAudioModel`` under DDP / PeftModel wrappers; injected LoRA layers stay active on it."""
    if hasattr(model, "module") and not hasattr(model, "peft_config"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def decode_codes(audio_tokenizer: Any, codes: np.ndarray) -> np.ndarray:
    """Codes ``(K, T)`` -> mono float32 waveform at the audio tokenizer's rate (24 kHz for Higgs)."""
    if codes.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        wave = audio_tokenizer.decode(torch.as_tensor(codes, dtype=torch.long).unsqueeze(0))
    return np.asarray(wave, dtype=np.float32)[0, 0]


def code_agreement(generated: np.ndarray, target: np.ndarray) -> float:
    """Share of target code positions (codebook x frame) generated exactly; missing or extra frames count wrong."""
    frames = max(generated.shape[1], target.shape[1])
    if frames == 0:
        return 1.0
    common = min(generated.shape[1], target.shape[1])
    same = int((generated[:, :common] == target[:, :common]).sum())
    return same / (target.shape[0] * frames)


def synthesize(
    stack: GenerationStack, prompt: GenerationPrompt, settings: SamplingSettings, decode: bool = True
) -> GenerationResult:
    """Generate one prompt's audio codes and (optionally) decode them to a waveform."""
    codes, finished, text = generate_codes(stack, prompt, settings)
    if not finished:
        logger.warning("%s: audio did not end within max_new_tokens=%d", prompt.sample_id, settings.max_new_tokens)
    wave = decode_codes(stack.audio_tokenizer, codes) if decode else None
    agreement = code_agreement(codes, prompt.target_codes) if prompt.target_codes is not None else None
    return GenerationResult(
        prompt.sample_id, codes, wave, int(stack.audio_tokenizer.sampling_rate), finished, text, agreement
    )


def write_wav(path: str | Path, waveform: np.ndarray, sampling_rate: int) -> Path:
    """16-bit PCM WAV (what the training data loader reads back without surprises)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(waveform, -1.0, 1.0), sampling_rate, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------------------------- high level
def prompt_for_texts(
    stack: GenerationStack,
    ref_audio: str | Path,
    ref_text: str,
    text: str,
    audio_base_path: str | Path | None = None,
    system_prompt: str | None = None,
) -> GenerationPrompt:
    """The prompt for one (reference clip, its transcript, target text); the clip may lie anywhere by default."""
    ref = Path(ref_audio).resolve()
    base = Path(audio_base_path).resolve() if audio_base_path else ref.parent
    context = cloning_context(ref_text, str(ref), text, system_prompt=system_prompt)
    return build_prompt(
        context, stack.tokenizer, stack.audio_tokenizer, base, whisper=bool(stack.model_config.encode_whisper_embed)
    )


def prompts_for_manifest(
    stack: GenerationStack, manifest: str | Path, audio_base_path: str | Path | None = None, with_targets: bool = True
) -> list[GenerationPrompt]:
    """One prompt per manifest row: the row's own turns before ``start_index`` (its reference and target text).

    When the row's target audio exists and ``with_targets``, its codes become ``target_codes`` (for agreement).
    """
    from higgs_train.data.audio_io import AudioError, load_audio
    from higgs_train.data.manifest import load_manifest

    manifest = Path(manifest)
    base = Path(audio_base_path).resolve() if audio_base_path else manifest.resolve().parent
    prompts = []
    for row in load_manifest(manifest):
        if row.get("parse_error"):
            raise ValueError(f"manifest row {row.get('row_index')} cannot be read: {row['parse_error']}")
        prompt = build_prompt(
            context_of(row),
            stack.tokenizer,
            stack.audio_tokenizer,
            base,
            whisper=bool(stack.model_config.encode_whisper_embed),
        )
        target = target_audio_url(row)
        if with_targets and target:
            try:
                rate = int(stack.audio_tokenizer.sampling_rate)
                with torch.inference_mode():
                    codes = stack.audio_tokenizer.encode(load_audio(target, base, rate), rate)
                prompt.target_codes = np.asarray(codes.cpu(), dtype=np.int64)
            except AudioError as err:
                logger.info("%s: no target codes (%s)", prompt.sample_id, err)
        prompts.append(prompt)
    return prompts


NO_AUDIO = (
    "no audio: the model ended the audio stream before its first complete frame (the delay pattern needs "
    "{codebooks} steps per frame); raise --max_new_tokens or --min_audio_frames, or check the adapter"
)


def no_audio_reason(stack: GenerationStack, result: GenerationResult) -> str | None:
    """Why ``result`` holds no audio, or None when it has frames. A 0-frame clip is a failure, never an empty WAV."""
    if result.codes.shape[1] > 0:
        return None
    return NO_AUDIO.format(codebooks=int(stack.model_config.audio_num_codebooks))


def generate_to_files(
    stack: GenerationStack, prompts: Sequence[GenerationPrompt], output_dir: str | Path, settings: SamplingSettings
) -> list[tuple[Path | None, GenerationResult]]:
    """Generate every prompt and write ``<output_dir>/<sample id>.wav``; a clip without audio gets no file (None)."""
    out: list[tuple[Path | None, GenerationResult]] = []
    for prompt in prompts:
        result = synthesize(stack, prompt, settings)
        path = None
        if no_audio_reason(stack, result) is None:
            path = write_wav(
                Path(output_dir) / f"{_safe_name(prompt.sample_id)}.wav", result.waveform, result.sampling_rate
            )
        out.append((path, result))
    return out


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "sample"


# ----------------------------------------------------------------------------------------------- training hook
@dataclass
class ValidationSamples:
    """What one round of validation samples gave: the WAVs written and the rows that failed (id, error)."""

    written: list[tuple[Path, float | None]] = field(default_factory=list)  # (wav path, code agreement)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """``val/sample_failures`` always (so a failing round shows in MLflow), the mean agreement when known."""
        out = {"val/sample_failures": float(len(self.failed))}
        agreements = [a for _, a in self.written if a is not None]
        if agreements:
            out["val/sample_code_agreement"] = sum(agreements) / len(agreements)
        return out


def generate_validation_samples(
    model: Any,
    tokenizer: Any,
    audio_tokenizer: Any,
    model_config: Any,
    records: Sequence[dict[str, Any]],
    output_dir: str | Path,
    settings: SamplingSettings | None = None,
    whisper_processor: Any = None,
    log_artifact: Any = None,
) -> ValidationSamples:
    """Greedy samples for a few validation records during training.

    ``model`` is the training model (PeftModel, possibly DDP-wrapped); it is put in eval mode for the call and
    restored. Code agreement compares generated codes with the record's target codes position by position, a
    stricter signal than teacher-forced accuracy because errors compound. ``log_artifact(path)`` (e.g.
    ``mlflow.log_artifact``) is called for each WAV when given.

    Samples are evidence for a human, not part of training: a row whose generation fails is logged as a warning
    and listed in ``failed``, and the other rows still run.
    """
    settings = settings or SamplingSettings(temperature=0.0, max_new_tokens=512)
    stack = GenerationStack(
        model=model,
        tokenizer=tokenizer,
        audio_tokenizer=audio_tokenizer,
        collator=generation_collator(model_config, whisper_processor),
        model_config=model_config,
        whisper_processor=whisper_processor,
    )
    bos = int(model_config.audio_out_bos_token_id)
    out = ValidationSamples()
    for record in records:
        sample_id = str(record.get("id", "record"))
        try:
            result = synthesize(stack, prompt_from_record(record, bos), settings)
            path = write_wav(
                Path(output_dir) / f"{_safe_name(result.sample_id)}.wav", result.waveform, result.sampling_rate
            )
            if log_artifact is not None:
                log_artifact(str(path))
        except Exception as err:  # noqa: BLE001 -- any failure here must not end the training job
            logger.warning("validation sample %s failed: %s: %s", sample_id, type(err).__name__, err, exc_info=True)
            out.failed.append((sample_id, f"{type(err).__name__}: {err}"))
            continue
        out.written.append((path, result.code_agreement))
    return out
