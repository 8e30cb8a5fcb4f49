"""Loaders for the model, the text tokenizer, the audio tokenizer and the Whisper feature extractor.

One code path serves the released checkpoints (hub ids or local directories) and the embedded tiny stack
(``EMBEDDED``), so the default job exercises exactly what a real fine-tune runs.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.embedded import ensure_tiny_stack
from higgs_train.embedded.audio_codec import install_semantic_teacher, installed_teacher_marker
from higgs_train.embedded.layout import EMBEDDED, EMBEDDED_WHISPER
from higgs_train.embedded.marker import GENERATED_MARKER

WHISPER_PROCESSOR_FALLBACK = "openai/whisper-large-v3-turbo"  # what upstream's serve engine loads


@dataclass(frozen=True)
class ResolvedPaths:
    """Concrete locations after resolving ``EMBEDDED`` and defaults."""

    model_path: str
    tokenizer_path: str
    audio_tokenizer_path: str


def resolve_paths(model_path: str, audio_tokenizer_path: str, tokenizer_path: str | None = None) -> ResolvedPaths:
    """Map ``embedded`` to the generated stack (building it if needed); the text tokenizer defaults to the model's."""
    stack = None
    if {model_path, audio_tokenizer_path, tokenizer_path} & {EMBEDDED, EMBEDDED_WHISPER}:
        stack = ensure_tiny_stack()
    if model_path == EMBEDDED:
        model_path = str(stack.model_dir)
    elif model_path == EMBEDDED_WHISPER:
        model_path = str(stack.whisper_model_dir)
    if audio_tokenizer_path == EMBEDDED:
        audio_tokenizer_path = str(stack.audio_tokenizer_dir)
    if tokenizer_path in (None, ""):
        tokenizer_path = model_path
    elif tokenizer_path == EMBEDDED:
        tokenizer_path = str(stack.tokenizer_dir)
    return ResolvedPaths(model_path, tokenizer_path, audio_tokenizer_path)


def load_text_tokenizer(path: str):
    """``AutoTokenizer`` for the Higgs chat + audio special tokens; fails loudly if any is missing."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = tokenizer.get_vocab()
    missing = [
        t
        for t in (
            "<|AUDIO|>",
            "<|AUDIO_OUT|>",
            "<|audio_bos|>",
            "<|audio_eos|>",
            "<|audio_out_bos|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        )
        if t not in vocab
    ]
    if missing:
        raise ValueError(f"text tokenizer at {path} lacks Higgs special tokens {missing}")
    return tokenizer


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelFormatError(ValueError):
    """A model directory this project will not load as it is; the message says why and what to do."""


def refuse_pickled_weights(path: str) -> None:
    """Raise ``ModelFormatError`` for a local model directory whose weights are only pickles (``pytorch_model.bin``).

    Unpickling runs code stored in the file, and a base model may come from anywhere; this project loads weights
    from safetensors only (``from_pretrained(use_safetensors=True)`` then never falls back to a pickle either).
    """
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise ModelFormatError(
            f"model {path} holds only pickled weights ({', '.join(pickles[:3])}), which are never loaded here "
            "(unpickling can run code); convert it once, where you trust the file, with "
            "HiggsAudioModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )


def load_model(path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``HiggsAudioModel.from_pretrained`` with SDPA attention set explicitly, from safetensors only.

    Without ``attn_implementation="sdpa"`` plain Llama layers in a mixed stack were measured attending to future
    tokens; tests/unit/test_embedded_stack.py keeps a causality check. Every other flag comes from config.json.
    Pickled weights are refused (``refuse_pickled_weights``).
    """
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    refuse_pickled_weights(path)
    model = HiggsAudioModel.from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa", use_safetensors=True)
    return model.to(device)


def load_audio_tokenizer(path: str, device: str | torch.device = "cpu"):
    """Upstream ``load_higgs_audio_tokenizer`` with an explicit device (its default is "cuda").

    Refuses to pair a released tokenizer with a teacher this project generated (or the reverse), which would
    silently produce meaningless codes.
    """
    from boson_multimodal.audio_processing.higgs_audio_tokenizer import load_higgs_audio_tokenizer

    local = Path(path)
    generated = local / GENERATED_MARKER
    teacher = installed_teacher_marker()
    if local.exists():
        ours = json.loads(generated.read_text()) if generated.exists() else None
        if ours is None and teacher is not None:
            raise RuntimeError(
                f"audio tokenizer {path} is a released one but the cached 'bosonai/hubert_base' teacher was "
                "generated by higgs-train; remove it from the Hugging Face cache and fetch the real teacher"
            )
        if ours is not None and (teacher is None or teacher.get("size") != ours["size"]):
            install_semantic_teacher(size=ours["size"], seed=ours["seed"])
    return load_higgs_audio_tokenizer(str(path), device=str(device))


def audio_tokenizer_config(path: str) -> dict[str, Any]:
    """The audio tokenizer's ``config.json`` (a directory or a hub id, as upstream's loader takes): its shapes and
    rates without loading the model."""
    config_path = Path(path) / "config.json"
    if not Path(path).is_dir():
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(path, "config.json"))
    return json.loads(config_path.read_text())


class DeferredAudioTokenizer:
    """The audio tokenizer, loaded on first use: the rate and shape figures come from its ``config.json`` at once.

    Why: a preprocessing actor whose clips are all in the code store (every rerun with an edited manifest, a
    validation split whose audio the train split encoded) encodes nothing, and the released tokenizer is 200M
    parameters, seconds and gigabytes to load. ``sampling_rate``, ``num_codebooks`` and ``tps`` are upstream's
    properties (``sample_rate``, ``n_q``, ``ceil(sample_rate / prod(ratios))``) read from the same config upstream
    builds the model from; any other attribute loads the model (``load_audio_tokenizer``) and is its own.
    """

    def __init__(self, path: str, device: str | torch.device = "cpu") -> None:
        from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer

        # A key the config leaves out takes upstream's own default, as the model it would build does.
        defaults = {k: v.default for k, v in inspect.signature(HiggsAudioTokenizer).parameters.items()}
        config = {**defaults, **audio_tokenizer_config(path)}
        self.path, self.device = path, str(device)
        self.sampling_rate = int(config["sample_rate"])
        self.num_codebooks = int(config["n_q"])
        self.tps = math.ceil(self.sampling_rate / math.prod(config["ratios"]))
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:
        """The upstream tokenizer, loaded now if it was not yet."""
        if self._model is None:
            self._model = load_audio_tokenizer(self.path, device=self.device)
        return self._model

    def __getattr__(self, name: str) -> Any:  # only for what __init__ did not set: the model's own attributes
        if name.startswith("__") or name == "_model":
            raise AttributeError(name)
        return getattr(self.load(), name)


@dataclass
class WhisperProcessorView:
    """The collator reads only ``.feature_extractor`` of a WhisperProcessor; no Whisper text tokenizer is needed."""

    feature_extractor: Any


def load_whisper_processor(model_path: str, model_config: Any) -> WhisperProcessorView | None:
    """The Whisper feature extractor when the model config encodes Whisper embeddings, else None."""
    if not model_config.encode_whisper_embed:
        return None
    from transformers import WhisperFeatureExtractor

    source = model_path if (Path(model_path) / "preprocessor_config.json").exists() else WHISPER_PROCESSOR_FALLBACK
    return WhisperProcessorView(WhisperFeatureExtractor.from_pretrained(source))
