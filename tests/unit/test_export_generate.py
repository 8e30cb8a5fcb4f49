"""Adapter load/merge/export and the generation prompt, on the embedded tiny stack.

Tolerance of merged vs base+adapter logits: fp32, max |diff| <= 1e-4 (merging reorders the sums; measured about
3e-7 on the tiny model, against an adapter effect > 1e-3). Save -> load of an adapter gives bit-identical logits.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from higgs_train.adapter import AdapterError, apply_lora, load_adapter, locate_adapter, save_adapter
from higgs_train.chatml import AUDIO_OUT_BOS, GENERATION_PREFIX, context_of
from higgs_train.config import TrainingConfig
from higgs_train.data.collate import batch_to_model_inputs, build_collator, collate_records
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.decoding_rules import TextTokenMask, codes_from_delayed
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.export import check_merged_dir, export, safetensors_index
from higgs_train.generation import code_agreement, generation_collator
from higgs_train.generation_prompt import build_prompt, prompt_from_record
from higgs_train.model_loading import load_audio_tokenizer, load_model, load_text_tokenizer, resolve_paths
from higgs_train.training.checkpoint import TrainerState

MERGE_ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paths():
    return resolve_paths("embedded", "embedded")


@pytest.fixture(scope="module")
def tokenizers(paths):
    return load_text_tokenizer(paths.tokenizer_path), load_audio_tokenizer(paths.audio_tokenizer_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = create_sample_data(tmp_path_factory.mktemp("sample"), utterances_per_speaker=2)
    return out["audio_base_path"], json.loads(out["train"].read_text())


@pytest.fixture(scope="module")
def record(tokenizers, data):
    return SamplePreprocessor(*tokenizers, data[0])(data[1][0])


def _wrapped(model_path: str, r: int = 8, seed: int = 0, targets: list[str] | None = None):
    """A LoRA-wrapped tiny model with random (non-zero) lora_B, so the adapter changes the outputs."""
    model = load_model(model_path)
    model = apply_lora(model, r, 2 * r, 0.0, targets or TrainingConfig().lora_target_modules)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.eval()


def _save(model, out: Path, config: TrainingConfig | None = None) -> Path:
    save_adapter(model, out)
    (config or TrainingConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0)).save(out / "training_config.yaml")
    return out


@pytest.fixture(scope="module")
def adapter(paths, tmp_path_factory):
    model = _wrapped(paths.model_path)
    return model, _save(model, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def batch(record, paths):
    config = load_model(paths.model_path).config
    return batch_to_model_inputs(collate_records([record], build_collator(config)))


@torch.no_grad()
def _logits(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**inputs)
    return out.logits, out.audio_logits


def test_adapter_roundtrip_gives_identical_logits(adapter, paths, batch):
    trained, adapter_dir = adapter
    loaded = load_adapter(load_model(paths.model_path), adapter_dir, base_model_path="embedded").eval()
    base_text, base_audio = _logits(load_model(paths.model_path).eval(), batch)
    text, audio = _logits(loaded, batch)
    ref_text, ref_audio = _logits(trained, batch)
    assert torch.equal(text, ref_text) and torch.equal(audio, ref_audio)
    assert (audio - base_audio).abs().max() > 1e-3  # the adapter really applies


def test_merged_export_matches_base_plus_adapter(adapter, paths, batch, tmp_path):
    from boson_multimodal.model.higgs_audio import HiggsAudioModel

    trained, adapter_dir = adapter
    result = export(adapter_dir, tmp_path / "export", merge=True, base_model_path="embedded")
    merged_dir = result.merged_dir
    keys = safetensors_index(merged_dir)
    assert not [k for k in keys if k.startswith("base_model.model.") or "lora_" in k]
    assert keys == safetensors_index(paths.model_path)  # same names, shapes and dtypes as the base
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (merged_dir / name).exists(), name
    plain = HiggsAudioModel.from_pretrained(str(merged_dir))  # upstream loader, no project code
    assert plain.config.audio_num_codebooks == 8
    merged = load_model(str(merged_dir)).eval()
    text, audio = _logits(merged, batch)
    ref_text, ref_audio = _logits(trained, batch)
    assert (text - ref_text).abs().max() <= MERGE_ATOL
    assert (audio - ref_audio).abs().max() <= MERGE_ATOL
    card = (result.adapter_dir / "README.md").read_text()
    assert "base_model:" in card and "r=8" in card and "lora_r: 8" in card
    assert (
        load_file(str(result.adapter_dir / "adapter_model.safetensors")).keys()
        == load_file(str(adapter_dir / "adapter_model.safetensors")).keys()
    )


def test_merge_of_a_bf16_base_loads_it_in_bf16_and_rounds_once(adapter, paths, tmp_path):
    """A released base is bf16 (11.5 GB; 23 GB in fp32): the merge keeps it in bf16 and must still equal the fp32
    merge cast back, bit for bit (one rounding of W + BA, not two)."""
    _, adapter_dir = adapter
    base = tmp_path / "bf16-base"
    load_model(paths.model_path).to(torch.bfloat16).save_pretrained(str(base), safe_serialization=True)
    load_text_tokenizer(paths.tokenizer_path).save_pretrained(str(base))
    loads: list[torch.dtype] = []
    import higgs_train.export as export_module

    real_load = export_module.load_model

    def spying_load(path, device="cpu", dtype=torch.float32):
        loads.append(dtype)
        return real_load(path, device=device, dtype=dtype)

    export_module.load_model = spying_load
    try:
        result = export(
            adapter_dir, tmp_path / "export", merge=True, base_model_path=str(base), allow_base_mismatch=True
        )
    finally:
        export_module.load_model = real_load
    assert loads == [torch.bfloat16]
    reference = load_adapter(load_model(str(base)), adapter_dir, str(base), allow_base_mismatch=True)
    expected = reference.merge_and_unload().to(torch.bfloat16).state_dict()
    merged = load_model(str(result.merged_dir), dtype=torch.bfloat16).state_dict()
    assert merged.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(merged[k], expected[k])]
    assert not differing, differing[:5]
    base_weights = load_model(str(base), dtype=torch.bfloat16).state_dict()
    assert not torch.equal(merged["layers.0.self_attn.q_proj.weight"], base_weights["layers.0.self_attn.q_proj.weight"])


def test_merged_dir_check_rejects_unmerged_weights(adapter, paths, tmp_path):
    trained, _ = adapter
    trained.base_model.model.save_pretrained(str(tmp_path / "bad"), safe_serialization=True)
    with pytest.raises(AdapterError, match="LoRA tensors were saved"):
        check_merged_dir(tmp_path / "bad", paths.model_path)


def _copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_adapter_is_rejected(adapter, paths, tmp_path):
    bad = _copy_adapter(adapter[1], tmp_path / "bad")
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterError, match="corrupted or truncated"):
        load_adapter(load_model(paths.model_path), bad, "embedded")


def test_adapter_for_another_base_is_rejected(paths, tmp_path):
    whisper = resolve_paths("embedded:whisper", "embedded").model_path
    other = _save(_wrapped(whisper), tmp_path / "whisper", TrainingConfig(model_path="embedded:whisper"))
    with pytest.raises(AdapterError, match="trained on base model"):
        load_adapter(load_model(paths.model_path), other, "embedded")
    # Same shapes (the tiny variants share the decoder): only the identity check can catch this one.
    loaded = load_adapter(load_model(paths.model_path), other, "embedded", allow_base_mismatch=True)
    assert loaded is not None


def test_other_rank_or_targets_are_rejected(adapter, paths, tmp_path):
    _, adapter_dir = adapter
    with pytest.raises(AdapterError, match="other LoRA settings.*r: model 4 vs adapter 8"):
        load_adapter(_wrapped(paths.model_path, r=4), adapter_dir, "embedded")
    with pytest.raises(AdapterError, match="target_modules"):
        load_adapter(_wrapped(paths.model_path, r=8, targets=["q_proj", "v_proj"]), adapter_dir, "embedded")
    lying = _copy_adapter(adapter_dir, tmp_path / "lying")  # config says r=4, tensors are r=8
    config = json.loads((lying / "adapter_config.json").read_text())
    (lying / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(AdapterError, match="shape mismatches"):
        load_adapter(load_model(paths.model_path), lying, "embedded")


def test_missing_and_unexpected_keys_are_rejected(adapter, paths, tmp_path):
    _, adapter_dir = adapter
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    dropped = sorted(k for k in weights if "layers.1.mlp" in k)
    missing = _copy_adapter(adapter_dir, tmp_path / "missing")
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(missing / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"6 missing keys .*layers\.1\.mlp"):
        load_adapter(load_model(paths.model_path), missing, "embedded")
    extra = _copy_adapter(adapter_dir, tmp_path / "extra")
    bogus = {**weights, "base_model.model.layers.7.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)}
    save_file(bogus, str(extra / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"1 unexpected keys .*layers\.7"):
        load_adapter(load_model(paths.model_path), extra, "embedded")


def test_locate_adapter_reads_checkpoints_and_final_dirs(adapter, tmp_path):
    _, adapter_dir = adapter
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000005"
    _copy_adapter(adapter_dir, ckpt / "adapter")
    TrainingConfig(lora_r=8).save(ckpt / "config.yaml")
    (ckpt / "trainer_state.json").write_text(TrainerState(global_step=5, metrics={"val_loss": 1.5}).to_json())
    (tmp_path / "run" / "history.json").write_text(json.dumps([{"step": 5, "val_loss": 1.5}]))
    src = locate_adapter(ckpt)
    assert src.kind == "checkpoint" and src.final_metrics() == {"val_loss": 1.5}
    assert src.run_dir == tmp_path / "run" and src.training_config["lora_r"] == 8
    final = _copy_adapter(adapter_dir, tmp_path / "run" / "adapter")
    assert locate_adapter(tmp_path / "run").adapter_dir == final
    assert locate_adapter(final).final_metrics() == {"step": 5, "val_loss": 1.5}
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        locate_adapter(tmp_path)


def test_generation_prompt_is_the_training_prompt_prefix(record, data, tokenizers, paths):
    tokenizer, audio_tokenizer = tokenizers
    base, rows = data
    prompt = build_prompt(context_of(rows[0]), tokenizer, audio_tokenizer, base)
    ids = prompt.sample.input_ids.tolist()
    training = [int(t) for t in record["input_ids"]]
    # training ids up to (and including) the target turn's header + <|audio_out_bos|>, then <|AUDIO_OUT|>...
    assert ids == training[: len(ids)]
    assert training[len(ids)] == tokenizer.convert_tokens_to_ids("<|AUDIO_OUT|>")
    prefix = tokenizer.encode(GENERATION_PREFIX + AUDIO_OUT_BOS, add_special_tokens=False)
    assert ids[-len(prefix) :] == prefix
    assert ids.count(tokenizer.convert_tokens_to_ids(AUDIO_OUT_BOS)) == 2  # reference turn and target turn
    # reference codes equal the training record's, and the record cut gives the very same prompt
    from_record = prompt_from_record(record, tokenizer.convert_tokens_to_ids(AUDIO_OUT_BOS))
    assert from_record.sample.input_ids.tolist() == ids
    assert torch.equal(from_record.sample.audio_ids_concat, prompt.sample.audio_ids_concat)
    assert from_record.target_codes.shape[1] > 0
    config = load_model(paths.model_path).config
    collator = generation_collator(config)
    a, b = collator([prompt.sample]), collator([from_record.sample])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.audio_out_ids, b.audio_out_ids)
    assert a.input_ids.shape[1] == len(ids)  # no rounding up: nothing between the prompt and generated tokens


def test_codes_from_delayed_strips_bos_eos_and_handles_cut_streams():
    from boson_multimodal.model.higgs_audio.utils import build_delay_pattern_mask

    codes = torch.randint(0, 1024, (8, 5))
    stream = torch.cat([torch.full((8, 1), 1024), codes, torch.full((8, 1), 1025)], dim=1)
    delayed = build_delay_pattern_mask(stream.unsqueeze(0), bos_token_id=1024, pad_token_id=1025)[0][0]
    out, finished = codes_from_delayed(delayed, 1024)
    assert finished and np.array_equal(out, codes.numpy())
    cut, finished = codes_from_delayed(delayed[:, :10], 1024)  # max_new_tokens hit: keep every complete frame
    assert not finished and np.array_equal(cut, codes.numpy()[:, :2])
    assert code_agreement(out, codes.numpy()) == 1.0
    assert code_agreement(cut, codes.numpy()) == pytest.approx(2 / 5)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "ray_jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_cli_reports_a_bad_adapter(adapter, tmp_path, capsys):
    bad = _copy_adapter(adapter[1], tmp_path / "bad")
    (bad / "adapter_model.safetensors").write_bytes(b"\x00\x01")
    assert _script("export").main(["--checkpoint", str(bad), "--output", str(tmp_path / "out")]) == 2
    assert "corrupted or truncated" in capsys.readouterr().err


def test_generate_cli_requires_one_mode():
    with pytest.raises(SystemExit):
        _script("generate").main(["--ref_audio", "a.wav", "--manifest", "m.json", "--output_dir", "x"])


def test_validation_samples_write_wavs_and_restore_training_mode(adapter, record, tokenizers, tmp_path):
    import soundfile as sf

    from higgs_train.generation import SamplingSettings, generate_validation_samples

    model, _ = adapter
    model.train()
    samples = generate_validation_samples(
        model,
        *tokenizers,
        model.get_base_model().config,
        [record, {**record, "id": "broken", "audio_is_out": []}],  # the second row cannot be a prompt
        tmp_path / "samples",
        SamplingSettings(temperature=0.0, max_new_tokens=12),
    )
    assert model.training
    model.eval()
    ((path, agreement),) = samples.written
    audio, rate = sf.read(path)
    assert rate == 24000 and len(audio) > 0 and 0.0 <= agreement < 1.0
    ((failed_id, error),) = samples.failed
    assert failed_id == "broken" and "does not end in an assistant audio turn" in error
    assert samples.metrics() == {"val/sample_failures": 1.0, "val/sample_code_agreement": agreement}


def test_audio_end_floor_keeps_the_stream_open_for_the_asked_frames(adapter, record, tokenizers):
    """A model that always draws the stream EOS ends with 0 frames on its own, and with exactly the floor's frames
    when ``min_audio_frames`` holds the stream open (greedy, so the only thing that differs is the floor)."""
    from higgs_train.generation import GenerationStack, SamplingSettings, generate_codes

    model, _ = adapter
    config = model.get_base_model().config
    stack = GenerationStack(model, *tokenizers, generation_collator(config), config)
    prompt = prompt_from_record(record, config.audio_out_bos_token_id)
    eos = config.audio_stream_eos_id

    def favour_eos(module, inputs, output):
        logits = output.view(*output.shape[:-1], config.audio_num_codebooks, -1).clone()
        logits[..., eos] += 1e4
        return logits.view(output.shape)

    hook = model.get_base_model().audio_decoder_proj.audio_lm_head.register_forward_hook(favour_eos)
    try:
        frames = {}
        for floor in (0, 1, 6):
            settings = SamplingSettings(temperature=0.0, max_new_tokens=64, min_audio_frames=floor)
            codes, finished, _ = generate_codes(stack, prompt, settings)
            frames[floor] = (codes.shape[1], finished)
    finally:
        hook.remove()
    assert frames == {0: (0, True), 1: (1, True), 6: (6, True)}


def test_text_token_mask_bans_padding_ids_and_audio_placeholders_from_text_only():
    vocab, width = 10, 16  # the model's text head is padded beyond the tokenizer
    mask = TextTokenMask(vocab, placeholder_ids=(8, 9))
    scores = torch.zeros(1, width)
    scores[0, 12] = scores[0, 9] = 100.0  # an untrained head favouring a padding id and a placeholder
    masked = mask(torch.tensor([[1, 2]]), scores)
    assert torch.isinf(masked[0, 8:]).all() and torch.isfinite(masked[0, :8]).all()
    assert int(masked.argmax()) < 8
    audio = torch.randn(8, 1026)  # upstream passes audio scores with input_ids=None: untouched
    assert mask(None, audio) is audio


# ----------------------------------------------------------------------------------------------- one-line errors
def _no_model_load(monkeypatch):
    """Inputs that can be checked without the model must be refused before it loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("higgs_train.commands.generate.load_generation_stack", refuse)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_generate_refuses_missing_and_bad_inputs_in_one_line_before_loading(data, tmp_path, monkeypatch, capsys):
    _no_model_load(monkeypatch)
    main = _script("generate").main
    out = ["--text", "Hi there.", "--output", str(tmp_path / "o.wav")]
    assert main(["--ref_audio", str(tmp_path / "missing.wav"), "--ref_text", "x", *out]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --ref_audio {tmp_path / 'missing.wav'}: no such " + (
        "file or directory"
    )
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot audio")
    assert main(["--ref_audio", str(broken), "--ref_text", "x", *out]) == 2
    assert "audio file cannot be decoded" in _one_error_line(capsys.readouterr().err)
    ref = str(data[0] / data[1][0]["messages"][2]["content"]["audio_url"])
    assert main(["--adapter", str(tmp_path / "no_adapter"), "--ref_audio", ref, "--ref_text", "x", *out]) == 2
    assert "--adapter" in _one_error_line(capsys.readouterr().err)
    assert main(["--manifest", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "--manifest" in _one_error_line(capsys.readouterr().err)
    assert main(["--speaker", "spk_mid", "--data", str(tmp_path / "no_data"), *out]) == 2
    assert "--data" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("flags", "dtype"), [([], torch.float32), (["--precision", "bf16"], torch.bfloat16)])
def test_generate_loads_the_model_in_the_precision_asked_for(data, tmp_path, monkeypatch, flags, dtype):
    """``--precision bf16`` on CPU: a released 3B model is 11.5 GB in bf16 and 23 GB in fp32 (auto on CPU)."""
    asked: list[torch.dtype] = []

    class Loaded(Exception):
        pass

    def capture(*args, dtype=None, **kwargs):
        asked.append(dtype)
        raise Loaded

    monkeypatch.setattr("higgs_train.commands.generate.load_generation_stack", capture)
    ref = str(data[0] / data[1][0]["messages"][2]["content"]["audio_url"])
    argv = ["--ref_audio", ref, "--ref_text", "x", "--text", "Hi.", "--output", str(tmp_path / "o.wav"), *flags]
    with pytest.raises(Loaded):
        _script("generate").main([*argv, "--device", "cpu"])
    assert asked == [dtype]


def test_generate_reports_an_adapter_error_in_one_line(adapter, data, tmp_path, capsys):
    bad = _copy_adapter(adapter[1], tmp_path / "bad")
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ref = str(data[0] / data[1][0]["messages"][2]["content"]["audio_url"])
    code = _script("generate").main(
        ["--adapter", str(bad), "--ref_audio", ref, "--ref_text", "x", "--text", "Hi.", "--output", str(tmp_path / "o")]
    )
    assert code == 2
    assert "corrupted or truncated" in _one_error_line(capsys.readouterr().err)


def _pickled_copy(model_dir: str, dst: Path) -> Path:
    """The embedded base model with its weights as a ``pytorch_model.bin`` pickle instead of safetensors."""
    dst.mkdir()
    for f in Path(model_dir).iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    weights = {}
    for f in Path(model_dir).glob("*.safetensors"):
        weights.update(load_file(str(f)))
    torch.save(weights, dst / "pytorch_model.bin")
    return dst


def test_a_pickled_base_model_is_refused_in_one_line(adapter, paths, tmp_path, capsys):
    pickled = _pickled_copy(paths.model_path, tmp_path / "pickled")
    args = ["--checkpoint", str(adapter[1]), "--output", str(tmp_path / "out"), "--base_model", str(pickled)]
    assert _script("export").main([*args, "--allow_base_mismatch"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "holds only pickled weights (pytorch_model.bin)" in line and "safe_serialization=True" in line
    assert not (tmp_path / "out").exists()
    assert _script("export").main(["--checkpoint", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in _one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------- audio check
def test_generate_fails_a_clip_that_fails_the_audio_check_unless_allowed(data, tmp_path, monkeypatch, capsys):
    """The issue's clip (0.72 s of clipped noise for a 67-character sentence) exits 1 with what was measured;
    ``--allow_bad_audio`` exits 0 and still says it. The WAV is written either way, to be listened to."""
    import soundfile as sf

    import higgs_train.commands.generate as generate_command
    from higgs_train.generation import GenerationResult

    rate = 24000
    wave = np.sign(np.random.default_rng(0).standard_normal(int(0.72 * rate))).astype(np.float32)
    result = GenerationResult("prompt", np.zeros((8, 18), dtype=np.int64), wave, rate, True, "")
    monkeypatch.setattr(generate_command, "load_generation_stack", lambda *a, **k: None)
    monkeypatch.setattr(generate_command, "prompt_for_texts", lambda *a, **k: None)
    monkeypatch.setattr(generate_command, "synthesize", lambda *a, **k: result)
    ref = str(data[0] / data[1][0]["messages"][2]["content"]["audio_url"])
    text = "x" * 67
    out = tmp_path / "o.wav"
    argv = ["--ref_audio", ref, "--ref_text", "x", "--text", text, "--output", str(out)]
    assert _script("generate").main(argv) == 1
    err = capsys.readouterr().err
    assert "too short for its text: 0.72 s for 67 characters (93 characters/s" in err
    assert "clipped: 100.0% of samples at full scale" in err and "--allow_bad_audio" in err
    assert sf.info(str(out)).frames == len(wave)
    assert _script("generate").main([*argv, "--allow_bad_audio"]) == 0
    captured = capsys.readouterr()
    assert "warning: audio check:" in captured.err and "clipped" in captured.err


# ----------------------------------------------------------------------------------------------- --speaker --data
def test_speaker_reference_is_the_longest_clean_clip_in_range(tmp_path):
    """On a built data set layout: the longest clip within 3-10 s wins unless it is clipped (then the next one),
    clips outside the range only when nothing in range is clean; an unknown speaker lists the known ones."""
    import soundfile as sf

    from higgs_train.chatml import cloning_sample
    from higgs_train.embedded.voices import SENTENCES, SPEAKERS, synthesize
    from higgs_train.speaker_reference import ReferenceError, pick_reference

    rate = 24000
    voice = synthesize(SPEAKERS[0], SENTENCES[0], seed=0)
    clips = {"a": 3.5, "b": 6.0, "clipped": 8.0, "long": 14.0, "other": 5.0}
    for name, seconds in clips.items():
        wave = np.resize(voice, int(seconds * rate)) * (8.0 if name == "clipped" else 1.0)
        (tmp_path / "audio").mkdir(exist_ok=True)
        sf.write(tmp_path / "audio" / f"{name}.wav", np.clip(wave, -1, 1), rate, subtype="PCM_16")
    text = " ".join(SENTENCES[:3])  # ~100 characters: plausible for every clip above 3 s

    def sample(target: str, ref: str, speaker: str = "anna") -> dict:
        return cloning_sample(f"{target}~{ref}", speaker, text, f"audio/{ref}.wav", text, f"audio/{target}.wav")

    rows = [sample("a", "clipped"), sample("clipped", "long"), sample("long", "a"), sample("other", "b", "ben")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (tmp_path / "val.jsonl").write_text(json.dumps(rows[3]) + "\n")
    (tmp_path / "data_report.json").write_text(json.dumps({"speakers": {"solo": {"clips": 1, "labelled_clips": 1}}}))

    ref = pick_reference(tmp_path, "anna")
    assert ref.audio_path == (tmp_path / "audio" / "a.wav").resolve() and ref.text == text
    assert ref.seconds == pytest.approx(3.5) and "clipped" in ref.skipped[0]
    assert pick_reference(tmp_path, "ben").audio_path.name == "b.wav"  # from val.jsonl, a reference turn
    with pytest.raises(ReferenceError, match=r"known speakers: anna, ben$"):
        pick_reference(tmp_path, "carl")
    with pytest.raises(ReferenceError, match="lists 1 clip.*two labelled clips"):
        pick_reference(tmp_path, "solo")
