"""Token routing of upstream's DualFFN decoder layers without device syncs, for training.

Upstream's ``HiggsAudioDualFFNDecoderLayer`` sends text tokens through ``mlp`` and audio tokens through ``audio_mlp``
with boolean-mask indexing (``hidden_states[~mask]``, ``residual[mask] += ...``). Each of those four operations is
a ``nonzero`` whose output size the host must read back, so each waits for the GPU to finish all queued work and
leaves it idle while the host launches the next kernels. With 28 layers that is over a hundred syncs per forward,
as many again in backward and in the recomputation of activation checkpointing: the GPU cannot run ahead of the
host anywhere in the layer stack.

``enable_sync_free_routing(model)`` gives every DualFFN layer *instance* a forward that computes the same thing for
the training case (no KV cache, no audio self-attention, not a fast-forward layer) with integer indices that are
found once per forward (``token_route``: a stable sort of the mask and one count read back) and shared by all
layers and by the recomputation: gather the tokens text-first, run each FFN on its contiguous block, put the
outputs back in place with the inverse permutation. The arithmetic is the layer's own (the same layer norms,
attention call, FFNs and one residual add per position), so values and gradients equal upstream's (tests compare
both in fp32); the weights, module names and state-dict keys are unchanged. Any other call (generation with a
cache, attention weights requested, layers upstream configures differently) goes to the class forward. Nothing in
boson_multimodal is modified: this is the same kind of per-instance override that activation checkpointing uses.

The forward does two things: it finds the route (eager, outside any graph) and calls the layer's ``LAYER_MATH``
with it. Activation checkpointing and ``torch.compile`` wrap ``LAYER_MATH``, not the forward, so a recomputation
reuses the route it was given and a compiled layer is one graph without a break.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

DUAL_FFN_LAYER = "HiggsAudioDualFFNDecoderLayer"
# The per-instance attribute holding a routed layer's computation (``layer_math``, then whatever wraps it).
LAYER_MATH = "_higgs_train_layer_math"
_ROUTED = "_higgs_train_sync_free_routing"


@dataclass(frozen=True)
class TokenRoute:
    """Where the text and audio tokens of a (batch, sequence) mask are, as flat positions.

    ``order`` lists the text positions, then the audio positions, each ascending (the order boolean indexing
    yields); ``inverse[p]`` is the place of flat position ``p`` in ``order``.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    num_text: int
    num_audio: int


# One route per mask tensor (and version): every layer of a forward receives the same mask object, so the sort and the
# read-back happen once per forward (a checkpoint's recomputation reuses the route it was called with). Entries go
# when the mask is freed.
_routes: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


@torch.compiler.disable
def token_route(audio_mask: torch.Tensor) -> TokenRoute:
    """The ``TokenRoute`` of ``audio_mask`` (B, S; True = audio token), computed once per mask tensor."""
    cached = _routes.get(audio_mask)
    if cached is not None and cached[0] == audio_mask._version:
        return cached[1]
    flat = audio_mask.reshape(-1)
    order = torch.argsort(flat.to(torch.uint8), stable=True)
    positions = torch.arange(flat.numel(), device=flat.device)
    inverse = torch.empty_like(order).scatter_(0, order, positions)
    num_audio = int(flat.sum())  # the one read-back: the split point of the two FFN blocks
    route = TokenRoute(order, inverse, flat.numel() - num_audio, num_audio)
    _routes[audio_mask] = (audio_mask._version, route)
    return route


def _is_routed_case(layer: torch.nn.Module, hidden_states: torch.Tensor, audio_out_mask: Any, kwargs: dict) -> bool:
    """The cache-free call this module reimplements (``routed_forward`` sends cached calls upstream first)."""
    return (
        audio_out_mask is not None
        and audio_out_mask.shape[0] > 0
        and tuple(audio_out_mask.shape) == tuple(hidden_states.shape[:2])
        and not layer.fast_forward
        and not layer.use_audio_attention
        and not kwargs.get("output_attentions")
    )


def layer_math(
    layer: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, route: TokenRoute | None = None, **kwargs: Any
) -> tuple:
    """The layer's computation: with a ``route``, the training case with index routing instead of boolean masks;
    without one, upstream's class forward. This is the part activation checkpointing and ``torch.compile`` wrap
    (``LAYER_MATH``): the route is found outside it, so neither a recomputation nor a compiled graph contains the
    read-back."""
    if route is None:
        return type(layer).forward(layer, hidden_states, *args, **kwargs)
    audio_out_mask = kwargs["audio_out_mask"]
    residual = hidden_states
    normed = torch.where(
        audio_out_mask.unsqueeze(-1), layer.audio_input_layernorm(hidden_states), layer.input_layernorm(hidden_states)
    )
    attention = layer.self_attn(
        hidden_states=normed,
        attention_mask=kwargs.get("attention_mask"),
        position_ids=kwargs.get("position_ids"),
        past_key_value=None,
        output_attentions=False,
        use_cache=False,
        cache_position=kwargs.get("cache_position"),
        position_embeddings=kwargs.get("position_embeddings"),
    )[0]
    hidden_states = residual + attention
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    text, audio = flat.index_select(0, route.order).split([route.num_text, route.num_audio])
    text = layer.mlp(layer.post_attention_layernorm(text))
    audio = layer.audio_mlp(layer.audio_post_attention_layernorm(audio))
    ffn = torch.cat([text, audio]).index_select(0, route.inverse)
    return (hidden_states + ffn.view_as(hidden_states),)


def routed_forward(layer: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    """``HiggsAudioDualFFNDecoderLayer.forward`` while routing is on: finds the route (training case only) and runs
    the layer's (possibly checkpointed, possibly compiled) ``LAYER_MATH`` with it."""
    if kwargs.get("use_cache") or kwargs.get("past_key_value") is not None:
        # Generation (in-training evaluation included): upstream's own forward, never the compiled training math,
        # whose graphs would be retraced for every decoding step's shapes.
        return type(layer).forward(layer, hidden_states, *args, **kwargs)
    routed = not args and _is_routed_case(layer, hidden_states, kwargs.get("audio_out_mask"), kwargs)
    route = token_route(kwargs["audio_out_mask"]) if routed else None
    return getattr(layer, LAYER_MATH)(hidden_states, *args, route=route, **kwargs)


def dual_ffn_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The DualFFN decoder layers of the (possibly peft/DDP-wrapped) model."""
    return [m for m in model.modules() if m.__class__.__name__ == DUAL_FFN_LAYER]


def enable_sync_free_routing(model: torch.nn.Module) -> int:
    """Route every DualFFN layer with ``routed_forward``; returns the number of layers. Call it before
    activation checkpointing and ``torch.compile``, which then wrap the layers' ``LAYER_MATH``."""
    layers = dual_ffn_layers(model)
    for layer in layers:
        if getattr(layer, _ROUTED, False):
            continue
        if "forward" in vars(layer):
            raise RuntimeError("enable sync-free routing before any other per-instance forward override")

        def forward(*args: Any, __layer: torch.nn.Module = layer, **kwargs: Any) -> tuple:
            return routed_forward(__layer, *args, **kwargs)

        def math(*args: Any, __layer: torch.nn.Module = layer, **kwargs: Any) -> tuple:
            return layer_math(__layer, *args, **kwargs)

        layer.forward = forward
        setattr(layer, LAYER_MATH, math)
        setattr(layer, _ROUTED, True)
    return len(layers)


def disable_sync_free_routing(model: torch.nn.Module) -> None:
    """Undo ``enable_sync_free_routing`` (after undoing activation checkpointing, which wraps ``LAYER_MATH``)."""
    for layer in dual_ffn_layers(model):
        if getattr(layer, _ROUTED, False):
            del layer.forward
            delattr(layer, LAYER_MATH)
            setattr(layer, _ROUTED, False)
