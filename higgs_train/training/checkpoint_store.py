"""Checkpoints where Ray Train keeps them: any storage Ray supports (local folder, ``file://``, ``s3://``, ``gs://``).

Ray Train writes the checkpoints of run ``NAME`` as ``<storage>/<NAME>/checkpoint_<timestamp>/``. Resuming a run
(a rerun of the driver under the same name) looks at exactly those folders -- never deeper, never elsewhere -- reads
their ``trainer_state.json`` for the step, and takes the newest one whose manifest verifies; any newer one that
does not verify is skipped with a warning naming it. Storage is reached through pyarrow filesystems, the way Ray
resolves ``RunConfig(storage_path)``: for S3 the usual AWS variables apply (``AWS_ENDPOINT_URL`` for an S3-compatible
endpoint).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from higgs_train.training.checkpoint import STATE_FILE, CheckpointError, verify_checkpoint

logger = logging.getLogger(__name__)

RAY_CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's default checkpoint folder name: checkpoint_<timestamp>
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of the run's registered checkpoints


def is_uri(path: str) -> bool:
    return "://" in str(path)


def filesystem_and_path(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path or a URI (``file://``, ``s3://``, ``gs://``)."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    fs, path = pafs.FileSystem.from_uri(location)
    return fs, path.rstrip("/")


def join(location: str, *names: str) -> str:
    """``location`` (path or URI) with ``names`` appended, keeping its form."""
    return "/".join([str(location).rstrip("/"), *names])


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
