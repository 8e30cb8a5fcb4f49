"""Activation (gradient) checkpointing for Higgs decoder layers.

Upstream's ``HiggsAudioModel`` has a ``gradient_checkpointing`` flag but its decoder loop never calls a checkpoint
function, so enabling it saves nothing. Here each decoder layer *instance* runs its computation (its forward, or
a routed DualFFN layer's math, see ``dual_ffn_routing``) under ``torch.utils.checkpoint`` (non-reentrant, RNG
state preserved so dropout recomputes identically).
The layer keeps its class, so upstream's ``isinstance`` dispatch (DualFFN layers receive the audio masks) still
routes it correctly; nothing in boson_multimodal is modified.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

from higgs_train.training.dual_ffn_routing import LAYER_MATH


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for module in model.modules():
        if module.__class__.__name__ == "HiggsAudioModel":
            return module.layers
    raise ValueError("no HiggsAudioModel found inside the given model")


def _computation(layer: torch.nn.Module) -> str:
    """The attribute holding what to checkpoint or compile: a routed DualFFN layer's ``LAYER_MATH`` (its forward
    finds the route first, outside: ``dual_ffn_routing``), else the forward itself."""
    return LAYER_MATH if hasattr(layer, LAYER_MATH) else "forward"


def spread_layers(total: int, count: int) -> list[int]:
    """``count`` of ``total`` layer indices spread evenly, first and last included (``count`` 0: all of them)."""
    if count == 0 or count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def enable_activation_checkpointing(model: torch.nn.Module, count: int = 0) -> int:
    """Checkpoint ``count`` decoder layers (0: all), spread evenly, of the (possibly peft/DDP-wrapped)
    HiggsAudioModel; returns how many are checkpointed.

    Every layer saves the same activations, so checkpointing k of L layers keeps about (L - k) / L of the
    un-checkpointed activation memory plus the checkpointed layers' inputs, and recomputes k / L of the forward: the
    knob between the two ends when full checkpointing leaves memory unused.
    """
    layers = _decoder_layers(model)
    if count > len(layers):
        raise ValueError(f"checkpoint_layers={count}, but the model has {len(layers)} decoder layers")
    chosen = spread_layers(len(layers), count)
    for layer in (layers[i] for i in chosen):
        if getattr(layer, "_higgs_train_checkpointed", False):
            continue
        target = _computation(layer)
        original = getattr(layer, target)
        # What was there at instance level (the routed layer math, or nothing) comes back on disable.
        layer._higgs_train_before_checkpointing = (target, vars(layer).get(target))

        @functools.wraps(original)
        def checkpointed(*args, __original=original, __layer=layer, **kwargs):
            if __layer.training and torch.is_grad_enabled():
                return checkpoint(__original, *args, use_reentrant=False, **kwargs)
            return __original(*args, **kwargs)

        setattr(layer, target, checkpointed)
        layer._higgs_train_checkpointed = True
    return len(chosen)


def disable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Undo ``enable_activation_checkpointing``: each layer gets back what it had before."""
    for layer in _decoder_layers(model):
        if getattr(layer, "_higgs_train_checkpointed", False):
            target, previous = layer._higgs_train_before_checkpointing
            if previous is None:
                delattr(layer, target)
            else:
                setattr(layer, target, previous)
            layer._higgs_train_checkpointed = False


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` every decoder layer's computation in place; returns the count.

    Compiling layer by layer keeps upstream's Python-level merge of audio and text embeddings (data-dependent shapes)
    out of the graph. What is compiled is what checkpointing wraps (``_computation``), after it: a routed layer's
    math with its checkpoint, so the route's read-back stays outside every graph, and the compiled graph holds the
    whole layer, recomputation included. A layer without routing is compiled whole (``nn.Module.compile``).
    """
    layers = _decoder_layers(model)
    for layer in layers:
        target = _computation(layer)
        if target == "forward":
            layer.compile()
        else:
            setattr(layer, target, torch.compile(getattr(layer, target)))
    return len(layers)


@contextmanager
def saved_activation_bytes(exclude: Iterable[torch.Tensor] = ()) -> Iterator[list[int]]:
    """Count the bytes autograd saves for backward inside the block: an exact activation-memory measure on CPU.

    Tensors sharing storage with ``exclude`` (pass the model's parameters) are not activations and are skipped;
    each storage is counted once.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total[0] += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
