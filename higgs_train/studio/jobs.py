"""Jobs the Studio starts (a data build, a training run) that outlive the page and the server.

Each job has a folder ``<output_root>/studio_jobs/<job_id>/`` with ``job.json`` (a ``JobRecord``: what was asked,
the command as an argument list, where it runs), ``log.txt`` (the command's own output) and, once it ended,
``exit.json`` (return code and the command's own one-line error). A local job runs under
``python -m higgs_train.studio.runner JOB_DIR`` in a session of its own, so closing the page or stopping the server
does not stop it; a job on a cluster is submitted with Ray's ``JobSubmissionClient`` and read back from it. Any
server started on the same ``--output_root`` finds every job again from these files.

Nothing reaches a shell: a local command is an argument list; a Ray entry point is that list joined with
``shlex.join`` (Ray runs entry points through a shell), and its values come from checked settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.atomic_files import write_atomic
from higgs_train.source_tree import PROJECT_DIR
from higgs_train.studio.refusals import StudioRefusal

JOBS_DIR = "studio_jobs"
JOB_KINDS = ("build", "train", "tune", "export")
# Ray job states (ray.job_submission.JobStatus values) mapped to the Studio's four.
_RAY_STATES = {"PENDING": "running", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
               "STOPPED": "stopped"}  # fmt: skip
_ERROR_LINE = re.compile(r"^(error: .+|\w[\w ]* failed: .+|[A-Za-z_.]*(Error|Exception): .+)$")
_JOB_ID = re.compile(r"^[a-z]+-\d{8}-\d{6}-[0-9a-f]{6}$")


class JobError(StudioRefusal):
    """A job that cannot be started, found or stopped; the message says which and why."""

    status = 404


@dataclass
class JobRecord:
    """What a job is, written once when it starts (typed, so a later server reads exactly what this one wrote)."""

    job_id: str
    kind: str  # build | train | tune | export
    argv: list[str]  # the command, relative to the project folder for Ray, absolute for local jobs
    output_dir: str  # the build's data set folder or the run's output folder
    created: float
    title: str = ""
    pid: int | None = None  # the local runner's pid (its session id too)
    ray_address: str = ""  # submitted with JobSubmissionClient when set
    submission_id: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # what the page sent, for the page to show again

    @classmethod
    def read(cls, folder: Path) -> JobRecord:
        data = json.loads((folder / "job.json").read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def write(self, folder: Path) -> None:
        write_atomic(folder / "job.json", json.dumps(asdict(self), indent=1))


@dataclass(frozen=True)
class JobState:
    """A job as the page sees it: state (running, succeeded, failed, stopped, lost), its one-line error and the
    last line of its log (its progress line)."""

    state: str
    returncode: int | None = None
    error: str = ""
    last_line: str = ""


def new_job_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def error_line(log_text: str) -> str:
    """The job's own one-line error: its last ``error: ...`` line, else the last ``XError: ...`` line (the end of a
    traceback), never the traceback itself."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:400]
    return ""


def tail(path: Path, limit: int = 16384) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def last_line(text: str) -> str:
    """The newest progress line (the console rewrites lines with ``\\r``)."""
    lines = [part.strip() for part in re.split(r"[\r\n]+", text) if part.strip()]
    return lines[-1][:400] if lines else ""


class JobStore:
    """Start, list, read and stop the Studio's jobs under ``<output_root>/studio_jobs``."""

    def __init__(self, output_root: Path, ray_address: str = "", ray_client: Any = None) -> None:
        self.folder = Path(output_root) / JOBS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ray_address = ray_address
        self._ray_client = ray_client
        self._children: dict[str, subprocess.Popen] = {}  # reaped by state(), so no zombie is left behind

    # ------------------------------------------------------------------ start
    def start(
        self,
        kind: str,
        make_argv: Callable[[Path], list[str]],
        output_dir: Path,
        title: str,
        settings: dict[str, Any],
    ) -> JobRecord:
        """``make_argv(job folder)`` gives ``[script relative to the project, args...]`` (it may write its inputs,
        such as the training config, into the job folder); run with this Python or on Ray."""
        if kind not in JOB_KINDS:
            raise JobError(f"job kind {kind!r}: expected one of {', '.join(JOB_KINDS)}")
        job_id = new_job_id(kind)
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        argv = make_argv(folder)
        record = JobRecord(job_id, kind, argv, str(output_dir), time.time(), title, settings=settings)
        if self.ray_address:
            record.ray_address = self.ray_address
            record.submission_id = self._client().submit_job(
                entrypoint=shlex.join(["python", *argv]),
                submission_id=record.job_id,
                runtime_env={"working_dir": str(PROJECT_DIR), "excludes": ["outputs/", "*.db", ".git/"]},
            )
            record.write(folder)
            return record
        record.argv = [sys.executable, str(PROJECT_DIR / argv[0]), *argv[1:]]
        record.write(folder)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        runner = [sys.executable, "-m", "higgs_train.studio.runner", str(folder)]
        with open(folder / "runner.log", "ab") as log:
            child = subprocess.Popen(  # noqa: S603 -- an argument list, no shell
                runner, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._children[record.job_id] = child
        record.pid = child.pid
        record.write(folder)
        return record

    def _client(self) -> Any:
        if self._ray_client is None:
            from ray.job_submission import JobSubmissionClient

            self._ray_client = JobSubmissionClient(self.ray_address)
        return self._ray_client

    # ------------------------------------------------------------------ read
    def get(self, job_id: str) -> JobRecord:
        if not _JOB_ID.match(job_id or "") or not (self.folder / job_id / "job.json").is_file():
            raise JobError(f"job {job_id!r}: no such job under {self.folder}")
        return JobRecord.read(self.folder / job_id)

    def records(self) -> list[JobRecord]:
        """Every job, newest first; a folder with an unreadable record is skipped (it is not a Studio job)."""
        out = []
        for folder in sorted(self.folder.iterdir(), reverse=True):
            try:
                out.append(JobRecord.read(folder))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def log_text(self, record: JobRecord) -> str:
        if record.submission_id:
            try:
                return self._client().get_job_logs(record.submission_id)[-16384:]
            except Exception:  # noqa: BLE001 -- the cluster may be gone; the state says so
                return ""
        return tail(self.folder / record.job_id / "log.txt")

    def state(self, record: JobRecord) -> JobState:
        text = self.log_text(record)
        if record.submission_id:
            try:
                status = str(self._client().get_job_status(record.submission_id).value)
            except Exception as err:  # noqa: BLE001 -- a cluster that is down is a state, not a crash
                return JobState("lost", error=f"Ray job {record.submission_id}: cannot reach {record.ray_address} "
                                f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})")  # fmt: skip
            state = _RAY_STATES.get(status, status.lower())
            return JobState(state, None, error_line(text) if state == "failed" else "", last_line(text))
        child = self._children.get(record.job_id)
        if child is not None:
            child.poll()
        done = self.folder / record.job_id / "exit.json"
        if done.is_file():
            info = json.loads(done.read_text())
            rc = int(info["returncode"])
            state = "stopped" if info.get("stopped") else ("succeeded" if rc == 0 else "failed")
            return JobState(state, rc, info.get("error", "") if state == "failed" else "", last_line(text))
        if (child is not None and child.returncode is None) or (
            record.pid and _runner_alive(record.pid, self.folder / record.job_id)
        ):
            return JobState("running", last_line=last_line(text))
        return JobState("lost", error="the job's process ended without a result (machine restarted?)",
                        last_line=last_line(text))  # fmt: skip

    # ------------------------------------------------------------------ stop
    def stop(self, record: JobRecord) -> None:
        """Ask the job to stop: Ray's ``stop_job``, or SIGTERM to the runner's session (the runner forwards it to
        the command and records the job as stopped)."""
        if record.submission_id:
            self._client().stop_job(record.submission_id)
            return
        child = self._children.get(record.job_id)
        mine = child is not None and child.poll() is None
        if not record.pid or not (mine or _runner_alive(record.pid, self.folder / record.job_id)):
            raise JobError(f"job {record.job_id} is not running")
        os.kill(record.pid, signal.SIGTERM)


def _runner_alive(pid: int, folder: Path) -> bool:
    """The pid is alive *and* is this job's runner (a pid reused by another process does not count)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(folder).encode() in cmdline and b"higgs_train.studio.runner" in cmdline
