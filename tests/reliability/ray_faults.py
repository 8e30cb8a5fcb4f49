"""Fault injection for the reliability tests: SIGKILL this test's own Ray Train worker once training is under way.

The worker is found in this process's own process tree (the local Ray cluster the job starts is a child of the
test process), by its process title ``ray::RayTrainWorker``: other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyarrow.fs as pafs

from higgs_train.storage import join
from higgs_train.tracking.runs import find_runs
from higgs_train.training.checkpoint_store import RUN_LOCK_DIR, find_resume_checkpoint, registered_checkpoints

ROOT = Path(__file__).resolve().parents[2]


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


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    """Wait until the processes have exited (a SIGKILLed worker writes nothing more to storage after that)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=timeout_s)


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
    # What to kill (default: this process's Ray Train workers; the two-node test: one node's raylet), and what to do
    # once they are gone (the two-node test: start the lost node again).
    targets: Callable[[], list[int]] = train_worker_pids
    then: Callable[[], None] | None = None
    killed: list[int] = field(default_factory=list)
    steps_logged_at_kill: list[int] = field(default_factory=list)
    registered_step_at_kill: int = -1
    newest_verified_at_kill: int = -1
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
                pids = self.targets()
                if pids:
                    self.steps_logged_at_kill = steps
                    self.registered_step_at_kill = registered
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    wait_gone(pids)
                    # What storage holds once the workers are gone: an upload Ray had no time to register counts.
                    newest = find_resume_checkpoint(self.storage, self.run_name)
                    self.newest_verified_at_kill = newest.global_step if newest else -1
                    self.killed = pids
                    if self.then is not None:
                        self.then()
                    return
            self._stop.wait(0.2)

    def join(self) -> None:
        """Stop watching (the run is over: a killer must not outlive its test's storage) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# A second launch of the train command, its modules imported ahead, that runs ``commands.train.main`` (what
# ``ray_jobs/train.py`` runs) only when told "go" on stdin: the test picks the moment, and the import time (seconds
# on a loaded 2-CPU runner) does not move it.
_SECOND_JOB = """
import sys
from higgs_train.commands import train
import higgs_train.data.preflight, higgs_train.driver.train, higgs_train.training.checkpoint_store
if sys.stdin.readline().strip() != "go":
    sys.exit(3)
sys.exit(train.main(sys.argv[1:]))
"""


@dataclass
class SecondJobs:
    """Launch the same job again while a first one runs, at two moments, from the same checkout and folders.

    ``concurrent``: as soon as the first job holds its run (its lock claim is in storage: it is still preparing,
    as two jobs started seconds apart are); ``staggered``: once Ray has registered the first job's first
    checkpoint (the second job used to "resume" from it and have it deleted under it).
    """

    argv: list[str]
    storage: str
    run_name: str
    timeout_s: float = 900.0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _stderr: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SecondJobs:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for moment in ("concurrent", "staggered"):
            self._stderr[moment] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- closed in results(); a pipe could fill up
            self.procs[moment] = subprocess.Popen(
                [sys.executable, "-c", _SECOND_JOB, *self.argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr[moment],
                text=True,
            )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _go(self, moment: str) -> None:
        stdin = self.procs[moment].stdin
        stdin.write("go\n")
        stdin.close()

    def _run(self) -> None:
        from higgs_train.storage import filesystem_and_path

        fs, lock_dir = filesystem_and_path(join(self.storage, self.run_name, RUN_LOCK_DIR))
        deadline = time.monotonic() + self.timeout_s
        waiting = ["concurrent", "staggered"]
        while waiting and time.monotonic() < deadline and not self._stop.is_set():
            if waiting[0] == "concurrent":
                infos = fs.get_file_info(pafs.FileSelector(lock_dir, allow_not_found=True))
                ready = any(i.base_name.endswith(".json") for i in infos)
            else:
                ready = bool(registered_checkpoints(self.storage, self.run_name))
            if ready:
                self._go(waiting.pop(0))
                continue
            self._stop.wait(0.2)

    def results(self) -> dict[str, tuple[int, str]]:
        """{moment: (exit code, stderr)}; a job never told to go is stopped (exit code 3)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        out = {}
        for moment, proc in self.procs.items():
            if not proc.stdin.closed:
                proc.stdin.close()  # EOF: the script exits without running
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr = self._stderr[moment]
            stderr.seek(0)
            out[moment] = (proc.returncode, stderr.read())
            stderr.close()
        return out
