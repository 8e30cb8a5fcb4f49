"""One live driver per run: the run lock on the run's storage, and a bad ``--resume_from`` refused in one line.

Two jobs of the same run name used to share one ``ray_results/<run>`` (orphaned checkpoints, last-writer-wins
outputs), and a second job started later "resumed" from the first's in-flight checkpoint, which the first's
retention then deleted. The lock is tested here directly (two acquirers, a stale lease, a dead or reused pid, a
claim of another host, S3 through moto), and through ``resolve_run``, which must refuse before it looks at or
removes anything in the run's folder. The whole-job cases (two jobs at once, one started mid-run) ride on the
fault-tolerance test's uninterrupted run (``test_fault_tolerance.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from higgs_train.commands.train import main as train_main
from higgs_train.config import TrainingConfig
from higgs_train.driver.cluster import RunSetupError, resolve_run
from higgs_train.processes import pid_space
from higgs_train.storage import filesystem_and_path, join
from higgs_train.training.checkpoint_store import (
    RUN_LOCK_DIR,
    LockOwner,
    RunLock,
    RunLockHeld,
)


def no_sleep(seconds: float) -> None:
    """Backoff between claim attempts, skipped in tests (nothing else runs between the attempts here)."""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plant_claim(storage: str, run: str, **fields) -> str:
    """A claim file as another driver would have written it; returns its location."""
    now = time.time()
    owner = {
        "token": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": 0.0,
        "started_at": now,
        "heartbeat_at": now,
        "lease_s": 60.0,
        "note": "output elsewhere",
        "pid_space": pid_space(),
        **fields,
    }
    fs, root = filesystem_and_path(join(storage, run, RUN_LOCK_DIR))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{owner['token']}.json") as stream:
        stream.write(json.dumps(owner).encode())
    return f"{root}/{owner['token']}.json"


def claims(storage: str, run: str) -> list[str]:
    fs, root = filesystem_and_path(join(storage, run, RUN_LOCK_DIR))
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)))


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------------------------------------
# The lock itself
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["local", "file"])
def test_a_second_acquirer_is_refused_while_the_first_holds_the_run(tmp_path, scheme):
    storage = str(tmp_path / "ray_results") if scheme == "local" else f"file://{tmp_path / 'ray_results'}"
    first = RunLock(storage, "voice", note="output outputs/voice", sleep=no_sleep).acquire()
    second = RunLock(storage, "voice", sleep=no_sleep)
    with pytest.raises(RunLockHeld) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "output outputs/voice" in message
    assert claims(storage, "voice") == [f"{first.owner.token}.json"]  # the refused one left no claim behind
    assert RunLock(storage, "other-run", sleep=no_sleep).acquire()  # other run names are independent
    first.release()
    assert claims(storage, "voice") == []
    second.acquire()
    assert claims(storage, "voice") == [f"{second.owner.token}.json"]


def test_a_claim_past_its_lease_is_taken_over_and_a_fresh_one_is_not(tmp_path, caplog):
    storage = str(tmp_path)
    clock = Clock(1_000_000.0)
    holder = RunLock(storage, "voice", lease_s=60, clock=clock, sleep=no_sleep).acquire()  # this live process
    clock.now += 59
    with pytest.raises(RunLockHeld, match="refreshed 59 s ago"):
        RunLock(storage, "voice", clock=clock, sleep=no_sleep).acquire()
    holder.refresh()  # the heartbeat renews the lease
    clock.now += 59
    with pytest.raises(RunLockHeld):
        RunLock(storage, "voice", clock=clock, sleep=no_sleep).acquire()
    clock.now += 2  # 61 s without a heartbeat: its driver is gone (or cut off its storage)
    with caplog.at_level(logging.WARNING):
        taker = RunLock(storage, "voice", clock=clock, sleep=no_sleep).acquire()
    assert claims(storage, "voice") == [f"{taker.owner.token}.json"]
    assert any("no heartbeat for 61 s" in r.getMessage() for r in caplog.records)


def test_a_claim_whose_process_died_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    plant_claim(str(tmp_path), "voice", token="dead", pid=dead_pid())
    plant_claim(str(tmp_path), "voice", token="reused", pid=os.getpid(), pid_started=1.0)  # pid now another process
    with caplog.at_level(logging.WARNING):
        lock = RunLock(str(tmp_path), "voice", sleep=no_sleep).acquire()
    assert claims(str(tmp_path), "voice") == [f"{lock.owner.token}.json"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "has exited" in messages and "is another process now" in messages


def test_a_claim_of_another_host_counts_until_its_lease_ends(tmp_path):
    """From another host the process table says nothing: a dead pid number there is no proof."""
    plant_claim(str(tmp_path), "voice", host="another-host.example", pid=dead_pid())
    sleeps = []
    with pytest.raises(RunLockHeld, match="another-host.example"):
        RunLock(str(tmp_path), "voice", sleep=sleeps.append).acquire()
    assert len(sleeps) == 2  # withdrew and retried (a simultaneous claimant would have withdrawn too), then refused
    assert claims(str(tmp_path), "voice") == ["other.json"]


def test_a_claim_from_another_pid_namespace_counts_until_its_lease_ends(tmp_path):
    """Containers may share the host name (host networking) but not the process table: a pid there is no proof."""
    plant_claim(str(tmp_path), "voice", pid=dead_pid(), pid_space="another-boot:4026531836")
    with pytest.raises(RunLockHeld):
        RunLock(str(tmp_path), "voice", sleep=no_sleep).acquire()


def test_an_unreadable_claim_is_removed(tmp_path, caplog):
    path = plant_claim(str(tmp_path), "voice")
    with open(path, "wb") as stream:
        stream.write(pickle.dumps({"token": "x"}))  # not JSON: never unpickled, removed
    with caplog.at_level(logging.WARNING):
        RunLock(str(tmp_path), "voice", sleep=no_sleep).acquire()
    assert any("unreadable run lock claim" in r.getMessage() for r in caplog.records)


def test_the_lock_works_on_s3(s3):
    storage = f"{s3}/locks"
    clock = Clock(time.time())
    first = RunLock(storage, "voice", clock=clock, sleep=no_sleep).acquire()
    with pytest.raises(RunLockHeld, match="voice"):
        RunLock(storage, "voice", clock=clock, sleep=no_sleep).acquire()
    clock.now += 30
    first.refresh()
    fs, path = filesystem_and_path(f"{storage}/voice/{RUN_LOCK_DIR}/{first.owner.token}.json")
    with fs.open_input_stream(path) as stream:
        assert LockOwner.from_json(stream.read().decode()).heartbeat_at == clock.now
    first.release()
    assert claims(storage, "voice") == []
    with RunLock(storage, "voice", sleep=no_sleep) as held:
        assert claims(storage, "voice") == [f"{held.owner.token}.json"]
    assert claims(storage, "voice") == []


# --------------------------------------------------------------------------------------------------------------------
# Through the driver's run resolution
# --------------------------------------------------------------------------------------------------------------------


def job_config(tmp_path, **overrides) -> TrainingConfig:
    return TrainingConfig(output_dir=str(tmp_path / "out" / "voice"), storage_path=str(tmp_path / "s"), **overrides)


def test_a_run_held_by_a_live_job_is_refused_before_its_folder_is_touched(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", no_sleep)  # the claim retries' backoff
    run_dir = tmp_path / "s" / "voice"
    in_flight = run_dir / "checkpoint_2026-01-01_00-00-00.000000"  # the live job's upload in progress
    in_flight.mkdir(parents=True)
    (in_flight / "adapter").mkdir()
    plant_claim(str(tmp_path / "s"), "voice", host="another-host.example")
    with contextlib.ExitStack() as hold, pytest.raises(RunSetupError) as refused:
        resolve_run(job_config(tmp_path), hold)
    message = str(refused.value)
    assert "\n" not in message and "--run_name" in message and "--output_dir" in message
    assert "another-host.example" in message and "60 s after its last refresh" in message
    assert in_flight.is_dir()  # not removed as debris: it belongs to the live job


def test_a_held_run_is_released_when_the_job_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", no_sleep)  # the claim retries' backoff
    with contextlib.ExitStack() as hold:
        _, run_name, _ = resolve_run(job_config(tmp_path), hold)
        assert run_name == "voice" and len(claims(str(tmp_path / "s"), "voice")) == 1
        with contextlib.ExitStack() as second, pytest.raises(RunSetupError, match="being trained by another job"):
            resolve_run(job_config(tmp_path), second)
    assert claims(str(tmp_path / "s"), "voice") == []
    (tmp_path / "s" / "voice" / "COMPLETED").write_text("{}")
    with contextlib.ExitStack() as hold:  # a completed run: the rerun gets the next name, and holds that one
        _, run_name, _ = resolve_run(job_config(tmp_path), hold)
        assert run_name == "voice-2" and len(claims(str(tmp_path / "s"), "voice-2")) == 1


def test_a_run_completed_between_the_look_and_the_lock_is_not_resumed(tmp_path, monkeypatch):
    """The first job writes COMPLETED and lets go just as the second looks: the second must not resume it."""
    from higgs_train.driver import cluster

    real = cluster.hold_run

    def completed_meanwhile(storage, run_name, output_dir):
        if run_name == "voice":
            (tmp_path / "s" / "voice").mkdir(parents=True, exist_ok=True)
            (tmp_path / "s" / "voice" / "COMPLETED").write_text("{}")
        return real(storage, run_name, output_dir)

    monkeypatch.setattr(cluster, "hold_run", completed_meanwhile)
    with contextlib.ExitStack() as hold:
        _, run_name, resume = resolve_run(job_config(tmp_path), hold)
        assert (run_name, resume) == ("voice-2", None)
        assert claims(str(tmp_path / "s"), "voice") == [] and len(claims(str(tmp_path / "s"), "voice-2")) == 1


# --------------------------------------------------------------------------------------------------------------------
# A bad --resume_from: one line, what is wrong and what to do
# --------------------------------------------------------------------------------------------------------------------


def bad_resume_from(tmp_path) -> dict[str, str]:
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(pickle.dumps({"state_dict": {}}))
    (tmp_path / "not_a_checkpoint").mkdir()
    (tmp_path / "not_a_checkpoint" / "notes.txt").write_text("hello")
    return {
        "missing": (str(tmp_path / "nowhere"), "no such file or folder"),
        "pickled file": (str(pickled), "is a file, not a checkpoint folder"),
        "folder": (str(tmp_path / "not_a_checkpoint"), "is not a complete higgs-train checkpoint"),
        "unknown scheme": ("nosuch://bucket/ckpt", "cannot be read"),
    }


@pytest.mark.parametrize("case", ["missing", "pickled file", "folder", "unknown scheme"])
def test_a_bad_resume_from_is_one_line_with_what_to_do(tmp_path, capsys, case):
    location, reason = bad_resume_from(tmp_path)[case]
    out = tmp_path / "out" / "voice"
    assert train_main(["--output_dir", str(out), "--resume_from", location]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: --resume_from") and reason in err[-1]
    assert "leave --resume_from out" in err[-1]
    assert not out.exists()  # refused before MLflow, Ray or any output


# --------------------------------------------------------------------------------------------------------------------
# Outputs written whole
# --------------------------------------------------------------------------------------------------------------------


def test_an_output_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from higgs_train.atomic_files import write_atomic

    target = tmp_path / "history.json"
    write_atomic(target, '[{"step": 1}]')
    assert target.read_text() == '[{"step": 1}]' and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~umask())

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, '[{"step": 1}, {"step": 2}]')
    assert target.read_text() == '[{"step": 1}]'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary file left behind


def test_an_output_folder_is_published_whole(tmp_path):
    from higgs_train.atomic_files import replace_dir, staging_dir

    final = tmp_path / "adapter"
    final.mkdir()
    (final / "adapter_model.safetensors").write_text("old weights")
    (final / "stale_extra.bin").write_text("old")
    staging = staging_dir(final)
    (staging / "adapter_model.safetensors").write_text("new weights")
    (staging / "adapter_config.json").write_text("{}")
    replace_dir(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (final / "adapter_model.safetensors").read_text() == "new weights"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # neither the staging nor the old folder remains
    assert oct(final.stat().st_mode & 0o777) == oct(0o777 & ~umask())


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
