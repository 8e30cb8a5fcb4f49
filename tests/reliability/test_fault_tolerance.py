"""A training worker SIGKILLed mid-run is restarted by Ray Train and the run ends as if nothing happened; a second
launch of a running job is refused and leaves the first one's run and outputs alone.

Two real jobs (``run_training_job``: local Ray cluster, Ray Data preprocessing, ``TorchTrainer``, MLflow) on the same
data: one uninterrupted, one whose training worker is killed with SIGKILL after the first checkpoint and a step
past it. With ``max_failures`` > 0 Ray starts a new worker group, whose loop restores adapter, optimizer,
scheduler, RNG and data position from ``ray.train.get_checkpoint()``. The killed run must log every step exactly
once (history.json and MLflow) and end with the uninterrupted run's adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
from ray_faults import SecondJobs, WorkerKiller, logged_steps
from safetensors.torch import load_file

from higgs_train.config import TrainingConfig
from higgs_train.driver.train import run_training_job
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.store import embedded_tracking_uri
from higgs_train.training.checkpoint_store import RUN_LOCK_DIR, registered_checkpoints

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SAVE_EVERY = 3
ADAPTER_RTOL = 1e-6  # the resume tests' tolerance (CPU results are bit-identical in practice)


def job_config(data: dict[str, Path], out: Path, cache: Path, **overrides) -> TrainingConfig:
    settings = {
        "train_data": str(data["train"]),
        "val_data": str(data["val"]),
        "output_dir": str(out),
        "cache_dir": str(cache),
        "batch_size": 2,
        "num_epochs": 3,
        "max_steps": MAX_STEPS,
        "save_every_steps": SAVE_EVERY,
        "eval_every_steps": SAVE_EVERY,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        **overrides,
    }
    return TrainingConfig(**settings)


def relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def second_job_argv(config: TrainingConfig) -> list[str]:
    """The same job's command line (same data, output folder and so run name); one step, should it ever run."""
    flags = {"train_data": config.train_data, "val_data": config.val_data, "output_dir": config.output_dir}
    return [*(a for k, v in flags.items() for a in (f"--{k}", v)), "--cache_dir", config.cache_dir, "--max_steps", "1"]


def test_killed_worker_is_restarted_and_no_step_is_lost_or_doubled(tmp_path):
    data = create_sample_data(tmp_path / "data")
    cache = tmp_path / "token_cache"  # shared: the second job reuses the first one's preprocessing
    first = job_config(data, tmp_path / "out" / "uninterrupted", cache)
    storage = str(tmp_path / "out" / "uninterrupted" / "ray_results")
    # Issue 20 #2: the same job launched again from this checkout, seconds after the first and once it has a
    # checkpoint, while the first runs. Each is refused in one line; the first run ends as if alone.
    again = SecondJobs(second_job_argv(first), storage, "uninterrupted").start()
    try:
        reference = run_training_job(first)
    finally:
        ray.shutdown()
        refused = again.results()
    for moment, (code, err) in refused.items():
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert code == 1 and "Traceback" not in err, (moment, code, err[-3000:])
        assert last.startswith("error: run 'uninterrupted' is being trained by another job"), (moment, last)
        assert "--run_name" in last and f"pid {os.getpid()}" in last, last
    assert len(find_runs(reference.tracking_uri, "higgs-train")) == 1  # neither started an MLflow run
    assert [h["step"] for h in json.loads((reference.output_dir / "history.json").read_text())] == list(
        range(1, MAX_STEPS + 1)
    )
    assert only_registered_folders(storage, "uninterrupted")
    assert not list(Path(storage, "uninterrupted", RUN_LOCK_DIR).glob("*.json"))  # released at the end

    out = tmp_path / "out" / "killed"
    config = job_config(data, out, cache, max_failures=3)
    killer = WorkerKiller(embedded_tracking_uri(out), str(out / "ray_results"), "killed").start()
    try:
        result = run_training_job(config)
    finally:
        ray.shutdown()
        killer.join()

    # The fault happened mid-run: after the first checkpoint (step 3) and a step past it, before the last step.
    assert killer.killed, "no training worker was killed"
    assert killer.registered_step_at_kill == SAVE_EVERY
    assert SAVE_EVERY < max(killer.steps_logged_at_kill) < MAX_STEPS
    # Ray restarted the worker group once, and the new worker restored the newest checkpoint that verified in
    # storage: step 3, or step 6 when the kill came after its upload but before Ray registered it (issue 20 #5).
    assert killer.newest_verified_at_kill in (SAVE_EVERY, 2 * SAVE_EVERY)
    restored = metric_steps(result.tracking_uri, result.mlflow_run_id, "train/restored_from_step")
    assert restored == [killer.newest_verified_at_kill]
    # Every step exactly once: in the run's history and in MLflow.
    history = json.loads((result.output_dir / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, MAX_STEPS + 1))
    assert logged_steps(result.tracking_uri, "killed") == list(range(1, MAX_STEPS + 1))
    # The same losses and the same final adapter as the uninterrupted run.
    expected = json.loads((reference.output_dir / "history.json").read_text())
    for want, got in zip(expected, history, strict=True):
        assert got["train/total_loss"] == pytest.approx(want["train/total_loss"], rel=1e-6), got["step"]
    want = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    got = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert relative_difference(want, got) < ADAPTER_RTOL
    # Ray's retention still holds after the restart: best keep_best_k by val_loss plus the latest.
    kept = registered_checkpoints(str(out / "ray_results"), "killed")
    assert len(kept) <= config.keep_best_k + 1 and max(kept.values()) == MAX_STEPS
    assert only_registered_folders(str(out / "ray_results"), "killed")  # nothing orphaned by the restart


def only_registered_folders(storage: str, run_name: str) -> bool:
    """Every checkpoint folder of the run is one Ray registered (its retention then covers them all)."""
    folders = {p.name for p in Path(storage, run_name).glob("checkpoint_*") if p.is_dir()}
    return bool(folders) and folders == set(registered_checkpoints(storage, run_name))


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(int(m.step) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))
