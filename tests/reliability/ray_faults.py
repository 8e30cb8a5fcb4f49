"""Fault injection for the reliability tests: SIGKILL this test's own Ray Train worker once training is under way.

The worker is found in this process's own process tree (the local Ray cluster the job starts is a child of the
test process), by its process title ``ray::RayTrainWorker``: other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import psutil

from higgs_train.tracking import find_runs
from higgs_train.training.checkpoint_store import registered_checkpoints


def train_worker_pids() -> list[int]:
    """PIDs of the Ray Train worker processes started under this process."""
    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::RayTrainWorker"):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def logged_steps(
    tracking_uri: str, run_name: str, experiment: str = "higgs-train", key: str = "train/total_loss"
) -> list[int]:
    """Every step at which ``key`` was logged in the run named ``run_name``, duplicates included, in order (the
    project's store holds the runs of every output dir beside it)."""
    from mlflow import MlflowClient

    runs = [r for r in find_runs(tracking_uri, experiment) if r["run_name"] == run_name]
    if not runs:
        return []
    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(runs[0]["run_id"], key)
    return sorted(int(m.step) for m in history)


@dataclass
class WorkerKiller:
    """Background thread: SIGKILL the training worker(s) mid-run, between two checkpoints.

    It waits until Ray has registered a checkpoint of the run (its snapshot in storage lists one) and MLflow shows
    a step past that checkpoint logged, so the restart has steps to repeat and a checkpoint to restore.
    """

    tracking_uri: str
    storage: str
    run_name: str
    timeout_s: float = 900.0
    killed: list[int] = field(default_factory=list)
    steps_logged_at_kill: list[int] = field(default_factory=list)
    registered_step_at_kill: int = -1
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> WorkerKiller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                steps = logged_steps(self.tracking_uri, self.run_name)
            except Exception:  # the store may not exist yet or be mid-write
                steps = []
            registered = max(registered_checkpoints(self.storage, self.run_name).values(), default=0)
            if registered and steps and max(steps) > registered:
                pids = train_worker_pids()
                if pids:
                    self.steps_logged_at_kill = steps
                    self.registered_step_at_kill = registered
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    self.killed = pids
                    return
            self._stop.wait(0.2)

    def join(self) -> None:
        """Stop watching (the run is over: a killer must not outlive its test's storage) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
