"""Batched encoding gives the codes of one-by-one encoding, exactly; the decode stage hands over what it decoded;
`--data_actor_gpus` is refused on a cluster without GPUs."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from higgs_train.commands.train import config_from_args
from higgs_train.data import stage_sizing
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.clip_encoder import ClipEncoder, decode_clips
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.stage_sizing import data_actor_gpu_reason
from higgs_train.driver.cluster import ClusterResourcesError, check_cpu_budget
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import load_audio_tokenizer, load_text_tokenizer, resolve_paths

SR = 24_000
# 1 s: upstream's acoustic and semantic frame counts agree (one acoustic pass, batchable). 1 s + 517 samples: they
# differ and upstream re-encodes a padded copy (never batched); so do they at 0.9 s, a third length.
ONE_PASS, TWO_PASSES, OTHER = SR, SR + 517, 21_600


@pytest.fixture(scope="module")
def stack():
    paths = resolve_paths("embedded", "embedded")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a preprocessing actor runs (one thread per reserved CPU); faster on a busy box
    yield load_text_tokenizer(paths.tokenizer_path), load_audio_tokenizer(paths.audio_tokenizer_path)
    torch.set_num_threads(threads)


def _speechy(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * voiced + 0.02 * rng.standard_normal(n)).astype(np.float32)


def test_batched_codes_equal_one_by_one(stack):
    _, audio_tokenizer = stack
    lengths = [ONE_PASS] * 4 + [TWO_PASSES] * 2 + [OTHER]
    waves = {f"clip{i}": _speechy(n, i) for i, n in enumerate(lengths)}
    urls = {k: f"{k}.wav" for k in waves}
    solo = ClipEncoder(audio_tokenizer, max_batch=1)
    expected = {k: solo.encode_one(w, urls[k]).codes for k, w in waves.items()}
    batched = ClipEncoder(audio_tokenizer, max_batch=3)
    got = batched.encode_many(waves, urls)
    assert sorted(got) == sorted(waves)
    for key, codes in expected.items():
        assert codes.shape == got[key].codes.shape and np.array_equal(codes, got[key].codes), key
    # 1 s: one alone (learns the length takes one pass), then 3 stacked; 1 s + 517 and 0.9 s: each alone.
    assert batched.stats.calls == len(lengths) and batched.stats.batches == len(lengths) - 2
    assert batched._single_pass == {ONE_PASS: True, TWO_PASSES: False, OTHER: False}


def test_pre_decoded_batch_gives_the_same_records(stack, tmp_path):
    """Rows whose clips share a length, preprocessed from pre-decoded waves in batches, equal the plain path."""
    tokenizer, audio_tokenizer = stack
    out = create_sample_data(tmp_path / "sample", utterances_per_speaker=2)
    base = out["audio_base_path"]
    template = json.loads(out["train"].read_text())[0]
    rows = []
    for i in range(3):  # rows of two clips each, all clips 1 s long, each with its own content
        row = copy.deepcopy(template)
        audio = [m["content"] for m in row["messages"] if isinstance(m["content"], dict)]
        for j, content in enumerate(audio):
            content["audio_url"] = f"audio/same_{i}_{j}.wav"
            sf.write(base / content["audio_url"], _speechy(ONE_PASS, 10 * i + j), SR)
        rows.append({**row, "id": f"same_{i}", "row_index": i})
    rows.append({**template, "id": "missing", "row_index": 3})
    rows[-1] = copy.deepcopy(rows[-1])
    rows[-1]["messages"][2]["content"]["audio_url"] = "audio/none.wav"

    plain = SamplePreprocessor(tokenizer, audio_tokenizer, base).process_batch(rows)
    decoded = decode_clips(rows, base, SR, AudioLimits())
    assert len(decoded) == 6 and all(len(w) == ONE_PASS for w in decoded.values())  # the missing file is left out
    batched = SamplePreprocessor(tokenizer, audio_tokenizer, base, encode_batch_size=4)
    result = batched.process_batch(rows, decoded)
    assert [f.id for f in result.failures] == [f.id for f in plain.failures] == ["missing"]
    assert result.failures[0].reason == plain.failures[0].reason
    assert [r["audio_codes"].tolist() for r in result.records] == [r["audio_codes"].tolist() for r in plain.records]
    assert result.stats["encoder_calls"] == plain.stats["encoder_calls"] == 6
    assert result.stats["encoder_batches"] < 6  # the pre-decoded clips really went through stacked calls


def test_data_actor_gpus_is_validated_and_refused_on_a_cluster_without_gpus(monkeypatch):
    import ray

    assert config_from_args(["--data_actor_gpus", "0.5"]).data_actor_gpus == 0.5
    with pytest.raises(ValueError, match=r"TrainingConfig\.data_actor_gpus=-1"):
        config_from_args(["--data_actor_gpus", "-1"])
    assert data_actor_gpu_reason(2, 0.5, {"CPU": 2.0, "GPU": 1.0}) is None
    assert data_actor_gpu_reason(2, 0.0, {"CPU": 2.0}) is None
    # A CPU head (the driver's node) beside a GPU node: the build runs on the driver's node by default.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0, "GPU": 1.0})
    monkeypatch.setattr(stage_sizing, "this_node_resources", lambda: {"CPU": 2.0})
    config = config_from_args(["--data_actor_gpus", "0.5", "--dataloader_num_workers", "2"])
    with pytest.raises(ClusterResourcesError) as refused:
        check_cpu_budget(config)
    assert str(refused.value) == (
        "--data_actor_gpus 0.5 with 2 data actor(s) needs 1 GPU(s) but the driver's node has no GPUs; drop "
        "--data_actor_gpus to encode on CPUs, or lower dataloader_num_workers, or encode on the GPU nodes with "
        "--data_nodes any (audio and --cache_dir mounted on every node)"
    )
    check_cpu_budget(dataclasses.replace(config, data_nodes="any"))  # the cluster's GPU takes both actors
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ClusterResourcesError) as refused:
        check_cpu_budget(dataclasses.replace(config, data_nodes="any"))
    assert str(refused.value) == (
        "--data_actor_gpus 0.5 with 2 data actor(s) needs 1 GPU(s) but the Ray cluster has no GPUs; drop "
        "--data_actor_gpus to encode on CPUs, or lower dataloader_num_workers"
    )


def test_encode_device_benchmark_counts_calls_and_compares_codes_with_solo():
    """``benchmarks/encode_device.py`` (the GPU figures' script) on CPU: stacked calls are counted as such, and on CPU
    stacked codes equal the solo ones, so the share it reports is 1 (on an H200 it reported 0.997-0.999)."""
    from test_training_core import load_benchmark

    bench = load_benchmark("encode_device")
    argv = ["--tiny", "--device", "cpu", "--clip_seconds", "1", "--clips", "3", "--batches", "1", "3", "--repeats", "1"]
    summary = bench.main(argv)
    solo, stacked = summary["runs"]
    assert (solo["encoder_calls"], stacked["encoder_calls"]) == (3, 1)
    assert solo["codes_equal_to_solo"] == stacked["codes_equal_to_solo"] == 1.0
    assert summary["best_by_clip_length"]["1.0"]["one_per_call"] == solo["audio_seconds_per_wall_second"] > 0
