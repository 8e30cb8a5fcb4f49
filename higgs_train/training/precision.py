"""The dtype path of training: bf16 base weights and no autocast around upstream code, as upstream inference runs.

Why no autocast: CUDA autocast runs ``torch.sum`` in fp32, so upstream ``_embed_audio_ids`` returns fp32 audio
embeddings and ``merge_input_ids_with_audio_features`` then fails to write them into the bf16 text embeddings
("Index put requires the source and destination dtypes match"). CPU autocast does not upcast ``sum``, which is why a
CPU test under autocast never saw it. Instead the base weights are cast once (bf16 on CUDA by default) and every
upstream op runs in the weights' dtype; LoRA adapters stay fp32 by default (peft casts their inputs itself) and the
loss upcasts the logits it scores to fp32. ``precision="bf16"`` on CPU runs exactly this path, which is how the
tests exercise the GPU's dtypes without a GPU.
"""

from __future__ import annotations

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")


def weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Base-weight dtype for ``precision`` ("auto": bf16 on CUDA, fp32 elsewhere; "bf16"; "fp32")."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return _DTYPES[precision]


def cast_adapters(model: torch.nn.Module, adapter_dtype: str) -> torch.dtype:
    """Cast every LoRA parameter to ``adapter_dtype`` ("fp32" or "bf16"); returns the dtype.

    peft already keeps adapters in fp32 next to bf16 base weights (``autocast_adapter_dtype``); bf16 adapters skip
    the per-layer input casts to fp32 and halve the adapter/optimizer memory, at bf16 precision of the updates.
    """
    dtype = _DTYPES.get(adapter_dtype)
    if dtype is None:
        raise ValueError(f"adapter_dtype must be fp32 or bf16, got {adapter_dtype!r}")
    for name, param in model.named_parameters():
        if "lora_" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return dtype


def enabled_autocast_device_types() -> list[str]:
    """Device types whose autocast is on in this thread (empty when none is)."""
    enabled = []
    for device_type in AUTOCAST_DEVICE_TYPES:
        try:
            if torch.is_autocast_enabled(device_type):
                enabled.append(device_type)
        except RuntimeError:  # a device type this build does not know
            continue
    return enabled


def assert_no_autocast() -> None:
    """Raise if any autocast is active: upstream code must run in its weights' dtype (see the module docstring)."""
    enabled = enabled_autocast_device_types()
    if enabled:
        raise RuntimeError(
            f"HiggsAudioModel must not run under torch.autocast (enabled for {', '.join(enabled)}): CUDA autocast "
            "upcasts torch.sum in upstream's audio embedding and breaks its merge; set TrainingConfig.precision "
            "(bf16 weights) instead of wrapping the step in autocast"
        )
