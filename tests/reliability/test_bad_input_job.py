"""A training job on planted bad rows goes on, trains every good row, and words each reason as the validator does;
an audio file that vanishes mid-preprocessing trains on the rerun after it is restored (the cache keeps no
file-system accident)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import soundfile as sf

from higgs_train.config import TrainingConfig
from higgs_train.data import ray_pipeline
from higgs_train.data.audio_io import AudioLimits
from higgs_train.data.reasons import Reason
from higgs_train.data.row_length import resolve_row_length_limit
from higgs_train.data.row_report import REPORT_FILE
from higgs_train.driver.train import run_training_job
from higgs_train.driver.validate import run_validate_data_only
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.model_loading import resolve_paths
from higgs_train.tracking.runs import find_runs

pytestmark = pytest.mark.integration

TARGET = 4


def _tone(seconds: float, sr: int, amplitude: float = 0.3, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def run_of(result) -> dict:
    """The MLflow record of one job's run (the project's store holds every run of the folder)."""
    return next(r for r in find_runs(result.tracking_uri, "higgs-train") if r["run_id"] == result.mlflow_run_id)


def test_job_quarantines_planted_rows_trains_the_rest_and_retrains_a_restored_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    paths = create_sample_data(data, utterances_per_speaker=2)
    good = json.loads(paths["train"].read_text())
    (data / "bad").mkdir()
    sf.write(data / "bad" / "loud.wav", _tone(2.0, 16000, amplitude=1e30), 16000, subtype="FLOAT")
    sf.write(data / "bad" / "full.wav", _tone(2.0, 16000), 16000)
    whole = (data / "bad" / "full.wav").read_bytes()
    (data / "bad" / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (data / "flaky").mkdir()
    sf.write(data / "flaky" / "clip.wav", _tone(2.5, 24000, hz=330.0), 24000)

    def variant(sample_id: str, target: str | None = None, text: str | None = None, **changes) -> dict:
        row = copy.deepcopy(good[0])
        row["id"] = sample_id
        if target is not None:
            row["messages"][TARGET]["content"] = {"type": "audio", "audio_url": target}
        if text is not None:
            row["messages"][3]["content"] = text
        row.update(changes)
        return row

    planted = [
        json.dumps(variant("invalid_utf8", text="Say PLACEHOLDER")).encode().replace(b"PLACEHOLDER", b"caf\xe9"),
        json.dumps(variant("lone_surrogate", text="Say \ud800 now")).encode(),
        json.dumps(variant("misc_list", misc=["x"])).encode(),
        json.dumps(variant("control_char", text="Ring \x1b[31m now")).encode(),
        json.dumps(variant("too_long", text="hello world " * 2500)).encode(),
        json.dumps(variant("loud", "bad/loud.wav")).encode(),
        json.dumps(variant("truncated", "bad/truncated.wav")).encode(),
    ]
    flaky = json.dumps(variant("flaky", "flaky/clip.wav")).encode()
    manifest = data / "mixed.jsonl"
    manifest.write_bytes(
        b"\n".join([*planted[:4], *(json.dumps(r).encode() for r in good), flaky, *planted[4:]]) + b"\n"
    )

    # --validate_data_only's verdict on the same manifest, with the job's default row-length limit
    stack = resolve_paths("embedded", "embedded")
    limit = resolve_row_length_limit(stack.model_path, stack.audio_tokenizer_path, 0)
    assert run_validate_data_only(manifest, None, data, tmp_path / "v", stack.tokenizer_path, AudioLimits(), limit) == 1
    validator = {r["id"]: r["reason"] for r in json.loads((tmp_path / "v" / REPORT_FILE).read_text())["invalid"]}
    assert len(validator) == len(planted) and "flaky" not in validator

    # The flaky file is there when the driver fingerprints it and gone when the actors reach it.
    real = ray_pipeline.audio_fingerprints

    def fingerprint_then_lose_the_file(*args, **kwargs):
        out = real(*args, **kwargs)
        if (data / "flaky" / "clip.wav").exists():
            shutil.move(data / "flaky" / "clip.wav", tmp_path / "clip.wav")
        return out

    monkeypatch.setattr(ray_pipeline, "audio_fingerprints", fingerprint_then_lose_the_file)

    def run(name: str):
        config = TrainingConfig(
            train_data=str(manifest),
            audio_base_path=str(data),
            output_dir=str(tmp_path / "out" / name),
            cache_dir=str(tmp_path / "cache"),
            num_epochs=1,
            batch_size=2,
            eval_every_steps=100,
            save_every_steps=100,
        )
        try:
            return run_training_job(config)
        finally:
            ray.shutdown()

    first = run("first")
    assert first.quarantined == len(planted) + 1
    quarantine = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "first" / "quarantine.parquet").to_pylist()}
    assert {i: q["reason"] for i, q in quarantine.items() if i != "flaky"} == validator  # identical wording
    assert quarantine["flaky"]["reason"] == Reason.AUDIO_PROBLEM.format(
        i=TARGET, error="audio file not found: flaky/clip.wav"
    )
    assert quarantine["too_long"]["stage"] == "train:length"
    history = json.loads((tmp_path / "out" / "first" / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, len(good) // 2 + 1))  # every good row, once
    run_record = run_of(first)
    assert run_record["status"] == "FINISHED" and run_record["metrics"]["data/train_rows"] == len(good)

    # Restored: the next run must not reuse the failure (same manifest, same cache root) and trains the row.
    shutil.move(tmp_path / "clip.wav", data / "flaky" / "clip.wav")
    monkeypatch.setattr(ray_pipeline, "audio_fingerprints", real)
    second = run("second")
    assert second.quarantined == len(planted)
    run_record = run_of(second)
    assert second.tracking_uri == first.tracking_uri and len(find_runs(second.tracking_uri, "higgs-train")) == 2
    assert run_record["metrics"]["data/train_rows"] == len(good) + 1
    assert run_record["metrics"]["data/encoder_calls"] == 1  # only the restored clip; the rest come from the store
    assert (second.adapter_dir / "adapter_model.safetensors").exists()
