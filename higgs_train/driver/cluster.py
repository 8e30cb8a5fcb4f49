"""The cluster side of every driver: resource checks, storage, run resolution.

Starting or joining Ray itself is ``higgs_train.ray_session``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from higgs_train.config import TrainingConfig, check_run_name
from higgs_train.data.stage_sizing import check_resources
from higgs_train.storage import filesystem_and_path, is_uri, join
from higgs_train.training.checkpoint import CheckpointError, verify_checkpoint
from higgs_train.training.checkpoint_store import (
    RUN_LOCK_LEASE_S,
    RunLock,
    RunLockHeld,
    find_resume_checkpoint,
    has_marker,
    remove_debris,
)
from higgs_train.training.schedule import effective_learning_rate

if TYPE_CHECKING:
    from higgs_train.training.checkpoint_store import RunLock

logger = logging.getLogger(__name__)

COMPLETED_MARKER = "COMPLETED"


def storage_root(config: TrainingConfig) -> str:
    """Ray Train storage: ``storage_path`` (local, NFS, s3://, gs://) or ``<output_dir>/ray_results``."""
    if config.storage_path:
        return config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    return str((Path(config.output_dir) / "ray_results").resolve())


STREAM_CACHE_DIR = "_token_cache"  # under a URI storage; no run name can start with "_", so no run's folder is it


def stream_cache_location(config: TrainingConfig, storage: str) -> str:
    """Where workers stream the token cache from: ``--stream_cache_uri``, else ``<storage>/_token_cache`` when the
    run's storage is a URI (``s3://``, ``gs://``: the one place every node reads, so a cluster needs no other shared
    storage), else "" (the local cache root: one node, or ``--cache_dir`` on a mount every node sees)."""
    if config.stream_cache_uri:
        return config.stream_cache_uri
    return join(storage, STREAM_CACHE_DIR) if is_uri(storage) else ""


def run_params(config: TrainingConfig) -> dict[str, Any]:
    """The MLflow parameters of a run: the config, plus the learning rate ``--learning_rate 0`` resolves to."""
    return {**config.to_dict(), "learning_rate_resolved": effective_learning_rate(config)}


def next_free_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, else ``name-2``, ``name-3``...: the first one ``taken`` says is free, so a rerun never lands on a
    finished run (training: a COMPLETED marker in storage; a sweep: its directory in storage)."""
    if not taken(name):
        return name
    suffix = 2
    while taken(f"{name}-{suffix}"):
        suffix += 1
    return f"{name}-{suffix}"


class RunSetupError(ValueError):
    """The run cannot start as asked (its name is held by a live job, ``--resume_from`` is not a checkpoint);
    raised in seconds, before MLflow, Ray or any output is touched, with what to do."""


def hold_run(storage: str, run_name: str, output_dir: str) -> RunLock:
    """Take the run's lock on its storage for this driver (kept alive by a heartbeat until ``release``).

    A run name already held by a live driver is refused rather than moved to ``<name>-2`` (what a *completed* run
    gets): the two jobs would still share the output folder (adapter, history, reports, MLflow store), which the
    name does not separate, and a second copy of a running job is nearly always a double start.
    """
    lock = RunLock(storage, run_name, note=f"output {output_dir}")
    try:
        lock.acquire()
    except RunLockHeld as err:
        raise RunSetupError(
            f"{err}. Wait for it to finish (rerunning then resumes it or, once it completed, starts "
            f"{run_name}-2), or run a second job beside it with its own --run_name and --output_dir. A lock whose "
            f"driver died is taken over at once on the same host, else {RUN_LOCK_LEASE_S:.0f} s after its last "
            "refresh."
        ) from None
    lock.start_heartbeat()
    return lock


def check_resume_from(location: str) -> None:
    """Refuse a ``--resume_from`` that is not a verified checkpoint folder, in one line saying what to give."""
    usage = (
        "give a checkpoint folder (e.g. ray_results/<run>/checkpoint_<timestamp>, or its s3:// URI), or leave "
        "--resume_from out to resume the run's newest checkpoint automatically"
    )
    try:
        filesystem, path = filesystem_and_path(location)
        kind = filesystem.get_file_info(path).type
    except (OSError, ValueError) as err:  # an unknown URI scheme, unreachable storage
        raise RunSetupError(f"--resume_from {location}: cannot be read ({err}); {usage}") from None
    if kind == pafs.FileType.NotFound:
        raise RunSetupError(f"--resume_from {location}: no such file or folder; {usage}")
    if kind != pafs.FileType.Directory:
        raise RunSetupError(
            f"--resume_from {location} is a file, not a checkpoint folder (pickled .pt/.ckpt files are never "
            f"loaded); {usage}"
        )
    try:
        verify_checkpoint(path, filesystem)
    except (CheckpointError, OSError) as err:
        raise RunSetupError(f"--resume_from: {err}; {usage}") from None


def resolve_run(
    config: TrainingConfig, hold: contextlib.ExitStack | None = None
) -> tuple[TrainingConfig, str, str | None]:
    """Apply --quick_test, pick the run name and the checkpoint to resume from (explicit or the run's latest).

    ``hold``: the job's exit stack; the run's lock (``hold_run``) is taken into it before anything in the run's
    folder is looked at or removed, so auto-resume only sees checkpoints of this run's own earlier drivers, which
    are all gone, never the in-flight ones of a live job. Auto-resume looks only at the run's own Ray Train
    checkpoint folders on its storage (local, ``file://``, ``s3://``, ...) and takes the newest that verifies
    against its manifest (``training.checkpoint_store``).
    """
    if config.quick_test:
        config = config.apply_quick_test()
    run_name = check_run_name(config.run_name or Path(config.output_dir).resolve().name)
    storage = storage_root(config)
    resume = config.resume_from or None
    if resume is not None:
        if "://" not in resume:
            resume = str(Path(resume).resolve())  # workers may run in another working directory
        check_resume_from(resume)  # refuse a bad --resume_from before any work, where it lies
    asked = run_name
    while True:
        if resume is None:
            run_name = next_free_name(run_name, lambda name: has_marker(storage, name, COMPLETED_MARKER))
        if hold is None:
            break
        lock = hold_run(storage, run_name, config.output_dir)
        if resume is None and has_marker(storage, run_name, COMPLETED_MARKER):
            lock.release()  # its last driver completed it between the look and the lock: take the next name
            continue
        hold.callback(lock.release)
        break
    if run_name != asked:
        logger.info("run %s already completed; starting %s", asked, run_name)
    if resume is None:
        remove_debris(storage, run_name)  # partial uploads left by a crash (Ray never registered them)
        found = find_resume_checkpoint(storage, run_name)
        resume = found.location if found else None
        if resume:
            logger.info("run %s has checkpoints: resuming from %s (step %d)", run_name, resume, found.global_step)
    return config.replace(run_name=run_name, resume_from=resume or ""), run_name, resume


def resolve_sweep_run(config: TrainingConfig) -> TrainingConfig:
    """A sweep's run resolution: --quick_test, the output directory, and a sweep name not used in storage yet.

    Trials never resume (each is a fresh ``TorchTrainer``), so ``resume_from`` is cleared.
    """
    if config.quick_test:
        config = config.apply_quick_test()
    output = Path(config.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    storage = storage_root(config)
    local = "://" not in storage
    name = next_free_name(config.run_name or output.name, lambda n: local and (Path(storage) / n).exists())
    return config.replace(run_name=name, resume_from="")


class ClusterResourcesError(ValueError):
    """The cluster lacks what the job asks for (GPUs, CPUs); raised in seconds, before any work, never a hang."""


def check_gpus(config: TrainingConfig, cluster: dict[str, float], per_unit: str = "training worker") -> None:
    """``--use_gpu`` needs one GPU per training worker; Ray would otherwise wait forever for a GPU node."""
    if not config.use_gpu:
        return
    gpus = float(cluster.get("GPU", 0.0))
    needed = float(config.num_workers)
    if gpus + 1e-9 >= needed:
        return
    have = "no GPUs" if gpus == 0 else f"only {gpus:g} GPU(s)"
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU", "memory") or "GPU" in k)
    raise ClusterResourcesError(
        f"--use_gpu with --num_workers {config.num_workers} needs {needed:g} GPU(s) (one per {per_unit}) but the Ray "
        f"cluster has {have} ({shown or 'no resources reported'}). Drop --use_gpu to train on CPUs, lower "
        "--num_workers, or run on a cluster with GPU nodes (`ray start --head --num-gpus N`, or submit with "
        "`ray job submit` to a GPU cluster, see cluster/README.md)."
    )


def check_cpu_budget(config: TrainingConfig) -> None:
    """Refuse a configuration that cannot be scheduled on the cluster instead of hanging in the pending state."""
    import ray

    cluster = ray.cluster_resources()
    check_gpus(config, cluster)
    training = config.num_workers * config.cpus_per_train_worker
    if training > cluster.get("CPU", 0):
        raise ClusterResourcesError(
            f"needs {training:g} CPUs for training workers but the cluster has {cluster.get('CPU', 0):g}; lower "
            "num_workers or cpus_per_train_worker"
        )
    try:  # the build's own rule (CPUs and GPUs of the driver's node, or of the cluster), before anything starts
        check_resources(
            config.dataloader_num_workers,
            config.cpus_per_data_actor,
            config.data_actor_gpus,
            on_driver_node=config.data_nodes == "driver",
        )
    except ValueError as exc:
        raise ClusterResourcesError(str(exc)) from None
