"""The sync-free loss equals today's loss (``tests/unit/loss_reference.py``) in fp32: values and gradients to 1e-6
relative, on batches from upstream's collator with the delay pattern, two audio segments per row and a masked
(context) reference segment; with the text head applied at labelled positions only (``text_head``) and without;
and on the real tiny model, through the hidden-states-as-logits override the trainer uses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import loss_reference as reference
import pytest
import torch
from test_loss import HIDDEN, TEXT_V, _collate, _fake_outputs

from higgs_train.loss import compute_higgs_audio_loss, count_label_tokens

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-6


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    assert scale > 0
    return float((a - b).abs().max()) / scale


# Row 1: masked reference + trained target; row 2: trained, context, trained; row 3: context only.
SPECS = [[(5, False), (7, True)], [(4, True), (3, False), (6, True)], [(4, False)]]


def outputs_pair(batch, seed: int = 0):
    """The same model outputs twice: full logits (= head(hidden)), and the final hidden states plus the head."""
    gen = torch.Generator().manual_seed(seed)
    base = _fake_outputs(batch, seed)
    bsz, length = base.expanded_labels.shape
    hidden = torch.randn(bsz, length, HIDDEN, generator=gen)
    head = torch.nn.Linear(HIDDEN, TEXT_V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(TEXT_V, HIDDEN, generator=gen))

    def leaves():
        return hidden.clone().requires_grad_(), base.audio_logits.detach().clone().requires_grad_()

    h_ref, a_ref = leaves()
    full = SimpleNamespace(**{**vars(base), "logits": head(h_ref), "audio_logits": a_ref})
    h_new, a_new = leaves()
    headless = SimpleNamespace(**{**vars(base), "logits": h_new, "audio_logits": a_new})
    return (full, (h_ref, a_ref)), (headless, (h_new, a_new)), head


@pytest.mark.parametrize("codebook_weights", [None, [3.0, 1, 1, 1, 1, 1, 1, 0.5]])
@pytest.mark.parametrize("use_text_head", [True, False])
@pytest.mark.parametrize("host_metrics", [True, False])
def test_optimised_loss_and_gradients_equal_the_reference(codebook_weights, use_text_head, host_metrics):
    batch = _collate(SPECS, seed=3)
    counts = count_label_tokens(batch, audio_out_token_id=50)
    # Global counts of a step this batch is one part of, as the trainer passes them.
    global_counts = {
        "text": counts.text + 5,
        "audio": counts.audio + 40,
    }
    (full, ref_leaves), (headless, new_leaves), head = outputs_pair(batch)
    settings = {
        "text_loss_weight": 0.7,
        "codebook_weights": codebook_weights,
        "num_label_tokens": global_counts,
    }
    expected = reference.compute_higgs_audio_loss(full, batch, **settings)
    if use_text_head:
        got = compute_higgs_audio_loss(headless, batch, text_head=head, host_metrics=host_metrics, **settings)
    else:
        headless.logits = head(new_leaves[0])
        got = compute_higgs_audio_loss(headless, batch, host_metrics=host_metrics, **settings)

    assert expected.text_tokens > 0 and expected.audio_tokens > 0
    for name in ("total", "text_loss", "audio_loss", "per_codebook_loss"):
        assert relative_error(getattr(got, name).detach(), getattr(expected, name).detach()) <= RTOL, name
    assert (got.text_tokens, got.audio_tokens) == (expected.text_tokens, expected.audio_tokens)
    assert got.audio_counted == expected.audio_counted
    if host_metrics:
        assert got.audio_correct == expected.audio_correct
        assert got.text_token_loss == pytest.approx(expected.text_token_loss, rel=RTOL)
        assert got.audio_token_loss == pytest.approx(expected.audio_token_loss, rel=RTOL)
    else:
        assert got.audio_correct == []

    expected.total.backward()
    got.total.backward()
    for ref, new in zip(ref_leaves, new_leaves, strict=True):
        assert relative_error(new.grad, ref.grad) <= RTOL
    # Only the labelled positions get a gradient (the head is applied nowhere else).
    assert int((new_leaves[0].grad.abs().sum(-1) > 0).sum()) == expected.text_tokens


def test_batch_without_text_labels_or_trained_audio_keeps_the_graph_connected():
    batch = _collate([[(4, False)]], seed=1)
    batch.label_ids[:] = -100
    (full, _), (headless, leaves), head = outputs_pair(batch)
    expected = reference.compute_higgs_audio_loss(full, batch)
    got = compute_higgs_audio_loss(headless, batch, text_head=head)
    assert float(got.total.detach()) == float(expected.total.detach()) == 0.0
    got.total.backward()
    assert all(leaf.grad is not None and float(leaf.grad.abs().sum()) == 0 for leaf in leaves)


def _load_activation_memory_benchmark():
    spec = importlib.util.spec_from_file_location(
        "benchmarks_activation_memory", ROOT / "benchmarks" / "activation_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


HEAD_TARGETS = (
    r"^(?:base_model\.model\.)?(?:layers\.\d+\.self_attn\.q_proj|audio_decoder_proj\.(?:audio|text)_lm_head)$"
)


@pytest.mark.parametrize("targets", ["default", "with_heads"])
def test_real_model_text_logits_at_labelled_positions_equal_the_full_logits_loss(targets):
    """The tiny model with LoRA (also on the text head itself): the reference loss on upstream's full logits and the
    optimised loss on the hidden states the head override returns give the same values and adapter gradients."""
    from higgs_train.adapter import apply_lora
    from higgs_train.config import DEFAULT_LORA_TARGETS
    from higgs_train.model_loading import load_model, resolve_paths
    from higgs_train.training.text_head import hidden_states_as_text_logits

    bench = _load_activation_memory_benchmark()
    torch.manual_seed(0)
    model_dir = resolve_paths("embedded", "embedded").model_path
    model = apply_lora(
        load_model(model_dir), 8, 16, 0.0, [DEFAULT_LORA_TARGETS if targets == "default" else HEAD_TARGETS]
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    model.train()
    batch = bench.synthetic_batch(model.config, batch=2, frames=30)
    inputs = {k: v for k, v in vars(batch).items() if k != "reward"}
    out_id = model.config.audio_out_token_idx
    settings = {"num_label_tokens": vars(count_label_tokens(batch, audio_out_token_id=out_id))}

    def adapter_grads():
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return grads

    expected = reference.compute_higgs_audio_loss(model(**inputs), batch, **settings)
    expected.total.backward()
    expected_grads = adapter_grads()
    with hidden_states_as_text_logits(model) as head:
        outputs = model(**inputs)
    assert outputs.logits.shape[-1] == model.config.text_config.hidden_size
    got = compute_higgs_audio_loss(outputs, batch, text_head=head, host_metrics=False, **settings)
    got.total.backward()
    got_grads = adapter_grads()

    assert expected.text_tokens > 0
    for name in ("total", "text_loss", "audio_loss"):
        assert relative_error(getattr(got, name).detach(), getattr(expected, name).detach()) <= RTOL, name
    scale = max(float(g.abs().max()) for g in expected_grads.values())
    assert scale > 0
    assert max(float((got_grads[n] - expected_grads[n]).abs().max()) for n in expected_grads) <= RTOL * scale
    if targets == "with_heads":
        assert any("text_lm_head.lora_B" in n and float(g.abs().sum()) > 0 for n, g in got_grads.items())
    # The override is gone after the block: the model computes vocabulary logits again.
    assert model(**inputs).logits.shape[-1] == model.config.text_config.vocab_size


def test_the_audio_term_never_reads_a_device_value():
    """Model outputs on the meta device (which has no values: any ``.item()``/``nonzero``/boolean index on them
    raises) with the label tensors on the host, as the trainer passes them: the audio term and the total are
    computed without waiting for the device."""
    batch = _collate(SPECS, seed=5)
    base = _fake_outputs(batch)
    meta = SimpleNamespace(
        logits=None,
        expanded_labels=None,
        audio_logits=base.audio_logits.detach().to("meta").requires_grad_(),
    )
    out = compute_higgs_audio_loss(
        meta,
        batch,
        text_loss_weight=0.0,
        codebook_weights=[2.0, 1, 1, 1, 1, 1, 1, 1],
        num_label_tokens={"text": 0, "audio": 500},
        host_metrics=False,
    )
    assert out.total.device.type == "meta"
    assert out.audio_tokens > 0
    out.total.backward()
    assert meta.audio_logits.grad is not None and meta.audio_logits.grad.device.type == "meta"
