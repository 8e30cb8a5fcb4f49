"""Sync-free DualFFN routing (``higgs_train.training.dual_ffn_routing``) against upstream's own layer forward.

The tiny embedded model with LoRA on the default targets (both FFNs and attention), on a padded batch with the
cloning layout plus an audio *input* segment (upstream routes input codes through the audio FFN too): the project's
loss and every adapter gradient must equal upstream's (fp32, 1e-6 relative), with and without activation
checkpointing; and the layers must read nothing back from the device but the one route count per forward.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from higgs_train.loss import compute_higgs_audio_loss, count_label_tokens
from higgs_train.training.activation_checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
)
from higgs_train.training.dual_ffn_routing import (
    LAYER_MATH,
    disable_sync_free_routing,
    dual_ffn_layers,
    enable_sync_free_routing,
    token_route,
)

RTOL = 1e-6


def cloning_batch(model_config, seed: int = 0):
    """Two rows of unequal length: text, an audio-in segment, text, a context (reference) audio-out segment, text,
    a trained audio-out segment, text."""
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

    from higgs_train.data.collate import build_collator

    gen = torch.Generator().manual_seed(seed)
    in_id, out_id = model_config.audio_in_token_idx, model_config.audio_out_token_idx
    cb = model_config.audio_num_codebooks

    def text(k: int) -> list[int]:
        return torch.randint(100, 1000, (k,), generator=gen).tolist()

    samples = []
    for row, (n_in, n_ref, n_target) in enumerate([(6, 9, 12), (4, 7, 5)]):
        a, b, c, d = text(9 + 3 * row), text(5), text(7), text(2)
        ids = a + [in_id] + b + [out_id] + c + [out_id] + d
        labels = [-100] * (len(ids) - len(d) - 1) + [out_id] + d
        lengths = [n_in, n_ref, n_target]
        codes = torch.randint(0, model_config.audio_codebook_size, (cb, sum(lengths)), generator=gen)
        samples.append(
            ChatMLDatasetSample(
                input_ids=torch.tensor(ids),
                label_ids=torch.tensor(labels),
                audio_ids_concat=codes,
                audio_ids_start=torch.tensor([0, n_in, n_in + n_ref]),
                audio_waveforms_concat=torch.tensor([]),
                audio_waveforms_start=torch.tensor([], dtype=torch.long),
                audio_sample_rate=torch.tensor([]),
                audio_speaker_indices=torch.tensor([-1, -1, -1]),
            )
        )
    return build_collator(model_config)(samples)


def build_lora_model(weight_dtype: torch.dtype = torch.float32):
    """The tiny model in ``weight_dtype`` with fp32 LoRA adapters (dropout 0) whose B matrices are random, so every
    adapter matrix gets a gradient."""
    from higgs_train.adapter import apply_lora
    from higgs_train.config import DEFAULT_LORA_TARGETS
    from higgs_train.model_loading import load_model, resolve_paths
    from higgs_train.training.precision import cast_adapters

    torch.manual_seed(0)
    model = load_model(resolve_paths("embedded", "embedded").model_path).to(weight_dtype)
    model = apply_lora(model, 8, 16, 0.0, [DEFAULT_LORA_TARGETS])
    cast_adapters(model, "fp32")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    model.train()
    return model


@pytest.fixture(scope="module")
def lora_model():
    return build_lora_model()


def loss_and_grads(model, batch):
    inputs = {k: v for k, v in vars(batch).items() if k != "reward"}
    counts = count_label_tokens(batch, audio_out_token_id=model.config.audio_out_token_idx)
    out = compute_higgs_audio_loss(model(**inputs), batch, num_label_tokens=counts)
    out.total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out, grads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_routed_layers_give_upstreams_loss_and_gradients(lora_model, checkpointing):
    batch = cloning_batch(lora_model.config)
    assert batch.audio_in_ids.shape[1] > 0 and batch.attention_mask.sum() < batch.attention_mask.numel()
    expected, expected_grads = loss_and_grads(lora_model, batch)
    assert enable_sync_free_routing(lora_model) == len(dual_ffn_layers(lora_model)) > 0
    if checkpointing:
        enable_activation_checkpointing(lora_model)
    try:
        got, got_grads = loss_and_grads(lora_model, batch)
    finally:
        disable_activation_checkpointing(lora_model)
        disable_sync_free_routing(lora_model)
    for name in ("total", "text_loss", "audio_loss"):
        want = float(getattr(expected, name).detach())
        assert abs(float(getattr(got, name).detach()) - want) <= RTOL * abs(want), name
    # Every adapter matrix (text and audio FFN, attention) gets a gradient, equal to upstream's.
    assert {n for n, g in expected_grads.items() if float(g.abs().sum()) == 0} == set()
    assert any(".audio_mlp." in n for n in expected_grads) and any(".mlp." in n for n in expected_grads)
    for name, want in expected_grads.items():
        assert float((got_grads[name] - want).abs().max()) <= RTOL * float(want.abs().max()), name


def test_routed_layers_are_bit_identical_on_the_gpu_dtype_path():
    """bf16 weights, fp32 adapters, no autocast (the GPU path): the same gathered rows go through the same
    operations, so loss and gradients are not just close but equal."""
    model = build_lora_model(torch.bfloat16)
    batch = cloning_batch(model.config, seed=4)
    expected, expected_grads = loss_and_grads(model, batch)
    enable_sync_free_routing(model)
    got, got_grads = loss_and_grads(model, batch)
    assert torch.equal(got.total.detach(), expected.total.detach())
    assert all(torch.equal(got_grads[name], want) for name, want in expected_grads.items())


class SyncCounter(TorchDispatchMode):
    """Counts the operators that make the host wait for a device value: scalar reads, ``nonzero`` and indexing with
    a boolean mask (which runs a ``nonzero`` inside)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        indices = args[1] if name.startswith("index") and len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        boolean_index = any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)
        if boolean_index or name.split(".")[0] in ("nonzero", "_local_scalar_dense", "masked_select"):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("routed", [False, True])
def test_the_layer_stack_reads_one_value_per_forward_and_none_in_backward(lora_model, routed):
    """The decoder layers alone (checkpointed, so backward recomputes them): upstream's routing reads back at every
    boolean index, the routed layers once per forward (the FFN split point) and never in backward."""
    batch = cloning_batch(lora_model.config, seed=2)
    layers = dual_ffn_layers(lora_model)
    hidden = torch.randn(*batch.attention_mask.shape, lora_model.config.text_config.hidden_size, requires_grad=True)
    audio_mask = torch.zeros(batch.attention_mask.shape, dtype=torch.bool)
    audio_mask[0, 10:30] = audio_mask[1, 5:12] = True
    rotary = lora_model.base_model.model.rotary_emb
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    if routed:
        enable_sync_free_routing(lora_model)
    enable_activation_checkpointing(lora_model)
    try:
        forward_syncs, backward_syncs = SyncCounter(), SyncCounter()
        with forward_syncs:
            x = hidden
            for layer in layers:
                x = layer(x, audio_out_mask=audio_mask, position_embeddings=rotary(x, positions))[0]
        with backward_syncs:
            x.square().sum().backward()
    finally:
        disable_activation_checkpointing(lora_model)
        disable_sync_free_routing(lora_model)
        lora_model.zero_grad(set_to_none=True)
    if routed:
        assert (forward_syncs.count, backward_syncs.count) == (1, 0)
    else:
        assert forward_syncs.count >= 4 * len(layers) and backward_syncs.count >= 4 * len(layers)


def test_route_lists_text_then_audio_positions_and_is_computed_once():
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    route = token_route(mask)
    assert route.order.tolist() == [0, 3, 5, 6, 7, 1, 2, 4] and (route.num_text, route.num_audio) == (5, 3)
    assert torch.equal(route.order[route.inverse], torch.arange(8))
    assert token_route(mask) is route  # the same mask tensor: no second sort or read-back
    mask[1, 1] = True  # changed in place: the route follows
    assert token_route(mask).num_audio == 4


def test_overrides_undo_in_order_and_other_calls_keep_upstreams_forward(lora_model):
    layer = dual_ffn_layers(lora_model)[0]
    enable_sync_free_routing(lora_model)
    routed, math = layer.forward, getattr(layer, LAYER_MATH)
    enable_activation_checkpointing(lora_model)  # wraps the layer math; the route is found outside the checkpoint
    assert layer.forward is routed and getattr(layer, LAYER_MATH) is not math
    disable_activation_checkpointing(lora_model)
    assert layer.forward is routed and getattr(layer, LAYER_MATH) is math
    disable_sync_free_routing(lora_model)
    assert "forward" not in vars(layer) and not hasattr(layer, LAYER_MATH)
    # With a KV cache (generation) the routed forward hands the call to upstream's: same output as without it.
    from transformers.cache_utils import DynamicCache

    hidden = torch.randn(1, 6, lora_model.config.text_config.hidden_size)
    mask = torch.tensor([[False, False, True, True, True, False]])
    rotary = lora_model.base_model.model.rotary_emb(hidden, torch.arange(6).unsqueeze(0))
    with torch.no_grad():
        call = {"audio_out_mask": mask, "position_embeddings": rotary, "use_cache": True}
        want = layer(hidden, past_key_value=DynamicCache(), **call)[0]
        enable_sync_free_routing(lora_model)
        try:
            got = layer(hidden, past_key_value=DynamicCache(), **call)[0]
        finally:
            disable_sync_free_routing(lora_model)
    assert torch.equal(got, want)
