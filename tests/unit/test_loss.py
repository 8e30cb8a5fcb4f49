"""Loss: shift and masking by hand-computed values, copy-leak detection, gradient flow, split invariance, monitor.

Expected values are worked out here from closed forms (uniform logits give log V; a logit ``a`` on the target and 0
elsewhere gives ``log(e^a + V - 1) - a``; 1 - cos of known vectors), never by re-running cross-entropy the way the
implementation does. Batches come from upstream's real collator (which applies ``build_delay_pattern_mask``) so the
label layout is the one training sees.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample
from boson_multimodal.model.higgs_audio.utils import build_delay_pattern_mask, merge_input_ids_with_audio_features

from higgs_train.data.collate import build_collator
from higgs_train.loss import (
    LabelTokenCounts,
    LossOutput,
    audio_next_code_accuracy,
    audio_next_code_targets,
    compute_higgs_audio_loss,
    count_label_tokens,
)
from higgs_train.training.loss_balance import LossBalanceMonitor

K = 8  # codebooks
C = 1026  # 1024 codes + BOS + EOS
BOS, EOS = 1024, 1025
AUDIO_OUT, AUDIO_IN, PAD = 50, 51, 0
TEXT_V = 64
HIDDEN = 6


def peaked_ce(a: float, vocab: int) -> float:
    """CE when the target's logit is ``a`` and every other logit is 0."""
    return math.log(math.exp(a) + vocab - 1) - a


def _collator(**kw) -> HiggsAudioSampleCollator:
    return HiggsAudioSampleCollator(
        whisper_processor=None,
        audio_in_token_id=AUDIO_IN,
        audio_out_token_id=AUDIO_OUT,
        pad_token_id=PAD,
        audio_stream_bos_id=BOS,
        audio_stream_eos_id=EOS,
        encode_whisper_embed=False,
        return_audio_in_tokens=False,
        audio_num_codebooks=K,
        use_delay_pattern=True,
        round_to=8,
        **kw,
    )


def _sample(segments: list[tuple[int, bool]], gen: torch.Generator) -> ChatMLDatasetSample:
    """Synthetic sample: ``[2, 3] + per segment [10, AUDIO_OUT, 11] + [12]``; a trained segment labels 10/11 (and
    its AUDIO_OUT, which the collator then masks), a context segment labels nothing; 12 is always labelled."""
    ids, labels, codes = [2, 3], [-100, -100], []
    for n, trained in segments:
        ids += [10, AUDIO_OUT, 11]
        labels += [10, AUDIO_OUT, 11] if trained else [-100, -100, -100]
        codes.append(torch.randint(0, 1024, (K, n), generator=gen))
    ids.append(12)
    labels.append(12)
    lengths = [c.shape[1] for c in codes]
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    return ChatMLDatasetSample(
        input_ids=torch.tensor(ids),
        label_ids=torch.tensor(labels),
        audio_ids_concat=torch.cat(codes, 1),
        audio_ids_start=starts,
        audio_waveforms_concat=torch.tensor([]),
        audio_waveforms_start=torch.tensor([], dtype=torch.long),
        audio_sample_rate=torch.tensor([]),
        audio_speaker_indices=torch.tensor([]),
    )


def _collate(specs: list[list[tuple[int, bool]]], seed: int = 0, **collator_kw):
    gen = torch.Generator().manual_seed(seed)
    return _collator(**collator_kw)([_sample(s, gen) for s in specs])


def _fake_outputs(batch, seed: int = 0, logits: torch.Tensor | None = None) -> SimpleNamespace:
    """Model-shaped outputs: the merged layout from upstream's merge function (zero embeddings), random leaves."""
    n = batch.audio_out_ids.shape[1]
    bsz, length = batch.input_ids.shape
    merged = merge_input_ids_with_audio_features(
        None,
        None,
        None,
        None,
        torch.zeros(n, 1),
        batch.audio_out_ids_start,
        AUDIO_IN,
        AUDIO_OUT,
        torch.zeros(bsz, length, 1),
        batch.input_ids,
        batch.attention_mask,
        batch.label_ids,
        pad_token_id=PAD,
        round_to=8,
        left_padding=False,
    )
    _, _, labels, _, input_ids, _, _, audio_out_mask = merged
    gen = torch.Generator().manual_seed(seed)
    if logits is None:
        logits = torch.randn(bsz, labels.shape[1], TEXT_V, generator=gen)
    return SimpleNamespace(
        logits=logits.requires_grad_(),
        expanded_labels=labels,
        expanded_input_ids=input_ids,
        audio_out_mask=audio_out_mask,
        audio_logits=torch.randn(n, K, C, generator=gen).requires_grad_(),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------------------


def test_uniform_logits_give_log_vocab_and_counts_by_hand():
    batch = _collate([[(4, True)], [(3, False), (5, True)]])
    out = _fake_outputs(batch)
    with torch.no_grad():
        out.logits.zero_()
        out.audio_logits.zero_()
    res = compute_higgs_audio_loss(out, batch)
    # text: per trained segment 10 and 11 (AUDIO_OUT masked), plus the final 12 of each sample
    assert res.text_tokens == (2 + 1) + (2 + 1)
    # audio: n codes + EOS per codebook, trained segments only (the 3-code reference contributes nothing)
    assert res.audio_tokens == K * (4 + 1) + K * (5 + 1)
    assert res.text_loss.item() == pytest.approx(math.log(TEXT_V), abs=1e-5)
    assert res.audio_loss.item() == pytest.approx(math.log(C), abs=1e-5)
    assert res.total.item() == pytest.approx(math.log(TEXT_V) + math.log(C), abs=1e-5)
    assert res.audio_counted == [4 + 1 + 5 + 1] * K
    assert count_label_tokens(batch, audio_out_token_id=AUDIO_OUT) == LabelTokenCounts(6, K * 11)


def test_text_count_matches_merged_labels_when_audio_out_label_is_kept():
    # With mask_audio_out_token_label=False the collator keeps a label on <|AUDIO_OUT|>, but the merged sequence
    # replaces it by -100 audio positions; the count must follow the merged sequence the loss actually sees.
    batch = _collate([[(3, False), (4, True)], [(5, True)]], mask_audio_out_token_label=False)
    assert (batch.label_ids == AUDIO_OUT).sum() == 2
    merged = _fake_outputs(batch).expanded_labels
    assert count_label_tokens(batch, audio_out_token_id=AUDIO_OUT).text == int((merged[:, 1:] != -100).sum()) == 6


def test_delay_pattern_segment_peaked_on_next_column():
    n = 3
    batch = _collate([[(n, True)]])
    labels = batch.label_audio_ids
    # Labels as the collator builds them: [-100, codes, EOS] then delayed with -100 fill on both sides.
    codes = batch.audio_out_ids[:, 1 : 1 + n]  # codebook 0 is not delayed
    raw = torch.cat([torch.full((K, 1), -100), _undelay(batch.audio_out_ids)[:, 1 : 1 + n], torch.full((K, 1), EOS)], 1)
    expected_labels = build_delay_pattern_mask(raw[None], bos_token_id=-100, pad_token_id=-100)[0][0]
    assert torch.equal(labels, expected_labels)
    assert labels.shape == (K, n + 2 + K - 1)
    for k in range(K):
        assert (labels[k, : k + 1] == -100).all() and labels[k, k + n + 1] == EOS
    assert torch.equal(labels[0, 1 : 1 + n], codes[0])

    # Row t: logit a_k on label column t + 1 (the documented target), 0 elsewhere.
    a = [1.0 + k for k in range(K)]
    audio_logits = torch.zeros(labels.shape[1], K, C)
    for t in range(labels.shape[1] - 1):
        for k in range(K):
            if labels[k, t + 1] != -100:
                audio_logits[t, k, labels[k, t + 1]] = a[k]
    out = _fake_outputs(batch)
    out.audio_logits = audio_logits.requires_grad_()
    res = compute_higgs_audio_loss(out, batch, text_loss_weight=0.0)
    per_cb = [peaked_ce(a[k], C) for k in range(K)]
    assert res.per_codebook_loss.tolist() == pytest.approx(per_cb, abs=1e-5)
    assert res.audio_loss.item() == pytest.approx(sum(per_cb) / K, abs=1e-5)  # equal counts per codebook
    assert res.audio_tokens == K * (n + 1)
    assert audio_next_code_accuracy(res) == [1.0] * K


def _undelay(delayed: torch.Tensor) -> torch.Tensor:
    """Codebook k of a delayed (K, n + K - 1) block back to (K, n)."""
    n = delayed.shape[1] - (K - 1)
    return torch.stack([delayed[k, k : k + n] for k in range(K)])


def test_two_segments_never_pair_across_the_boundary():
    # Hand-made labels (2 codebooks, 5 classes) whose second segment does NOT start with -100, so a cross-boundary
    # pair would be counted if the implementation shifted over the whole concatenation.
    labels = torch.tensor([[-100, 1, 2, 3, 4, 0], [-100, 2, 3, 1, 0, 4]])
    starts = torch.tensor([0, 3])
    a = 2.0
    audio_logits = torch.zeros(6, 2, 5)
    for t in (0, 1, 3, 4):
        for k in range(2):
            audio_logits[t, k, labels[k, t + 1]] = a
    audio_logits[2] = torch.tensor([[-40.0, 0, 0, 0, 0], [0, -40.0, 0, 0, 0]])  # would target class 3 / 1
    audio_logits[5] = 7.0
    audio_logits.requires_grad_()
    out = SimpleNamespace(logits=None, expanded_labels=None, audio_logits=audio_logits)
    batch = SimpleNamespace(label_audio_ids=labels, audio_out_ids_start=starts)
    res = compute_higgs_audio_loss(out, batch, text_loss_weight=0.0)
    assert res.audio_tokens == 2 * 4
    assert res.audio_loss.item() == pytest.approx(peaked_ce(a, 5), abs=1e-6)
    res.total.backward()
    assert audio_logits.grad[2].abs().sum() == 0 and audio_logits.grad[5].abs().sum() == 0
    targets = audio_next_code_targets(labels, starts)
    assert targets[:, 0].tolist() == [1, 2, -100, 4, 0, -100]


def test_masked_reference_segment_contributes_nothing():
    batch = _collate([[(6, False), (4, True)]])
    ref_rows = slice(0, int(batch.audio_out_ids_start[1]))
    assert (batch.label_audio_ids[:, ref_rows] == -100).all()
    out = _fake_outputs(batch)
    res = compute_higgs_audio_loss(out, batch, text_loss_weight=0.0)
    assert res.audio_tokens == K * (4 + 1)
    res.total.backward()
    assert out.audio_logits.grad[ref_rows].abs().sum() == 0
    assert out.audio_logits.grad[ref_rows.stop :].abs().sum() > 0
    # changing the reference rows' logits changes nothing
    out2 = _fake_outputs(batch)
    with torch.no_grad():
        out2.audio_logits[ref_rows] = 100.0 * torch.randn_like(out2.audio_logits[ref_rows])
    res2 = compute_higgs_audio_loss(out2, batch, text_loss_weight=0.0)
    assert res2.audio_loss.item() == pytest.approx(res.audio_loss.item(), abs=1e-6)


def test_codebook_weights_by_hand():
    batch = _collate([[(5, True)]])
    labels = batch.label_audio_ids
    a = [0.5 * k for k in range(K)]
    audio_logits = torch.zeros(labels.shape[1], K, C)
    for t in range(labels.shape[1] - 1):
        for k in range(K):
            if labels[k, t + 1] != -100:
                audio_logits[t, k, labels[k, t + 1]] = a[k]
    out = _fake_outputs(batch)
    out.audio_logits = audio_logits.requires_grad_()
    weights = [4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.0, 1.0]
    res = compute_higgs_audio_loss(out, batch, text_loss_weight=0.0, codebook_weights=weights)
    expected = sum(w * peaked_ce(a[k], C) for k, w in enumerate(weights)) / sum(weights)
    assert res.audio_loss.item() == pytest.approx(expected, abs=1e-5)
    res.total.backward()
    assert out.audio_logits.grad[:, 6].abs().sum() == 0  # weight 0 codebook gets no gradient
    assert out.audio_logits.grad[:, 0].abs().sum() > 0
    # scaling all weights changes nothing (normalised to sum K)
    res2 = compute_higgs_audio_loss(out, batch, text_loss_weight=0.0, codebook_weights=[3 * w for w in weights])
    assert res2.audio_loss.item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="codebooks"):
        compute_higgs_audio_loss(out, batch, codebook_weights=[1.0] * 7)


# ---------------------------------------------------------------------------------------------------------------------
# Copy leak
# ---------------------------------------------------------------------------------------------------------------------


def test_echo_model_scores_badly_and_oracle_scores_zero():
    batch = _collate([[(12, False), (20, True)], [(9, False), (15, True)]], seed=3)
    base = _fake_outputs(batch)
    big = 30.0
    n = batch.audio_out_ids.shape[1]
    labels = batch.label_audio_ids
    starts = set(batch.audio_out_ids_start.tolist()) | {n}

    echo_audio = torch.zeros(n, K, C)
    oracle_audio = torch.zeros(n, K, C)
    for t in range(n):
        for k in range(K):
            echo_audio[t, k, batch.audio_out_ids[k, t]] = big  # the input code fed at this very row
            if t + 1 not in starts and labels[k, t + 1] != -100:
                oracle_audio[t, k, labels[k, t + 1]] = big

    ids, tlabels = base.expanded_input_ids, base.expanded_labels
    echo_text = torch.zeros(*ids.shape, TEXT_V)
    oracle_text = torch.zeros(*ids.shape, TEXT_V)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            echo_text[b, t, min(int(ids[b, t]), TEXT_V - 1)] = big
            if t + 1 < ids.shape[1] and tlabels[b, t + 1] != -100:
                oracle_text[b, t, tlabels[b, t + 1]] = big

    def loss(text_logits, audio_logits):
        out = SimpleNamespace(logits=text_logits, expanded_labels=tlabels, audio_logits=audio_logits)
        return compute_higgs_audio_loss(out, batch)

    echo = loss(echo_text, echo_audio)
    oracle = loss(oracle_text, oracle_audio)
    assert echo.audio_loss.item() > 0.5 * math.log(C)
    assert echo.text_loss.item() > 0.5 * math.log(TEXT_V)
    assert oracle.audio_loss.item() < 1e-6 and oracle.text_loss.item() < 1e-6
    assert audio_next_code_accuracy(oracle) == [1.0] * K
    assert max(audio_next_code_accuracy(echo)) < 0.1


# ---------------------------------------------------------------------------------------------------------------------
# Gradients and split invariance
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["text", "audio"])
def test_gradient_reaches_each_component(component):
    batch = _collate([[(3, False), (4, True)], [(2, False), (5, True)]])
    out = _fake_outputs(batch)
    weights = {"text_loss_weight": 0.0, "audio_loss_weight": 0.0}
    weights[f"{component}_loss_weight"] = 1.0
    res = compute_higgs_audio_loss(out, batch, **weights)
    assert res.total.requires_grad
    res.total.backward()
    grads = {
        "text": out.logits.grad,
        "audio": out.audio_logits.grad,
    }
    for name, grad in grads.items():
        reached = grad is not None and grad.abs().sum() > 0
        assert reached == (name == component), name
    if component == "text":  # only the positions whose next label is valid receive gradient
        valid = torch.zeros_like(out.expanded_labels, dtype=torch.bool)
        valid[:, :-1] = out.expanded_labels[:, 1:] != -100
        assert (out.logits.grad.abs().sum(-1) > 0).eq(valid).all()


def test_gradient_independent_of_split_with_global_counts():
    specs = [[(3, False), (5, True)], [(4, False), (2, True)], [(6, True)], [(2, False), (7, True)]]
    batch = _collate(specs, seed=1)
    out = _fake_outputs(batch, seed=2)
    seg = torch.repeat_interleave(torch.arange(len(specs)), torch.tensor([len(s) for s in specs]))  # segment -> sample
    weights = {"text_loss_weight": 1.0, "audio_loss_weight": 0.7}

    full = compute_higgs_audio_loss(out, batch, **weights)
    full.total.backward()
    reference = [t.grad.clone() for t in (out.logits, out.audio_logits)]
    for t in (out.logits, out.audio_logits):
        t.grad = None

    # Global counts = sum of each half's own counts (each half collated on its own, as a micro-batch would be).
    halves_counts = [
        count_label_tokens(_collate(s, seed=1), audio_out_token_id=AUDIO_OUT) for s in (specs[:2], specs[2:])
    ]
    global_counts = halves_counts[0] + halves_counts[1]
    assert global_counts == count_label_tokens(batch, audio_out_token_id=AUDIO_OUT)
    assert LabelTokenCounts.from_tensor(global_counts.to_tensor()) == global_counts

    bounds = batch.audio_out_ids_start.tolist() + [batch.audio_out_ids.shape[1]]
    totals = []
    for samples in (range(0, 2), range(2, 4)):
        segs = [i for i, s in enumerate(seg.tolist()) if s in samples]
        lo, hi = bounds[segs[0]], bounds[segs[-1] + 1]
        half_out = SimpleNamespace(
            logits=out.logits[samples.start : samples.stop],
            expanded_labels=out.expanded_labels[samples.start : samples.stop],
            audio_logits=out.audio_logits[lo:hi],
        )
        half_batch = SimpleNamespace(
            label_audio_ids=batch.label_audio_ids[:, lo:hi],
            audio_out_ids_start=batch.audio_out_ids_start[segs] - lo,
        )
        res = compute_higgs_audio_loss(
            half_out,
            half_batch,
            num_label_tokens=global_counts,
            **weights,
        )
        res.total.backward()
        totals.append(res.total.item())
    assert sum(totals) == pytest.approx(full.total.item(), abs=1e-6)
    for got, want in zip((out.logits.grad, out.audio_logits.grad), reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="smaller than this batch"):
        compute_higgs_audio_loss(out, batch, num_label_tokens={"text": 1, "audio": 1})


# ---------------------------------------------------------------------------------------------------------------------
# Monitor
# ---------------------------------------------------------------------------------------------------------------------


def _lo(text: float, audio: float, text_tokens: int = 4, audio_tokens: int = 400, w_text: float = 1.0) -> LossOutput:
    return LossOutput(
        total=torch.tensor(w_text * text + audio),
        text_loss=torch.tensor(text),
        audio_loss=torch.tensor(audio),
        per_codebook_loss=torch.zeros(K),
        text_tokens=text_tokens,
        audio_tokens=audio_tokens,
        audio_correct=[0] * K,
        audio_counted=[audio_tokens // K] * K,
        text_audio_ratio=w_text * text / audio if audio else math.inf,
        text_token_loss=text,
        audio_token_loss=audio,
        text_loss_weight=w_text,
        audio_loss_weight=1.0,
    )


def test_monitor_silent_when_balanced_and_names_dominant_component():
    mon = LossBalanceMonitor(window=4)
    assert all(mon.update(_lo(2.0, 5.0)) == [] for _ in range(10))

    mon = LossBalanceMonitor(text_dominance_threshold=10, window=4)
    fired = [mon.update(_lo(11.0, 0.5, w_text=2.0)) for _ in range(4)]
    assert fired[:3] == [[], [], []]  # window not full yet
    assert len(fired[3]) == 1 and "text dominates" in fired[3][0] and "44.0x" in fired[3][0]
    assert mon.update(_lo(11.0, 0.5, w_text=2.0)) == []  # rate-limited within a window

    mon = LossBalanceMonitor(audio_dominance_threshold=10, window=3)
    fired = [mon.update(_lo(0.3, 6.0)) for _ in range(3)]
    assert "audio dominates" in fired[-1][0] and "20.0x" in fired[-1][0]
    # text already learned (near-zero per-token CE): a small text share is not starvation
    mon = LossBalanceMonitor(audio_dominance_threshold=10, window=3)
    assert all(mon.update(_lo(0.01, 6.0)) == [] for _ in range(6))


def test_monitor_warns_on_components_without_labels():
    mon = LossBalanceMonitor(window=5)
    warnings = mon.update(_lo(0.0, 5.0, text_tokens=0))
    assert len(warnings) == 1 and "no text label" in warnings[0]
    warnings = mon.update(_lo(2.0, 0.0, audio_tokens=0))
    assert len(warnings) == 1 and "context" in warnings[0]
    assert mon.update(_lo(2.0, 5.0, text_tokens=4)) == []


# ---------------------------------------------------------------------------------------------------------------------
# Real tiny model
# ---------------------------------------------------------------------------------------------------------------------


def test_real_tiny_model_cloning_batch():
    from higgs_train.model_loading import load_model, load_text_tokenizer, resolve_paths

    paths = resolve_paths("embedded", "embedded")
    tok = load_text_tokenizer(paths.tokenizer_path)
    model = load_model(paths.model_path)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)

    def sample(prompt: str, target: str, ref_len: int, tgt_len: int) -> ChatMLDatasetSample:
        row = {
            "messages": [
                {"role": "system", "content": "Generate audio following instruction."},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": {"type": "audio", "audio_url": "ref.wav"}},
                {"role": "user", "content": target},
                {"role": "assistant", "content": {"type": "audio", "audio_url": "tgt.wav"}},
            ],
            "start_index": 4,
        }
        ids, labels, _, _ = prepare_chatml_sample(row, tok)
        codes = [torch.randint(0, 1024, (8, n), generator=gen) for n in (ref_len, tgt_len)]
        return ChatMLDatasetSample(
            input_ids=torch.tensor(ids),
            label_ids=torch.tensor(labels),
            audio_ids_concat=torch.cat(codes, 1),
            audio_ids_start=torch.tensor([0, ref_len]),
            audio_waveforms_concat=torch.tensor([]),
            audio_waveforms_start=torch.tensor([], dtype=torch.long),
            audio_sample_rate=torch.tensor([]),
            audio_speaker_indices=torch.tensor([]),
        )

    collator = build_collator(cfg)
    batch = collator(
        [sample("the reference words", "a new sentence", 9, 14), sample("hi", "a much longer target text here", 6, 11)]
    )
    out = model(**{k: v for k, v in vars(batch).items() if k != "reward"})

    counts = count_label_tokens(batch, audio_out_token_id=cfg.audio_out_token_idx)
    assert counts.text == int((out.expanded_labels[:, 1:] != -100).sum())  # label_ids count == merged count
    assert counts.text == 2 * 3  # audio_out_bos, audio_eos, eot of the target turn per sample
    assert counts.audio == 8 * ((14 + 1) + (11 + 1))  # reference segments contribute no label positions

    res = compute_higgs_audio_loss(out, batch, num_label_tokens=counts)
    assert torch.isfinite(res.total) and res.total.item() > 0
    assert (res.text_tokens, res.audio_tokens) == (counts.text, counts.audio)
    assert res.audio_loss.item() == pytest.approx(math.log(C), rel=0.5)  # untrained: near uniform
    res.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    ref_rows = list(range(int(batch.audio_out_ids_start[0]), int(batch.audio_out_ids_start[1])))
    assert (batch.label_audio_ids[:, ref_rows] == -100).all()
