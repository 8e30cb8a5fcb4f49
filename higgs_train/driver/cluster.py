"""The cluster side of every driver: joining or starting Ray, resource checks, storage, run resolution.

This is the only module that starts or joins a Ray cluster (``init_ray``); every driver (training, sweep,
evaluation) calls it first, and the stages below the drivers (``data.ray_pipeline``, the trainer) expect Ray to be up.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from higgs_train.config import TrainingConfig

logger = logging.getLogger(__name__)

COMPLETED_MARKER = "COMPLETED"


def storage_root(config: TrainingConfig) -> str:
    """Ray Train storage: ``storage_path`` (local, NFS, s3://, gs://) or ``<output_dir>/ray_results``."""
    if config.storage_path:
        return config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    return str((Path(config.output_dir) / "ray_results").resolve())


def next_free_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name``, else ``name-2``, ``name-3``...: the first one ``taken`` says is free, so a rerun never lands on a
    finished run (training: a COMPLETED marker in storage; a sweep: its directory in storage)."""
    if not taken(name):
        return name
    suffix = 2
    while taken(f"{name}-{suffix}"):
        suffix += 1
    return f"{name}-{suffix}"


def resolve_run(config: TrainingConfig) -> tuple[TrainingConfig, str, str | None]:
    """Apply --quick_test, pick the run name and the checkpoint to resume from (explicit or the run's latest).

    Auto-resume looks only at the run's own Ray Train checkpoint folders on its storage (local, ``file://``,
    ``s3://``, ...) and takes the newest that verifies against its manifest (``training.checkpoint_store``).
    """
    from higgs_train.config import check_run_name
    from higgs_train.training.checkpoint import verify_checkpoint
    from higgs_train.training.checkpoint_store import (
        filesystem_and_path,
        find_resume_checkpoint,
        has_marker,
        remove_debris,
    )

    if config.quick_test:
        config = config.apply_quick_test()
    run_name = check_run_name(config.run_name or Path(config.output_dir).resolve().name)
    storage = storage_root(config)
    if not config.resume_from:
        fresh = next_free_name(run_name, lambda name: has_marker(storage, name, COMPLETED_MARKER))
        if fresh != run_name:
            logger.info("run %s already completed; starting %s", run_name, fresh)
        run_name = fresh
    resume = config.resume_from or None
    if resume is None:
        remove_debris(storage, run_name)  # partial uploads left by a crash (Ray never registered them)
        found = find_resume_checkpoint(storage, run_name)
        resume = found.location if found else None
        if resume:
            logger.info("run %s has checkpoints: resuming from %s (step %d)", run_name, resume, found.global_step)
    elif "://" not in resume:
        resume = str(Path(resume).resolve())  # workers may run in another working directory
    if resume:  # refuse a bad --resume_from before any work, where it lies
        filesystem, path = filesystem_and_path(resume)
        verify_checkpoint(path, filesystem)
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


def _submitted_job_env_vars() -> dict[str, str]:
    """Env vars of the runtime env this driver was submitted with (``ray job submit``); empty outside a job.

    Ray's job supervisor hands the job's config to the entrypoint as JSON in ``RAY_JOB_CONFIG_JSON_ENV_VAR``.
    """
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return dict(env_vars) if isinstance(env_vars, dict) else {}


def init_ray(config: TrainingConfig) -> None:
    """Join the cluster this process runs in (``ray job submit`` sets RAY_ADDRESS), else start a local one."""
    import ray

    from higgs_train.console import (
        filter_forwarded_worker_logs,
        quiet_ray_logs,
        ray_log_level,
        ray_logging_config,
    )

    quiet_ray_logs(config.verbose)
    if ray.is_initialized():
        return
    quiet = {"logging_level": ray_log_level(config.verbose), "logging_config": ray_logging_config(config.verbose)}
    # ray.init applies ``logging_config`` to this process's root logger too; the driver's own INFO lines stay.
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for name in ("HIGGS_TRAIN_HOME", "HF_HOME", "HF_HUB_CACHE", "MLFLOW_TRACKING_URI"):
        if name in os.environ:
            env[name] = os.environ[name]
    if os.environ.get("RAY_ADDRESS"):
        # Under `ray job submit` the job's runtime env (cluster/runtime_env.yaml) is merged with this one and Ray
        # refuses any env var set in both; the job's value is already in this process's environment, so drop it.
        env = {k: v for k, v in env.items() if k not in _submitted_job_env_vars()}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=True, **quiet)
    else:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, runtime_env={"env_vars": env}, **quiet)
    for handler in [h for h in root.handlers if h not in root_handlers]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    quiet_ray_logs(config.verbose)  # ray.init configures the "ray" logger again
    filter_forwarded_worker_logs(config.verbose)


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
    available = cluster.get("CPU", 0)
    training = config.num_workers * config.cpus_per_train_worker
    data = config.dataloader_num_workers * config.cpus_per_data_actor
    if max(training, data) > available:
        raise ClusterResourcesError(
            f"needs {training:g} CPUs for training workers and {data:g} for data actors but the cluster has "
            f"{available:g}; lower num_workers/cpus_per_train_worker or dataloader_num_workers/cpus_per_data_actor"
        )
