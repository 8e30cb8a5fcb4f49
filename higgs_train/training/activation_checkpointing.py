"""Activation (gradient) checkpointing for Higgs decoder layers.

Upstream's ``HiggsAudioModel`` has a ``gradient_checkpointing`` flag but its decoder loop never calls a checkpoint
function, so enabling it saves nothing. Here each decoder layer *instance* gets a forward that runs the original
forward under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved so dropout recomputes identically).
The layer keeps its class, so upstream's ``isinstance`` dispatch (DualFFN layers receive the audio masks) still
routes it correctly; nothing in boson_multimodal is modified.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for module in model.modules():
        if module.__class__.__name__ == "HiggsAudioModel":
            return module.layers
    raise ValueError("no HiggsAudioModel found inside the given model")


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint every decoder layer of the (possibly peft/DDP-wrapped) HiggsAudioModel; returns the count."""
    layers = _decoder_layers(model)
    for layer in layers:
        if getattr(layer, "_higgs_train_checkpointed", False):
            continue
        original = layer.forward
        # An instance-level forward already there (sync-free routing) is what the checkpoint runs, and comes back
        # on disable.
        layer._higgs_train_forward_before_checkpointing = vars(layer).get("forward")

        @functools.wraps(original)
        def forward(*args, __original=original, __layer=layer, **kwargs):
            if __layer.training and torch.is_grad_enabled():
                return checkpoint(__original, *args, use_reentrant=False, **kwargs)
            return __original(*args, **kwargs)

        layer.forward = forward
        layer._higgs_train_checkpointed = True
    return len(layers)


def disable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Undo ``enable_activation_checkpointing``: each layer gets back the forward it had before."""
    for layer in _decoder_layers(model):
        if getattr(layer, "_higgs_train_checkpointed", False):
            previous = layer._higgs_train_forward_before_checkpointing
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
            layer._higgs_train_checkpointed = False


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` every decoder layer in place (``nn.Module.compile``); returns the count.

    Compiling layer by layer keeps upstream's Python-level merge of audio and text embeddings (data-dependent shapes)
    out of the graph, and composes with the checkpointed forward above: the compiled call runs the layer's
    (checkpointing) forward.
    """
    layers = _decoder_layers(model)
    for layer in layers:
        layer.compile()
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
