"""Voice-cloning inference that feeds the model exactly what training fed it, up to the trained turn.

Why a module of its own: a fine-tune is only useful if inference conditions the model the way training did. The
prompt is built as a training sample is (``generation_prompt``: the training layout, upstream's tokenization, the
same audio encoding), and the batch comes from the training collator (``build_collator``). Only two things differ
from a training batch, both as upstream's ``HiggsAudioServeEngine`` does them:

* the prompt stops after the target turn's ``<|audio_out_bos|>``, right before ``<|AUDIO_OUT|>``
  (``generation_prompt`` says why);
* the collator does not round the length up to 8: right-padding a prompt would put pad tokens between the prompt
  and the first generated token.

This module loads the stack, decodes, writes WAVs and runs the samples of a training round; the prompt is
``generation_prompt``'s, and the rules put around upstream's ``generate`` (stop strings, logits processors,
reading the delayed stream) are ``decoding_rules``'.

Decoding is upstream's ``HiggsAudioModel.generate`` with a dynamic KV cache (the serve engine's static caches and
CUDA graphs only pay off on CUDA). Greedy decoding (``temperature == 0``) also switches off repetition-aware
sampling (RAS): RAS re-draws a token by multinomial sampling whenever it repeats inside its window, which would make
"greedy" output random.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from higgs_train.adapter import load_adapter
from higgs_train.chatml import cloning_context, context_of, target_audio_url
from higgs_train.data.audio_io import load_audio
from higgs_train.data.collate import build_collator
from higgs_train.data.manifest import load_manifest
from higgs_train.data.reasons import AudioError
from higgs_train.decoding_rules import STOP_STRINGS, AudioEndFloor, TextTokenMask, codes_from_delayed
from higgs_train.generation_prompt import GenerationPrompt, build_prompt, prompt_from_record
from higgs_train.model_loading import (
    load_audio_tokenizer,
    load_model,
    load_text_tokenizer,
    load_whisper_processor,
    resolve_paths,
)

logger = logging.getLogger(__name__)


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
    return build_collator(model_config, whisper_processor, round_to=1)


# ----------------------------------------------------------------------------------------------- prompts
# ----------------------------------------------------------------------------------------------- decoding
def generation_inputs(prompt: GenerationPrompt, collator: Any, device: torch.device) -> dict[str, Any]:
    """The collated prompt as ``HiggsAudioModel.generate`` keyword arguments (labels and reward dropped)."""
    batch = collator([prompt.sample])
    inputs = {k: v for k, v in asdict(batch).items() if k not in ("label_ids", "label_audio_ids", "reward")}
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


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
