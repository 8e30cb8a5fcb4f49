"""The embedded tiny Higgs stack: deterministic, loadable by the real loaders, causal, and a working codec."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

from higgs_train.data.collate import build_collator
from higgs_train.embedded import build_tiny_stack, ensure_tiny_stack
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.embedded.voices import SAMPLE_RATE, SPEAKERS, synthesize
from higgs_train.model_loading import load_audio_tokenizer, load_model, load_text_tokenizer, load_whisper_processor


@pytest.fixture(scope="module")
def stack():
    return ensure_tiny_stack()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_stack_builds_to_identical_files_twice(tmp_path):
    """Byte for byte, whatever torch's thread count: a stack built under 1 thread (a Ray actor, a 1-core container)
    once differed from the same build under 2 (the codec's calibration sums)."""
    threads = torch.get_num_threads()
    first = _digests(build_tiny_stack(tmp_path / "a").root)
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        second = _digests(build_tiny_stack(tmp_path / "b").root)
    finally:
        torch.set_num_threads(threads)
    assert first == second
    assert {
        "model/config.json",
        "model/model.safetensors",
        "audio_tokenizer/model.pth",
        "audio_tokenizer/config.json",
        "tokenizer/tokenizer.json",
    } <= set(first)


def test_released_checkpoint_flags(stack):
    model = load_model(str(stack.model_dir))
    cfg = model.config
    assert cfg.audio_adapter_type == "dual_ffn_fast_forward"
    assert cfg.skip_audio_tower and not cfg.encode_whisper_embed and cfg.encode_audio_in_tokens
    assert cfg.use_delay_pattern and cfg.audio_num_codebooks == 8 and cfg.audio_codebook_size == 1024
    assert (cfg.audio_stream_bos_id, cfg.audio_stream_eos_id) == (1024, 1025)
    assert cfg.audio_dual_ffn_layers == list(range(cfg.text_config.num_hidden_layers))  # audio FFN in every layer
    assert model.audio_tower is None
    assert cfg._attn_implementation == "sdpa"


def test_tokenizer_ids_match_model_config(stack):
    tok = load_text_tokenizer(str(stack.tokenizer_dir))
    cfg = load_model(str(stack.model_dir)).config
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == cfg.audio_in_token_idx
    assert tok.convert_tokens_to_ids("<|AUDIO_OUT|>") == cfg.audio_out_token_idx
    assert tok.convert_tokens_to_ids("<|audio_out_bos|>") == cfg.audio_out_bos_token_id
    assert tok.convert_tokens_to_ids("<|audio_eos|>") == cfg.audio_eos_token_id
    assert len(tok) <= cfg.text_config.vocab_size
    ids = tok.encode("<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>", add_special_tokens=False)
    assert ids == [cfg.audio_out_bos_token_id, cfg.audio_out_token_idx, cfg.audio_eos_token_id]
    text = "Hello there, quick brown fox."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_released_size_tokenizer_has_the_released_ids_and_the_tiny_ones_text(stack, tmp_path):
    """The full-size pass (benchmarks/real_size.py) pairs this tokenizer with the released config's ids unchanged."""
    from higgs_train.embedded.text_tokenizer import RELEASED_VOCAB_SIZE, build_released_size_text_tokenizer_dir

    tok = load_text_tokenizer(str(build_released_size_text_tokenizer_dir(tmp_path / "released")))
    released = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006}
    released |= {"<|end_header_id|>": 128007, "<|eot_id|>": 128009, "<|audio_bos|>": 128011}
    released |= {"<|audio_eos|>": 128012, "<|audio_out_bos|>": 128013, "<|AUDIO|>": 128015, "<|AUDIO_OUT|>": 128016}
    assert {name: tok.convert_tokens_to_ids(name) for name in released} == released
    assert len(tok) == RELEASED_VOCAB_SIZE
    tiny = load_text_tokenizer(str(stack.tokenizer_dir))
    text = "Hello there, quick brown fox."
    assert tok.encode(text, add_special_tokens=False) == tiny.encode(text, add_special_tokens=False)
    assert tok.decode(tok.encode(f"{text}<|AUDIO_OUT|>", add_special_tokens=False)) == f"{text}<|AUDIO_OUT|>"


def _cloning_batch(
    tok, cfg, codes_ref, codes_tgt, target_text="Turn left at the light.", whisper_processor=None, user_audio=None
):
    messages = [
        {"role": "system", "content": "Generate audio following instruction."},
        {"role": "user", "content": "A reference sentence."},
        {"role": "assistant", "content": {"type": "audio", "audio_url": "ref.wav"}},
        {"role": "user", "content": target_text},
        {"role": "assistant", "content": {"type": "audio", "audio_url": "tgt.wav"}},
    ]
    codes = [codes_ref, codes_tgt]
    waves = torch.zeros(0)
    wave_starts = torch.zeros(0, dtype=torch.long)
    rates = torch.zeros(0)
    if user_audio is not None:  # whisper variant: the reference as an audio-in user turn
        messages[2] = {"role": "user", "content": {"type": "audio", "audio_url": "ref.wav"}}
        messages.insert(2, {"role": "assistant", "content": "ok"})
        waves = torch.from_numpy(user_audio)
        wave_starts = torch.zeros(1, dtype=torch.long)
        rates = torch.tensor([16000])
    input_ids, labels, audios, _ = prepare_chatml_sample({"messages": messages, "start_index": len(messages) - 1}, tok)
    assert len(audios) == 2
    sample = ChatMLDatasetSample(
        input_ids=torch.tensor(input_ids),
        label_ids=torch.tensor(labels),
        audio_ids_concat=torch.cat(codes, dim=1),
        audio_ids_start=torch.tensor([0, codes_ref.shape[1]]),
        audio_waveforms_concat=waves,
        audio_waveforms_start=wave_starts,
        audio_sample_rate=rates,
        audio_speaker_indices=torch.zeros(0, dtype=torch.long),
    )
    collator = build_collator(cfg, whisper_processor)
    batch = collator([sample])
    return {k: v for k, v in vars(batch).items() if k != "reward"}


def test_forward_pass_dac_variant(stack):
    tok = load_text_tokenizer(str(stack.tokenizer_dir))
    model = load_model(str(stack.model_dir)).eval()
    g = torch.Generator().manual_seed(0)
    inputs = _cloning_batch(
        tok, model.config, torch.randint(0, 1024, (8, 6), generator=g), torch.randint(0, 1024, (8, 5), generator=g)
    )
    out = model(**inputs)
    assert out.audio_logits.shape == (inputs["audio_out_ids"].shape[1], 8, 1026)
    assert out.logits.shape[:2] == out.expanded_labels.shape
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.audio_logits).all()


def test_forward_pass_whisper_variant(stack):
    model = load_model(str(stack.whisper_model_dir)).eval()
    assert model.config.encode_whisper_embed and model.audio_tower is not None
    tok = load_text_tokenizer(str(stack.whisper_model_dir))
    processor = load_whisper_processor(str(stack.whisper_model_dir), model.config)
    assert processor is not None and processor.feature_extractor.feature_size == 128
    user_audio = synthesize(SPEAKERS[0], "A reference sentence.", seed=0)[::3][:16000].astype(np.float32)
    g = torch.Generator().manual_seed(1)
    inputs = _cloning_batch(
        tok,
        model.config,
        torch.randint(0, 1024, (8, 6), generator=g),
        torch.randint(0, 1024, (8, 5), generator=g),
        whisper_processor=processor,
        user_audio=user_audio,
    )
    assert inputs["audio_features"].shape[0] == 1
    out = model(**inputs)
    assert torch.isfinite(out.logits).all()
    # The Whisper embeddings really condition the model: other audio gives other outputs.
    inputs2 = dict(inputs, audio_features=inputs["audio_features"] * 0.5)
    assert not torch.allclose(model(**inputs2).audio_logits, out.audio_logits)


@pytest.mark.parametrize("variant", ["model_dir", "whisper_model_dir"])
def test_causality_changing_a_later_token_leaves_earlier_logits(stack, variant):
    """Measured upstream: without explicit sdpa, plain Llama layers of a mixed stack attend to future tokens."""
    model = load_model(str(getattr(stack, variant))).eval()
    vocab = model.config.text_config.vocab_size
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 900, (2, 24), generator=g)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 17) % 900
    extra = {"attention_mask": torch.ones_like(ids)}
    if model.config.encode_whisper_embed:  # no audio in this batch: an empty feature tensor, as the collator gives
        extra["audio_features"] = torch.zeros(0, 128, 3000)
        extra["audio_feature_attention_mask"] = torch.zeros(0, 3000, dtype=torch.int32)
    with torch.no_grad():
        a = model(input_ids=ids, **extra).logits
        b = model(input_ids=changed, **extra).logits
    assert a.shape[-1] == vocab
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_causality_with_audio_out_segment(stack):
    tok = load_text_tokenizer(str(stack.tokenizer_dir))
    model = load_model(str(stack.model_dir)).eval()
    g = torch.Generator().manual_seed(3)
    ref, tgt = torch.randint(0, 1024, (8, 6), generator=g), torch.randint(0, 1024, (8, 5), generator=g)
    tgt2 = tgt.clone()
    tgt2[:, -1] = (tgt2[:, -1] + 1) % 1024
    with torch.no_grad():
        a = model(**_cloning_batch(tok, model.config, ref, tgt)).audio_logits
        b = model(**_cloning_batch(tok, model.config, ref, tgt2)).audio_logits
    # The last target code reaches the logits only at or after its own (delayed) columns.
    n_ref_cols = ref.shape[1] + 2 + 7
    first_affected = n_ref_cols + 1 + (tgt.shape[1] - 1)  # BOS column, then the code's column in codebook 0
    torch.testing.assert_close(a[:first_affected], b[:first_affected], rtol=0, atol=1e-5)
    assert not torch.allclose(a[first_affected:], b[first_affected:])


def test_audio_tokenizer_encodes_wav_and_decodes_back(stack, tmp_path):
    codec = load_audio_tokenizer(str(stack.audio_tokenizer_dir), device="cpu")
    assert codec.sampling_rate == 24000 and codec.num_codebooks == 8 and codec.tps == 25
    seconds = 2.0
    wave = synthesize(SPEAKERS[1], "Please bring the red cup to the kitchen.", seed=0)[: int(seconds * SAMPLE_RATE)]
    codes = codec.encode(wave, SAMPLE_RATE)
    assert codes.shape[0] == 8 and abs(codes.shape[1] - 25 * seconds) <= 2
    assert codes.min() >= 0 and codes.max() < 1024
    assert len(torch.unique(codes[0])) > 5  # informative codes, not a collapsed codebook
    again = load_audio_tokenizer(str(stack.audio_tokenizer_dir), device="cpu").encode(wave, SAMPLE_RATE)
    assert torch.equal(codes, again)  # deterministic across instances (no lazy k-means)
    decoded = codec.decode(codes.unsqueeze(0))
    assert decoded.shape[0] == 1 and abs(decoded.shape[-1] - len(wave)) <= 960


def test_voices_are_distinct_and_stable():
    from higgs_train.embedded.voices import SENTENCES

    def pitch(wave):
        """Median autocorrelation pitch over 50 ms frames, searched in 70-400 Hz."""
        frame, lo, hi = 1200, SAMPLE_RATE // 400, SAMPLE_RATE // 70
        estimates = []
        for start in range(0, len(wave) - frame, frame):
            x = wave[start : start + frame] - wave[start : start + frame].mean()
            ac = np.correlate(x, x, mode="full")[frame - 1 :]
            if ac[0] > 0:
                estimates.append(SAMPLE_RATE / (lo + np.argmax(ac[lo:hi])))
        return float(np.median(estimates))

    pitches = {s.name: [pitch(synthesize(s, t, seed=0)) for t in SENTENCES[:3]] for s in SPEAKERS}
    means = sorted(np.mean(v) for v in pitches.values())
    assert all(b - a > 30 for a, b in zip(means, means[1:], strict=False))
    for values in pitches.values():
        assert np.std(values) < 0.15 * np.mean(values)


def test_sample_data_is_deterministic_and_well_formed(tmp_path):
    import json

    import soundfile as sf

    a = create_sample_data(tmp_path / "a", seed=3)
    b = create_sample_data(tmp_path / "b", seed=3)
    assert a["train"].read_text() == b["train"].read_text()
    rows = json.loads(a["train"].read_text()) + json.loads(a["val"].read_text())
    assert len({r["speaker"] for r in rows}) >= 4
    for row in rows:
        assert row["start_index"] == 4 and row["messages"][4]["role"] == "assistant"
        ref, tgt = row["messages"][2]["content"]["audio_url"], row["messages"][4]["content"]["audio_url"]
        assert ref != tgt and ref.split("/")[1] == tgt.split("/")[1] == row["speaker"]
        for rel in (ref, tgt):
            info = sf.info(str(tmp_path / "a" / rel))
            assert info.samplerate == 24000 and 1.0 <= info.duration <= 6.0
        assert (tmp_path / "a" / tgt).read_bytes() == (tmp_path / "b" / tgt).read_bytes()
