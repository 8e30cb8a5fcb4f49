"""A training job on a manifest with bad rows: the bad rows are quarantined with reasons, every good row trains; the
validation hooks the driver hands its workers run there (a validation sample reaches MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import soundfile as sf
from mlflow import MlflowClient

from higgs_train.config import TrainingConfig
from higgs_train.driver.train import run_training_job
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.tracking.runs import find_runs

pytestmark = pytest.mark.integration


def test_job_quarantines_bad_rows_and_trains_every_good_row(tmp_path):
    paths = create_sample_data(tmp_path / "data")
    rows = json.loads(paths["train"].read_text())
    good = len(rows)
    missing = json.loads(json.dumps(rows[0]))
    missing["id"] = "bad_missing"
    missing["messages"][4]["content"]["audio_url"] = "audio/nowhere.wav"
    silent = json.loads(json.dumps(rows[1]))
    silent["id"] = "bad_silent"
    sf.write(tmp_path / "data" / "silent.wav", np.zeros(24000 * 2, dtype=np.float32), 24000)
    silent["messages"][4]["content"]["audio_url"] = "silent.wav"
    mixed = tmp_path / "data" / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in [missing, *rows, silent]) + "\n")

    config = TrainingConfig(
        train_data=str(mixed),
        val_data=str(paths["val"]),
        output_dir=str(tmp_path / "out" / "mixed"),
        num_epochs=1,
        batch_size=2,
        eval_every_steps=100,
        save_every_steps=100,
        stream_cache_uri=(tmp_path / "published").as_uri(),  # workers stream the entry from a file:// URI
        num_validation_samples=1,  # built on the worker by the hooks' builder in the WorkerSpec
        validation_sample_max_new_tokens=16,
    )
    try:
        result = run_training_job(config)
    finally:
        ray.shutdown()

    assert result.quarantined == 2
    quarantine = pq.read_table(tmp_path / "out" / "mixed" / "quarantine.parquet").to_pylist()
    reasons = {r["id"]: r["reason"] for r in quarantine}
    assert set(reasons) == {"bad_missing", "bad_silent"}
    assert "audio file not found: audio/nowhere.wav" in reasons["bad_missing"]
    assert "audio is silent" in reasons["bad_silent"]
    report = json.loads((tmp_path / "out" / "mixed" / "validation_report.json").read_text())
    assert report["total"] == good + 2 and report["valid"] == good
    assert {r["id"] for r in report["invalid"]} == {"bad_missing", "bad_silent"}

    run = find_runs(result.tracking_uri, "higgs-train")[0]
    assert run["status"] == "FINISHED"
    assert run["metrics"]["data/train_rows"] == good
    assert run["metrics"]["data/quarantined_rows"] == 2
    # Only the validation-sample hook logs these, and only on a worker that was handed it.
    assert run["metrics"]["val/sample_failures"] == 0 and "val/sample_code_agreement" in run["metrics"]
    samples = MlflowClient(result.tracking_uri).list_artifacts(run["run_id"], "samples")
    assert [a.path for a in samples] and all(a.path.startswith("samples/step_") for a in samples)
    history = json.loads((tmp_path / "out" / "mixed" / "history.json").read_text())
    # One epoch of batch 2 over the good rows: every good row is trained exactly once (see test_batching).
    assert [h["step"] for h in history] == list(range(1, good // 2 + 1))
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    # The driver published the training and validation entries (complete, _SUCCESS last) where the workers streamed
    # them from: the very entries it built in its local cache (default <output_dir>/../token_cache).
    published = {p.parent.name for p in (tmp_path / "published").glob("*/_SUCCESS")}
    built = {p.parent.name for p in (tmp_path / "out" / "token_cache").glob("*/_SUCCESS")}
    assert len(published) == 2 and published == built
