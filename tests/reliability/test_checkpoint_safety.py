"""Checkpoints from storage are data, never code; partial ones are never resumed; run names cannot escape storage.

Planted faults: a pickle checkpoint whose unpickling would create a marker file (at a higher step than the real
ones, inside the run folder and deeper), a partly written checkpoint newer than a complete one (no manifest, a
missing file, a truncated file, a flipped byte), checkpoints of other runs, and path-escaping run names.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from ckpt_fixtures import (
    NEWER,
    OLDER,
    pickle_payload,
    place,
    plant_pickle_checkpoint,
    trainer_for,
)

from higgs_train.config import TrainingConfig
from higgs_train.driver.cluster import RunSetupError, resolve_run
from higgs_train.training.checkpoint import (
    CheckpointError,
    load_rng_state,
    rng_state,
    save_rng_state,
    set_rng_state,
    verify_checkpoint,
)
from higgs_train.training.checkpoint_store import find_resume_checkpoint


def job_config(tmp_path, storage, **overrides) -> TrainingConfig:
    return TrainingConfig(output_dir=str(tmp_path / "out" / "voice"), storage_path=str(storage), **overrides)


# --------------------------------------------------------------------------------------------------------------------
# No pickle
# --------------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_holds_no_pickle_and_loads_with_unpickling_disabled(tmp_path, checkpoints, records, monkeypatch):
    ckpt = checkpoints[4]
    names = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert {"manifest.json", "optimizer.safetensors", "rng.safetensors", "scheduler.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".bin"))]

    def refuse(*_args, **_kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = trainer_for(tmp_path / "fresh", records)
    state = fresh.load_checkpoint(ckpt)
    assert (state.global_step, state.epoch, state.step_in_epoch) == (4, 1, 1)
    assert [h["step"] for h in state.history] == [1, 2, 3, 4]


def test_rng_state_round_trips_through_safetensors_and_json(tmp_path):
    save_rng_state(tmp_path, rng_state())
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_state(load_rng_state(tmp_path))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_planted_pickle_checkpoint_is_refused_without_running_anything(tmp_path, checkpoints, records, caplog):
    marker = tmp_path / "PWNED"
    # The payload is live: unpickling it does create the marker (so the assertions below can fail).
    pickle.loads(pickle_payload(marker))
    assert marker.exists()
    marker.rmdir()

    storage = tmp_path / "ray_results"
    genuine = place(checkpoints[2], storage / "voice", OLDER)
    planted = plant_pickle_checkpoint(storage / "voice" / "checkpoint_2099-01-01_00-00-00.000000", marker)
    plant_pickle_checkpoint(storage / "voice" / "old" / "deep" / "step_9999", marker, step=99999)

    # Pointing at it explicitly, or loading it into a trainer, is refused with the reason.
    with pytest.raises(CheckpointError, match="pickle-based checkpoint"):
        trainer_for(tmp_path / "t", records).load_checkpoint(planted)
    with pytest.raises(RunSetupError, match="pickle-based checkpoint"):
        resolve_run(job_config(tmp_path, storage, resume_from=str(planted)))
    # A plain rerun of the run: the planted checkpoints (higher steps) are skipped, the real one is chosen; the
    # planted folder among the run's checkpoint folders is removed as debris (Ray never registered it).
    with caplog.at_level(logging.WARNING):
        config, run_name, resume = resolve_run(job_config(tmp_path, storage))
    assert (run_name, resume) == ("voice", str(genuine))
    assert any(planted.name in r.getMessage() and "pickle" in r.getMessage() for r in caplog.records)
    assert not planted.exists() and genuine.exists()
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------------
# Partial checkpoints
# --------------------------------------------------------------------------------------------------------------------


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


BREAKAGES = {
    "no manifest": lambda c: (c / "manifest.json").unlink(),
    "missing file": lambda c: (c / "optimizer.safetensors").unlink(),
    "truncated file": lambda c: truncate(c / "adapter" / "adapter_model.safetensors"),
    "flipped byte": lambda c: flip_a_byte(c / "rng.safetensors"),
    "manifest lists an escaping path": lambda c: (c / "manifest.json").write_text(
        json.dumps(
            {
                "format": "higgs-train-checkpoint/2",
                "files": {
                    **json.loads((c / "manifest.json").read_text())["files"],
                    "../../etc/passwd": {"size": 1, "sha256": "0"},
                },
            }
        )
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_partial_checkpoint_newer_than_a_complete_one_is_skipped_with_a_warning(
    tmp_path, checkpoints, records, caplog, breakage
):
    storage = tmp_path / "ray_results"
    complete = place(checkpoints[2], storage / "voice", OLDER)
    partial = place(checkpoints[4], storage / "voice", NEWER)
    BREAKAGES[breakage](partial)

    with pytest.raises(CheckpointError):
        verify_checkpoint(partial)
    with caplog.at_level(logging.WARNING):
        found = find_resume_checkpoint(str(storage), "voice")
    assert found is not None and (found.location, found.global_step) == (str(complete), 2)
    skipped = [r.getMessage() for r in caplog.records if partial.name in r.getMessage()]
    assert skipped and "step 4" in skipped[0]
    # The driver resumes from it, and the trainer continues from step 2; the partial folder is cleaned away.
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume == str(complete)
    assert not partial.exists()
    assert trainer_for(tmp_path / "t", records).load_checkpoint(resume).global_step == 2


def test_a_checkpoint_ray_registered_is_never_deleted_even_if_it_does_not_verify(tmp_path, checkpoints):
    storage = tmp_path / "ray_results"
    broken = place(checkpoints[4], storage / "voice", NEWER)
    BREAKAGES["flipped byte"](broken)
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": NEWER, "metrics": {}}]}
    (storage / "voice" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume is None and broken.exists()


def test_no_verified_checkpoint_means_a_fresh_start(tmp_path, checkpoints):
    storage = tmp_path / "ray_results"
    BREAKAGES["truncated file"](place(checkpoints[4], storage / "voice", NEWER))
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume is None


# --------------------------------------------------------------------------------------------------------------------
# Only the run's own checkpoints
# --------------------------------------------------------------------------------------------------------------------


def test_auto_resume_considers_only_the_runs_own_checkpoint_folders(tmp_path, checkpoints):
    storage = tmp_path / "ray_results"
    own = place(checkpoints[2], storage / "voice", OLDER)
    # Complete checkpoints at a higher step, but not Ray Train checkpoint folders of run "voice":
    place(checkpoints[4], storage / "voice" / "elsewhere", NEWER)  # deeper in the run folder
    place(checkpoints[4], storage / "voice", "step_0000004")  # not named like Ray's checkpoint folders
    place(checkpoints[4], storage / "voice-2", NEWER)  # another run
    place(checkpoints[4], storage, NEWER)  # the storage root
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume == str(own)


def test_a_completed_run_is_not_resumed_but_continued_under_a_new_name(tmp_path, checkpoints):
    storage = tmp_path / "ray_results"
    place(checkpoints[4], storage / "voice", NEWER)
    (storage / "voice" / "COMPLETED").write_text("{}")
    _, run_name, resume = resolve_run(job_config(tmp_path, storage))
    assert (run_name, resume) == ("voice-2", None)


# --------------------------------------------------------------------------------------------------------------------
# Run names
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "..", "a/b", "/abs", "a\\b", ".hidden", "-flag", "na me", "x" * 129, "a..b", "é"]
)
def test_a_run_name_that_could_leave_the_storage_root_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="run_name"):
        TrainingConfig(run_name=name)
    assert not (tmp_path / "x").exists()


def test_a_derived_run_name_is_checked_too(tmp_path):
    with pytest.raises(ValueError, match="run name"):
        resolve_run(TrainingConfig(output_dir=str(tmp_path / "my voice"), storage_path=str(tmp_path / "s")))


@pytest.mark.parametrize("name", ["my-voice", "run_2.v1", "A", "x" * 128])
def test_ordinary_run_names_are_accepted(name):
    assert TrainingConfig(run_name=name).run_name == name


def test_unregistered_complete_checkpoints_go_once_ray_holds_a_newer_one(tmp_path, checkpoints):
    """A crash between an upload and Ray's registration leaves a complete folder Ray's retention never deletes."""
    storage = tmp_path / "ray_results"
    stale = place(checkpoints[2], storage / "voice", OLDER)
    registered = place(checkpoints[4], storage / "voice", NEWER)
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": NEWER, "metrics": {"step": 4}}]}
    (storage / "voice" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume == str(registered) and not stale.exists()


def test_an_unregistered_checkpoint_newer_than_rays_is_resumed_from(tmp_path, checkpoints):
    storage = tmp_path / "ray_results"
    place(checkpoints[2], storage / "voice", OLDER)
    newest = place(checkpoints[4], storage / "voice", NEWER)
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": OLDER, "metrics": {"step": 2}}]}
    (storage / "voice" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    _, _, resume = resolve_run(job_config(tmp_path, storage))
    assert resume == str(newest)


# --------------------------------------------------------------------------------------------------------------------
# The worker's choice after a restart: Ray's latest reported checkpoint vs the driver's
# --------------------------------------------------------------------------------------------------------------------


def restored_step(tmp_path, records, reported, resume_from, stored=None) -> int:
    from ray.train import Checkpoint

    from higgs_train.driver.worker import restore_worker

    trainer = trainer_for(tmp_path / "w", records)
    trainer.setup()
    restore_worker(trainer, Checkpoint.from_directory(str(reported)) if reported else None, resume_from, stored)
    return trainer.state.global_step


def test_a_restarted_worker_restores_the_newest_checkpoint_that_verifies(tmp_path, checkpoints, records, caplog):
    assert restored_step(tmp_path / "a", records, checkpoints[4], str(checkpoints[2])) == 4
    assert restored_step(tmp_path / "b", records, checkpoints[2], str(checkpoints[4])) == 4
    assert restored_step(tmp_path / "c", records, None, str(checkpoints[2])) == 2
    assert restored_step(tmp_path / "d", records, None, "") == 0
    broken = shutil.copytree(checkpoints[4], tmp_path / "broken")
    BREAKAGES["flipped byte"](broken)
    with caplog.at_level(logging.WARNING):
        assert restored_step(tmp_path / "e", records, broken, str(checkpoints[2])) == 2
    assert any("not restoring" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from verifies"):
        restored_step(tmp_path / "f", records, broken, "")


def test_a_restarted_worker_takes_a_newer_verified_checkpoint_ray_never_registered(tmp_path, checkpoints, records):
    """Issue 20 #5: killed after uploading step 4 but before Ray registered it, the worker came back at step 2.

    Ray hands the restarted worker its newest *registered* checkpoint (step 2); the run's folder also holds the
    complete step-4 upload and a newer partial one. The worker restores step 4; when the job ends, the unregistered
    folders go (``remove_debris``) once Ray holds a newer checkpoint, so none is left orphaned.
    """
    from higgs_train.training.checkpoint_store import remove_debris

    storage = tmp_path / "ray_results"
    registered = place(checkpoints[2], storage / "voice", OLDER)
    unregistered = place(checkpoints[4], storage / "voice", NEWER)
    partial = place(checkpoints[4], storage / "voice", "checkpoint_2026-01-01_00-00-03.000003")
    BREAKAGES["truncated file"](partial)
    stored = (str(storage), "voice")
    assert restored_step(tmp_path / "a", records, registered, "", stored) == 4
    assert restored_step(tmp_path / "b", records, registered, "", None) == 2  # what Ray alone offered
    # The run goes on and Ray registers its later checkpoints; at the end only registered folders remain.
    final = place(checkpoints[4], storage / "voice", "checkpoint_2026-01-01_00-00-09.000009")
    snapshot = {
        "checkpoint_results": [
            {"checkpoint_dir_name": OLDER, "metrics": {"step": 2}},
            {"checkpoint_dir_name": final.name, "metrics": {"step": 6}},
        ]
    }
    (storage / "voice" / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    remove_debris(str(storage), "voice")
    assert sorted(p.name for p in (storage / "voice").glob("checkpoint_*/")) == sorted([OLDER, final.name])
    assert not unregistered.exists() and not partial.exists()
