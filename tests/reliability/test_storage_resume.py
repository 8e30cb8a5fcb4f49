"""Resuming from checkpoints on remote storage: ``s3://`` against a real S3 API on loopback (moto's server), and
``file://``.

The fast tests put real checkpoints (with a partial one and a planted pickle one beside them) on S3 and resume from
there without Ray; the integration tests run the whole job twice on the same storage: the first job loses its
training worker (SIGKILL, ``max_failures=0``) after a checkpoint and fails, the rerun of the same run name resumes
from the newest verified checkpoint in storage and ends with every step exactly once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray
import ray.train
from ckpt_fixtures import NEWER, OLDER, plant_pickle_checkpoint, trainer_for
from mlflow import MlflowClient
from ray_faults import WorkerKiller

from higgs_train.config import TrainingConfig
from higgs_train.driver.cluster import resolve_run
from higgs_train.driver.train import run_training_job
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.storage import filesystem_and_path
from higgs_train.tracking.store import embedded_tracking_uri
from higgs_train.training.checkpoint_store import find_resume_checkpoint, run_checkpoints


def upload(local: Path, uri: str) -> None:
    fs, path = filesystem_and_path(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def test_resume_from_s3_takes_the_newest_verified_checkpoint(tmp_path, s3, checkpoints, records, caplog):
    storage = f"{s3}/resume-unit"
    upload(checkpoints[2], f"{storage}/voice/{OLDER}")
    partial = shutil.copytree(checkpoints[4] / "adapter", tmp_path / "partial" / "adapter")  # an upload cut short
    shutil.copy(checkpoints[4] / "trainer_state.json", partial.parent)
    upload(partial.parent, f"{storage}/voice/{NEWER}")
    marker = tmp_path / "PWNED"
    upload(plant_pickle_checkpoint(tmp_path / "planted", marker), f"{storage}/voice/checkpoint_2099-01-01_00-00-00.0")

    assert [c.global_step for c in run_checkpoints(storage, "voice")] == [9999, 4, 2]
    found = find_resume_checkpoint(storage, "voice")
    assert found is not None and (found.location, found.global_step) == (f"{storage}/voice/{OLDER}", 2)
    config, run_name, resume = resolve_run(
        TrainingConfig(output_dir=str(tmp_path / "out" / "voice"), storage_path=storage)
    )
    assert resume == found.location
    state = trainer_for(tmp_path / "t", records).load_checkpoint(resume)  # downloaded, verified, loaded
    assert (state.global_step, [h["step"] for h in state.history]) == (2, [1, 2])
    assert not marker.exists()


def test_resume_from_file_uri_storage(tmp_path, checkpoints, records):
    """``file://`` storage goes through the same pyarrow path as ``s3://`` (Ray accepts both)."""
    storage = f"file://{tmp_path / 'ray_results'}"
    upload(checkpoints[2], f"{storage}/voice/{OLDER}")
    upload(checkpoints[4], f"{storage}/voice/{NEWER}")
    (tmp_path / "ray_results" / "voice" / NEWER / "optimizer.safetensors").unlink()  # partial
    _, _, resume = resolve_run(TrainingConfig(output_dir=str(tmp_path / "out" / "voice"), storage_path=storage))
    assert resume == f"{storage}/voice/{OLDER}"
    assert trainer_for(tmp_path / "t", records).load_checkpoint(resume).global_step == 2


def test_a_completed_run_on_s3_is_not_resumed(tmp_path, s3, checkpoints):
    storage = f"{s3}/completed"
    upload(checkpoints[4], f"{storage}/voice/{NEWER}")
    fs, path = filesystem_and_path(f"{storage}/voice/COMPLETED")
    with fs.open_output_stream(path) as out:
        out.write(b"{}")
    _, run_name, resume = resolve_run(TrainingConfig(output_dir=str(tmp_path / "voice"), storage_path=storage))
    assert (run_name, resume) == ("voice-2", None)


def test_the_driver_takes_the_final_outputs_from_the_checkpoint_in_storage(tmp_path, s3, checkpoints):
    """What the driver writes into --output_dir comes from the run's final checkpoint on S3, not from a worker's
    disk; a checkpoint of another step than the last reported one is refused, and nothing is published."""
    from higgs_train.driver.train import JobOutputsMissing, publish_final_outputs

    location = f"{s3}/final/voice/{NEWER}"
    upload(checkpoints[4], location)
    out = tmp_path / "driver-out"
    config = TrainingConfig(output_dir=str(out), lora_r=4)
    with pytest.raises(JobOutputsMissing, match="step 5 but .* of step 4"):
        publish_final_outputs(location, out, config, last_step=5)
    assert not (out / "adapter").exists() and not (out / "history.json").exists()

    history = publish_final_outputs(location, out, config, last_step=4)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert json.loads((out / "history.json").read_text()) == history
    stored = checkpoints[4] / "adapter" / "adapter_model.safetensors"
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == stored.read_bytes()
    assert TrainingConfig.load(out / "adapter" / "training_config.yaml") == config


def test_a_worker_restored_at_the_last_step_reports_the_final_checkpoint_again(tmp_path, checkpoints, records):
    """A worker lost after its final checkpoint reached storage, but before Ray registered it, is restored at the
    last step and runs none: it must report that state again, or Ray's latest checkpoint (where the driver takes the
    final adapter and history from) would be an older step."""
    trainer = trainer_for(tmp_path / "t", records, max_steps=4)
    trainer.load_checkpoint(checkpoints[4])
    result = trainer.train()
    assert result.state.global_step == 4 and trainer.context.reported[-1]["step"] == 4
    assert (tmp_path / "t" / "checkpoints" / "step_0000004" / "adapter" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------------
# Whole jobs: fail after a checkpoint, rerun, resume
# --------------------------------------------------------------------------------------------------------------------

MAX_STEPS = 6
SAVE_EVERY = 2


def logged_steps_of(tracking_uri: str, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in MlflowClient(tracking_uri).get_metric_history(run_id, "train/total_loss"))


@pytest.mark.integration
def test_a_rerun_on_s3_resumes_from_the_runs_checkpoints(tmp_path, s3):
    data = create_sample_data(tmp_path / "data", utterances_per_speaker=4)
    storage = f"{s3}/jobs"
    out = tmp_path / "out" / "voice"
    config = TrainingConfig(
        train_data=str(data["train"]),
        val_data=str(data["val"]),
        output_dir=str(out),
        storage_path=storage,
        batch_size=2,
        num_epochs=3,
        max_steps=MAX_STEPS,
        save_every_steps=SAVE_EVERY,
        eval_every_steps=SAVE_EVERY,
        warmup_steps=1,
    )
    tracking_uri = embedded_tracking_uri(out)
    killer = WorkerKiller(tracking_uri, storage, "voice").start()
    try:
        with pytest.raises(ray.train.WorkerGroupError, match="worker"):
            run_training_job(config.replace(max_failures=0))
    finally:
        ray.shutdown()
        killer.join()
    assert killer.killed
    saved = [c.global_step for c in run_checkpoints(storage, "voice")]
    assert saved and max(saved) < MAX_STEPS

    # Beside the real checkpoints, a planted pickle one at a higher step: the rerun must neither pick nor run it.
    marker = tmp_path / "PWNED"
    upload(plant_pickle_checkpoint(tmp_path / "planted", marker), f"{storage}/voice/checkpoint_2099-01-01_0.0")
    try:
        result = run_training_job(config)
    finally:
        ray.shutdown()

    newest = find_resume_checkpoint(storage, "voice")
    assert result.run_name == "voice" and result.resumed_from is not None
    assert result.resumed_from.startswith(f"{storage}/voice/checkpoint_")
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, MAX_STEPS + 1))
    assert logged_steps_of(tracking_uri, result.mlflow_run_id) == list(range(1, MAX_STEPS + 1))
    assert newest is not None and newest.global_step == MAX_STEPS
    assert not marker.exists()
    restored = sorted(
        int(m.step)
        for m in MlflowClient(tracking_uri).get_metric_history(result.mlflow_run_id, "train/restored_from_step")
    )
    assert len(restored) == 1 and killer.registered_step_at_kill <= restored[0] < MAX_STEPS
