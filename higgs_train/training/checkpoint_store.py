"""Checkpoints where Ray Train keeps them: any storage Ray supports (local folder, ``file://``, ``s3://``, ``gs://``).

Ray Train writes the checkpoints of run ``NAME`` as ``<storage>/<NAME>/checkpoint_<timestamp>/``. Resuming a run
(a rerun of the driver under the same name) looks at exactly those folders -- never deeper, never elsewhere -- reads
their ``trainer_state.json`` for the step, and takes the newest one whose manifest verifies; any newer one that
does not verify is skipped with a warning naming it. Storage is reached through ``higgs_train.storage`` (pyarrow
filesystems, resolved the way Ray resolves ``RunConfig(storage_path)``).

The run's lock (``RunLock``) lives there too, in ``<storage>/<NAME>/run_lock/``: one live driver per run name,
whichever machine it runs on, so a run's folder is only ever written and resumed by that run's own drivers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.fs as pafs

from higgs_train.adapter import STATE_FILE
from higgs_train.processes import pid_space, process_start_time
from higgs_train.storage import filesystem_and_path, join
from higgs_train.training.checkpoint import CheckpointError, verify_checkpoint

logger = logging.getLogger(__name__)

RAY_CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's default checkpoint folder name: checkpoint_<timestamp>
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of the run's registered checkpoints


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint folder of a run, on some storage."""

    location: str  # a local path or a URI, as given to ``open_checkpoint``
    global_step: int


def run_checkpoints(storage: str, run_name: str) -> list[StoredCheckpoint]:
    """The run's own checkpoint folders (``<storage>/<run_name>/checkpoint_*``), newest step first.

    Folders without a readable ``trainer_state.json`` are left out here; ``find_resume_checkpoint`` verifies the rest.
    """
    fs, root = filesystem_and_path(join(storage, run_name))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(RAY_CHECKPOINT_PREFIX):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{STATE_FILE}") as stream:
                step = int(json.loads(stream.read().decode("utf-8"))["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("skipping %s: no readable %s", join(storage, run_name, info.base_name), STATE_FILE)
            continue
        found.append(StoredCheckpoint(join(storage, run_name, info.base_name), step))
    return sorted(found, key=lambda c: (c.global_step, c.location), reverse=True)


def find_resume_checkpoint(storage: str, run_name: str) -> StoredCheckpoint | None:
    """The newest checkpoint of the run that verifies against its manifest; warns about each newer one skipped."""
    for candidate in run_checkpoints(storage, run_name):
        fs, path = filesystem_and_path(candidate.location)
        try:
            verify_checkpoint(path, fs)
        except (CheckpointError, OSError) as err:
            logger.warning("not resuming from %s (step %d): %s", candidate.location, candidate.global_step, err)
            continue
        return candidate
    return None


def registered_checkpoints(storage: str, run_name: str) -> dict[str, int]:
    """Ray Train's snapshot of the run: {checkpoint folder name: step} of the checkpoints Ray keeps track of."""
    fs, root = filesystem_and_path(join(storage, run_name))
    try:
        with fs.open_input_stream(f"{root}/{RAY_SNAPSHOT_FILE}") as stream:
            snapshot = json.loads(stream.read().decode("utf-8"))
        return {
            r["checkpoint_dir_name"]: int((r.get("metrics") or {}).get("step", 0))
            for r in snapshot.get("checkpoint_results", [])
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def remove_debris(storage: str, run_name: str) -> list[str]:
    """Delete the run's checkpoint folders that Ray never registered and that are useless; returns them.

    Ray registers a checkpoint only after its upload finished, and its retention (``keep_best_k``) only deletes
    registered ones, so a crash leaves unregistered folders behind for good: uploads cut short (they do not verify)
    and complete uploads the crash kept Ray from registering. The first kind is removed, and so is the second once
    Ray holds a newer checkpoint of the run (until then it is the run's newest state and is resumed from). Folders
    planted there are removed like partial ones. A registered folder is left to Ray, and an unreadable one alone.
    """
    registered = registered_checkpoints(storage, run_name)
    newest_registered = max(registered.values(), default=-1)
    removed = []
    fs, root = filesystem_and_path(join(storage, run_name))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        name = info.base_name
        if info.type != pafs.FileType.Directory or not name.startswith(RAY_CHECKPOINT_PREFIX) or name in registered:
            continue
        location = join(storage, run_name, name)
        try:
            verify_checkpoint(info.path, fs)
            with fs.open_input_stream(f"{info.path}/{STATE_FILE}") as stream:
                step = int(json.loads(stream.read().decode("utf-8"))["global_step"])
            if step > newest_registered:
                continue
            reason = f"step {step}, superseded by the run's newer checkpoints"
        except CheckpointError as err:
            reason = str(err)
        except OSError:
            continue
        logger.warning("removing %s, a checkpoint folder Ray never registered: %s", location, reason)
        fs.delete_dir(info.path)
        removed.append(location)
    return removed


@contextmanager
def open_checkpoint(location: str) -> Iterator[Path]:
    """A verified local copy of the checkpoint at ``location`` (a local folder is verified in place)."""
    fs, path = filesystem_and_path(location)
    if isinstance(fs, pafs.LocalFileSystem):
        verify_checkpoint(path, fs)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="higgs-resume-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        verify_checkpoint(tmp)
        yield Path(tmp)


def write_marker(storage: str, run_name: str, name: str, text: str) -> None:
    """Write a small file into the run's folder on its storage (e.g. the COMPLETED marker)."""
    fs, root = filesystem_and_path(join(storage, run_name))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as stream:
        stream.write(text.encode("utf-8"))


def has_marker(storage: str, run_name: str, name: str) -> bool:
    fs, root = filesystem_and_path(join(storage, run_name))
    return fs.get_file_info(f"{root}/{name}").type == pafs.FileType.File


# --------------------------------------------------------------------------------------------------------------------
# The run lock: one live driver per run name, on the run's own storage
# --------------------------------------------------------------------------------------------------------------------

RUN_LOCK_DIR = "run_lock"  # <storage>/<run>/run_lock/<token>.json: one claim per driver that wants the run
RUN_LOCK_LEASE_S = 60.0  # a claim not refreshed for this long belongs to a dead driver (or one cut off its storage)
_CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or claims) a run: read from, and written to, the claim file on the run's storage."""

    token: str
    host: str
    pid: int
    pid_started: float  # the process's start time: a pid reused by another process is not the owner
    started_at: float
    heartbeat_at: float
    lease_s: float
    note: str = ""  # what a refused user is shown about the holder, e.g. its output folder
    pid_space: str = ""  # boot and pid namespace: containers sharing a host name do not share a process table

    @classmethod
    def from_json(cls, text: str) -> LockOwner:
        data = json.loads(text)
        return cls(
            token=str(data["token"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            pid_started=float(data["pid_started"]),
            started_at=float(data["started_at"]),
            heartbeat_at=float(data["heartbeat_at"]),
            lease_s=float(data["lease_s"]),
            note=str(data.get("note", "")),
            pid_space=str(data.get("pid_space", "")),
        )


class RunLockHeld(RuntimeError):
    """Another live driver holds the run; ``holder`` says who, ``location`` where its claim lies."""

    def __init__(self, run_name: str, holder: LockOwner, location: str, now: float) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.started_at))
        seen = max(0.0, now - holder.heartbeat_at)
        note = f", {holder.note}" if holder.note else ""
        super().__init__(
            f"run {run_name!r} is being trained by another job (pid {holder.pid} on host {holder.host}, started "
            f"{started}{note}; its lock {location} was refreshed {seen:.0f} s ago)"
        )
        self.run_name, self.holder, self.location = run_name, holder, location


def stale_reason(owner: LockOwner, now: float, host: str | None = None) -> str | None:
    """Why a claim no longer counts (its driver is gone), or None while it does.

    Where the claim's process table is this one (same host name, boot and pid namespace) it decides at once: the
    pid is gone, or is another process now. From anywhere else (another host, another container) only the lease
    can tell, so a driver killed there blocks its run until ``lease_s`` after its last heartbeat. The lease is
    read against this host's clock: hosts sharing a storage need clocks within a fraction of it (NTP).
    """
    if now - owner.heartbeat_at > owner.lease_s:
        return f"no heartbeat for {now - owner.heartbeat_at:.0f} s (lease {owner.lease_s:.0f} s)"
    if owner.host == (host or socket.gethostname()) and owner.pid_space and owner.pid_space == pid_space():
        started = process_start_time(owner.pid)
        if started is None:
            return f"pid {owner.pid} on {owner.host} has exited"
        if started and owner.pid_started and abs(started - owner.pid_started) > 1.0:
            return f"pid {owner.pid} on {owner.host} is another process now"
    return None


class RunLock:
    """A lease on ``<storage>/<run_name>`` held by one live driver, on any pyarrow storage (local, file://, s3://).

    Storage such as S3 has no exclusive create, so each driver writes its own claim file (a unique name, never
    overwritten by anyone else) and then lists the claims: it holds the run when its claim is the only live one.
    With read-after-write listing (local filesystems, S3, GCS) two drivers racing both see each other; both then
    withdraw and retry after a random pause, so one of them gets the run and the other is refused while the first
    lives. A holder refreshes its claim's heartbeat (``start_heartbeat``) so another host can tell a live driver
    from a dead one; a claim is ignored, and removed, once it is stale (``stale_reason``).
    """

    def __init__(
        self,
        storage: str,
        run_name: str,
        lease_s: float = RUN_LOCK_LEASE_S,
        note: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.location = join(storage, run_name, RUN_LOCK_DIR)
        self.run_name = run_name
        self.clock, self.sleep = clock, sleep or time.sleep
        self._fs, self._dir = filesystem_and_path(self.location)
        now = clock()
        started = process_start_time(os.getpid()) or now
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.owner = LockOwner(token, socket.gethostname(), os.getpid(), started, now, now, lease_s, note, pid_space())
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def claim_path(self) -> str:
        return f"{self._dir}/{self.owner.token}.json"

    def _write_claim(self) -> None:
        self.owner = replace(self.owner, heartbeat_at=self.clock())
        self._fs.create_dir(self._dir, recursive=True)
        tmp = f"{self._dir}/{self.owner.token}.tmp"  # not a claim until renamed: a reader never sees half of one
        with self._fs.open_output_stream(tmp) as stream:
            stream.write(json.dumps(self.owner.__dict__, sort_keys=True).encode("utf-8"))
        self._fs.move(tmp, self.claim_path)

    def _delete(self, path: str) -> None:
        with suppress(OSError):  # gone already (released, or removed as stale by another driver)
            self._fs.delete_file(path)

    def live_claims(self) -> list[LockOwner]:
        """Every other driver's claim that still counts; stale ones are removed on the way (with a warning)."""
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._dir, allow_not_found=True))
        except OSError:
            return []
        live = []
        now = self.clock()
        for info in infos:
            if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.path == self.claim_path:
                continue
            try:
                with self._fs.open_input_stream(info.path) as stream:
                    owner = LockOwner.from_json(stream.read().decode("utf-8"))
            except FileNotFoundError:
                continue  # withdrawn or released meanwhile
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("removing %s, an unreadable run lock claim: %s", info.path, err)
                self._delete(info.path)
                continue
            reason = stale_reason(owner, now)
            if reason:
                logger.warning("run %s: taking over the lock of a driver that is gone (%s)", self.run_name, reason)
                self._delete(info.path)
                continue
            live.append(owner)
        return live

    def acquire(self) -> RunLock:
        """Hold the run or raise ``RunLockHeld`` naming the live driver that does."""
        for attempt in range(_CLAIM_ATTEMPTS):
            self._write_claim()
            others = self.live_claims()
            if not others:
                self._held = True
                return self
            self._delete(self.claim_path)
            if attempt + 1 < _CLAIM_ATTEMPTS:
                self.sleep(random.uniform(0.2, 1.0))  # two drivers that saw each other do not retry in step
        raise RunLockHeld(self.run_name, min(others, key=lambda o: o.started_at), self.location, self.clock())

    def refresh(self) -> None:
        """Renew the lease (the heartbeat thread calls this); a failed write is retried at the next beat."""
        if self._held:
            self._write_claim()

    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Refresh the claim every ``lease_s / 4`` seconds from a daemon thread until ``release``."""
        interval = interval_s or self.owner.lease_s / 4

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except OSError as err:
                    logger.warning("run %s: could not refresh the run lock %s: %s", self.run_name, self.location, err)

        self._thread = threading.Thread(target=beat, name=f"run-lock-{self.run_name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held:
            self._held = False
            self._delete(self.claim_path)

    def __enter__(self) -> RunLock:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
