"""Trial resources and the ASHA schedule: what a trial reserves, how many run at once."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from higgs_train.config import TrainingConfig
from higgs_train.tune.space import TIME_ATTR, SweepSettings

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Resources and schedule
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialResources:
    """What one trial reserves and how many run at once."""

    function_cpus: float
    worker_cpus: float
    worker_gpus: float
    max_concurrent: int
    fits: int


def plan_resources(config: TrainingConfig, settings: SweepSettings, cluster: dict[str, float]) -> TrialResources:
    """Trial sizing against the cluster's totals (see the module docstring); raises when it cannot progress."""
    eps = 1e-9
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    function_cpus = settings.cpus_per_trial
    worker_cpus = config.num_workers * config.cpus_per_train_worker
    worker_gpus = float(config.num_workers) if config.use_gpu else 0.0
    if function_cpus + worker_cpus > cpus + eps:
        raise ValueError(
            f"one trial needs {function_cpus:g} CPU for its function + {worker_cpus:g} for its training workers "
            f"but the cluster has {cpus:g}; lower cpus_per_trial, num_workers or cpus_per_train_worker"
        )
    if worker_gpus > gpus + eps:
        raise ValueError(f"one trial needs {worker_gpus:g} GPUs but the cluster has {gpus:g}")
    fits = math.floor((cpus + eps) / (function_cpus + worker_cpus))
    if worker_gpus:
        fits = min(fits, math.floor((gpus + eps) / worker_gpus))
    fits = max(1, fits)
    wanted = settings.max_concurrent_trials or fits
    if wanted * function_cpus + worker_cpus > cpus + eps:
        raise ValueError(
            f"--max_concurrent_trials={wanted} would let {wanted} trial functions ({function_cpus:g} CPU each) hold "
            f"the CPUs the training workers ({worker_cpus:g} CPU per trial) need, of {cpus:g}; at most "
            f"{math.floor((cpus - worker_cpus + eps) / function_cpus)} can run without a deadlock, {fits} without "
            "queueing"
        )
    if wanted > fits:
        logger.warning("%d concurrent trials, but only %d fit whole: the rest wait for training CPUs", wanted, fits)
    return TrialResources(function_cpus, worker_cpus, worker_gpus, min(wanted, settings.num_samples), fits)


def make_scheduler(total_steps: int, grace_period: int, reduction_factor: float) -> Any:
    """ASHA on the ranking metric by optimizer step, with every rung before the last step; FIFO when none fits."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if total_steps - 1 < grace_period:
        logger.warning(
            "trials run %d steps, too few for an ASHA rung at %d: no early stopping", total_steps, grace_period
        )
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=total_steps - 1,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        stop_last_trials=False,
    )
