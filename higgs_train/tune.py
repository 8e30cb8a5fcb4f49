"""Ray Tune sweeps over the training job: one ``TorchTrainer`` per trial, one shared token cache, one MLflow parent.

Why this shape:

* **Function trainable.** Under Train V2 (the default in Ray 2.60) a trainer is no longer a Tune trainable, so
  ``Tuner(TorchTrainer)`` fails. Each trial runs ``run_trial``, which builds and fits its own ``TorchTrainer``; a
  ``TuneReportCallback`` in that trainer's ``RunConfig`` forwards the rank-0 reports to Tune.
* **Caches built once, before the Tuner.** The driver builds (or finds) the token caches with ``job.build_caches``
  and hands every trial the cache root and keys, so an N-trial sweep encodes each audio file once, not N times,
  and no Ray Data actor competes with the trials for CPUs.
* **Only validation reports reach Tune.** ASHA compares ``val_loss`` at step milestones. The trainer also reports
  training-only steps, which lack ``val_loss`` and would fail Tune's strict metric check (and a carried-forward,
  stale ``val_loss`` would mislead ASHA). Per-step training metrics still reach MLflow from the worker.
* **No rung at a trial's last step.** ASHA's milestones stop below the last step, and ``stop_last_trials=False``,
  so a trial that reached its end is never killed while it writes its adapter and closes its MLflow run.
* **Resources.** A trial holds ``cpus_per_trial`` for its (idle) function plus its training workers' CPUs.
  Concurrency defaults to how many whole trials the cluster fits. Running more is allowed only while every
  concurrent trial function plus one trial's workers still fit: otherwise the functions could hold every CPU while
  none of their workers can start, which deadlocks.
* **Stopped trials give their workers' CPUs back.** ASHA stops a trial by killing its function actor; the trial's
  ``TorchTrainer`` controller and workers die with it, but their placement group belongs to the job. Train V2's
  own cleaner looks the dead controller up through the State API, which needs the dashboard (off for local runs)
  and one Ray instance per host. So each trial's rank-0 worker registers its placement group with a driver-owned
  registry, and a Tune callback removes whatever a finished trial left. Without it every early stop would keep
  its training CPUs (or GPUs) reserved until the sweep ends, and a few stops deadlock a small cluster.
* **MLflow.** The sweep is a parent run; each trial function creates its child run before starting its trainer and
  hands the id to the rank-0 worker, as the training job does. The driver closes children that ASHA killed and
  adds each trial's final figures, so children compare side by side in the UI.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import math
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from higgs_train.config import TrainingConfig, read_config_file

logger = logging.getLogger(__name__)

TUNE_METRIC = "val_loss"
TUNE_MODE = "min"
TIME_ATTR = "step"
ALPHA_MULTIPLIER = "lora_alpha_multiplier"
KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "value")
SEARCH_ALGS = ("random", "optuna")
DEFAULT_SEARCH_SPACE = "configs/tune_search_space.yaml"
TRIAL_RESULT_FILE = "trial_result.json"
BEST_DIR = "best"
PROJECT_DIR = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------------
# Settings and search space
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSettings:
    """Sweep options that are not TrainingConfig fields (those come from --config and the training flags)."""

    search_space: str = DEFAULT_SEARCH_SPACE
    num_samples: int = 8
    max_concurrent_trials: int = 0
    search_alg: str = "random"
    cpus_per_trial: float = 0.25
    grace_period: int = 0
    reduction_factor: float = 2.0

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"--num_samples={self.num_samples} is invalid: expected an integer >= 1")
        if self.max_concurrent_trials < 0:
            raise ValueError(f"--max_concurrent_trials={self.max_concurrent_trials} is invalid: expected >= 0")
        if self.search_alg not in SEARCH_ALGS:
            raise ValueError(f"--search_alg={self.search_alg!r} is invalid: expected one of {SEARCH_ALGS}")
        if self.search_alg == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ValueError("--search_alg optuna needs the optuna package (pip install optuna), or use random")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"--cpus_per_trial={self.cpus_per_trial} is invalid: expected a number > 0")
        if self.grace_period < 0:
            raise ValueError(f"--grace_period={self.grace_period} is invalid: expected an integer >= 0")
        if self.reduction_factor <= 1:
            raise ValueError(f"--reduction_factor={self.reduction_factor} is invalid: expected a number > 1")


SearchSpec = dict[str, tuple[str, Any]]


def search_space_path(path: str | Path) -> Path:
    """The file itself, or a relative path under the project (so the default works from any working directory)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (PROJECT_DIR / path).exists():
        path = PROJECT_DIR / path
    if not path.exists():
        raise FileNotFoundError(f"search space not found: {path}")
    return path


def load_search_space(path: str | Path) -> SearchSpec:
    """Read and check a search-space YAML (see configs/tune_search_space.yaml for the format).

    Checked up front, naming the entry, so a typo fails before any cluster, cache or MLflow run is started.
    """
    path = search_space_path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"search space {path} must be a non-empty mapping of field -> {{kind: args}}")
    fields = set(TrainingConfig.field_names())
    spec: SearchSpec = {}
    for name, entry in data.items():
        if name not in fields and name != ALPHA_MULTIPLIER:
            raise ValueError(f"search space {path}: {name!r} is neither a TrainingConfig field nor {ALPHA_MULTIPLIER}")
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            raise ValueError(f"search space {path}: {name} must be one {{kind: args}} with kind in {KINDS}")
        kind, args = next(iter(entry.items()))
        _check_args(path, name, kind, args)
        spec[name] = (kind, args)
    if ALPHA_MULTIPLIER in spec and "lora_alpha" in spec:
        raise ValueError(f"search space {path}: give lora_alpha or {ALPHA_MULTIPLIER}, not both")
    return spec


def _check_args(path: Path, name: str, kind: str, args: Any) -> None:
    where = f"search space {path}: {name}.{kind}"
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where} needs a non-empty list of values")
    elif kind in ("uniform", "loguniform", "randint"):
        ok = isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
        if not ok or not args[0] < args[1]:
            raise ValueError(f"{where} needs [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"{where} needs low > 0")


def to_param_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune domains for the spec."""
    from ray import tune

    makers = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
        "value": lambda a: a,
    }
    return {name: makers[kind](args) for name, (kind, args) in spec.items()}


def quick_test_points(spec: SearchSpec, num_samples: int) -> list[dict[str, Any]]:
    """First trials of a --quick_test sweep: distinct ``lora_r`` values from its ``choice``, in listed order.

    A smoke sweep should cover different ranks, and a test needs to know it will; random draws of 3 from 4 values
    repeat a rank about 60% of the time. The other fields are still drawn (seeded) by the search algorithm.
    """
    kind, values = spec.get("lora_r", ("", None))
    if kind != "choice":
        return []
    return [{"lora_r": v} for v in list(dict.fromkeys(values))[:num_samples]]


def complete_point(spec: SearchSpec, point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with every other entry at a fixed central value (first choice, midpoint, geometric mean, low).

    Ray's ``OptunaSearch`` refuses partial ``points_to_evaluate`` (the random searcher draws the missing fields).
    """
    centre = {
        "choice": lambda a: a[0],
        "grid": lambda a: a[0],
        "uniform": lambda a: (a[0] + a[1]) / 2,
        "loguniform": lambda a: math.sqrt(a[0] * a[1]),
        "randint": lambda a: a[0],
        "value": lambda a: a,
    }
    return {name: point[name] if name in point else centre[kind](args) for name, (kind, args) in spec.items()}


def trial_overrides(base: TrainingConfig, params: dict[str, Any]) -> dict[str, Any]:
    """TrainingConfig values of one trial's drawn params: types coerced, lora_alpha derived from its multiplier."""
    hints = get_type_hints(TrainingConfig)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name == ALPHA_MULTIPLIER:
            continue
        kind = hints[name]
        out[name] = kind(value) if kind in (int, float, bool, str) else value
    if ALPHA_MULTIPLIER in params:
        rank = out.get("lora_r", base.lora_r)
        out["lora_alpha"] = max(1, int(round(rank * float(params[ALPHA_MULTIPLIER]))))
    return out


def make_search_alg(name: str, spec: SearchSpec, seed: int, points: list[dict[str, Any]], max_concurrent: int) -> Any:
    """The searcher, seeded so a sweep's draws are reproducible; ``points`` are tried first.

    The concurrency cap is set here, on the searcher: ``TuneConfig.max_concurrent_trials`` is silently ignored for
    ``BasicVariantGenerator`` (a ``SearchGenerator``, not a ``Searcher``), which would start every trial at once.
    """
    if name == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            points_to_evaluate=[complete_point(spec, p) for p in points] or None,
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed, max_concurrent=max_concurrent)


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


def planned_steps(config: TrainingConfig, lengths: Any) -> int:
    """Optimizer steps a trial will run: the trainer's own rule (epoch-0 plan x epochs, capped by max_steps)."""
    from higgs_train.data.batching import optimizer_steps, plan_epoch

    plan = plan_epoch(
        lengths,
        max_tokens_per_batch=config.max_tokens_per_batch,
        batch_size=config.batch_size,
        seed=config.seed,
        epoch=0,
        num_workers=config.num_workers,
    )
    total = optimizer_steps(plan, config.gradient_accumulation_steps) * config.num_epochs
    return min(total, config.max_steps) if config.max_steps else total


def make_scheduler(total_steps: int, grace_period: int, reduction_factor: float) -> Any:
    """ASHA on val_loss by optimizer step, with every rung before the last step; FIFO when none fits."""
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


# --------------------------------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------------------------------
class ValidationReportCallback(TuneReportCallback):
    """Forward to Tune only the reports that carry val_loss (see the module docstring).

    The trainer attaches val_loss to every checkpoint, so no checkpoint is held back by this filter.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and TUNE_METRIC in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


class PlacementGroupRegistry:
    """Each trial's worker-group placement groups, kept by a zero-CPU actor the driver owns (module docstring)."""

    def __init__(self) -> None:
        self._groups: dict[str, list[Any]] = {}

    def register(self, trial_id: str, group: Any) -> None:
        self._groups.setdefault(trial_id, []).append(group)

    def pop(self, trial_id: str) -> list[Any]:
        return self._groups.pop(trial_id, [])


def trial_train_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``, after rank 0 has registered the worker group's placement group."""
    import ray
    import ray.train

    from higgs_train.ray_train import train_loop_per_worker

    registry = loop_config.get("placement_group_registry")
    group = ray.util.get_current_placement_group()
    if registry is not None and group is not None and ray.train.get_context().get_world_rank() == 0:
        ray.get(registry.register.remote(loop_config["tune_trial_id"], group))
    train_loop_per_worker(loop_config)


class ReleasePlacementGroups(Callback):
    """Remove the placement groups a finished trial still holds (those of a trial ASHA killed)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.release(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.release(trial.trial_id)

    def release(self, trial_id: str) -> int:
        """Remove what ``trial_id`` registered and is not yet removed; returns how many were removed."""
        import ray
        from ray.util.placement_group import placement_group_table, remove_placement_group

        removed = 0
        for group in ray.get(self.registry.pop.remote(trial_id)):
            try:
                if placement_group_table(group).get("state") != "REMOVED":
                    remove_placement_group(group)
                    removed += 1
            except Exception as exc:  # already gone, or the GCS is busy: never fail the sweep over cleanup
                logger.warning(
                    "could not release placement group of trial %s (%s: %s)", trial_id, type(exc).__name__, exc
                )
        if removed:
            logger.info("released %d placement group(s) left by stopped trial %s", removed, trial_id)
        return removed


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its drawn params; built once by the driver (no trial builds a cache)."""

    base_config: dict[str, Any]
    cache_root: str
    train_key: str
    val_key: str
    trials_root: str
    trainer_storage: str
    sweep_name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str | None
    placement_groups: Any = None


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: one child MLflow run and one TorchTrainer over the shared token cache."""
    import ray.tune

    from higgs_train.ray_train import build_torch_trainer
    from higgs_train.tracking import RunTracker

    trial_id = ray.tune.get_context().get_trial_id()
    base = TrainingConfig.from_dict(context.base_config)
    run_name = trial_run_name(context.sweep_name, trial_id)
    output = Path(context.trials_root) / trial_id
    config = base.replace(**trial_overrides(base, params), output_dir=str(output), run_name=run_name)
    output.mkdir(parents=True, exist_ok=True)
    config.save(output / "resolved_config.yaml")
    data_keys = {"train_cache_key": context.train_key, "val_cache_key": context.val_key}
    (output / "data_keys.json").write_text(json.dumps(data_keys, indent=2) + "\n")  # export's model card, as job.py
    tags = {
        "tune_trial_id": trial_id,
        "tune_sweep": context.sweep_name,
        "tune_params": json.dumps(params, sort_keys=True, default=str),
        **data_keys,
    }
    tracker = RunTracker(context.tracking_uri).start(
        context.experiment, run_name, params=config.to_dict(), tags=tags, parent_run_id=context.parent_run_id
    )
    loop_config = {
        "config": config.to_dict(),
        "cache_root": context.cache_root,
        "train_key": context.train_key,
        "val_key": context.val_key,
        "mlflow_run_id": tracker.run_id,
        "mlflow_tracking_uri": context.tracking_uri,
        "tune_trial_id": trial_id,
        "placement_group_registry": context.placement_groups,
    }
    with tracker:
        trainer = build_torch_trainer(
            config,
            loop_config,
            run_name,
            context.trainer_storage,
            callbacks=[ValidationReportCallback()],
            train_loop=trial_train_loop,
        )
        result = trainer.fit()
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        checkpoint = result.checkpoint.path if result.checkpoint else None
        # Written last: its presence says the trial ran to its end (ASHA kills stopped trials before this line).
        (output / TRIAL_RESULT_FILE).write_text(json.dumps({"metrics": metrics, "checkpoint": checkpoint}, indent=1))


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TrialSummary:
    """One row of the sweep's trial table."""

    trial_id: str
    status: str  # completed | early_stopped | error
    params: dict[str, Any]
    overrides: dict[str, Any]
    val_loss: float | None = None
    val_audio_accuracy: float | None = None
    step: int | None = None
    last_step: int | None = None
    checkpoint_path: str | None = None
    checkpoints: list[tuple[int, float, str]] = field(default_factory=list)
    output_dir: str = ""
    mlflow_run_id: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """Flat CSV row: ids, status, figures, then the TrainingConfig values this trial set."""
        out = {
            "trial_id": self.trial_id,
            "status": self.status,
            "val_loss": self.val_loss,
            "val_audio_accuracy": self.val_audio_accuracy,
            "step": self.step,
            "last_step": self.last_step,
            "mlflow_run_id": self.mlflow_run_id,
            "error": self.error,
        }
        out.update(self.overrides)
        return out


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize_trial(result: Any, base: TrainingConfig, trials_root: Path, lengths: Any) -> TrialSummary:
    """What Tune saw of a trial (its validation reports), completed by the trial's own end record when present.

    The final val_loss is the last one reported; a trial that ran to its end wrote ``trial_result.json`` with the
    trainer's final metrics, which win if Tune missed the last report. Where that file is not visible (the trial
    ran on another node), a trial whose reports reached its planned last step counts as completed.
    """
    trial_id = Path(result.path).name
    params = dict(result.config or {})
    summary = TrialSummary(trial_id, "error" if result.error else "early_stopped", params, {})
    summary.overrides = trial_overrides(base, params)
    summary.output_dir = str(trials_root / trial_id)
    if result.error:
        summary.error = f"{type(result.error).__name__}: {result.error}"[:2000]
    frame = result.metrics_dataframe
    if frame is not None and TUNE_METRIC in frame:
        rows = frame[frame[TUNE_METRIC].notna()].to_dict("records")
        for row in rows:
            path = row.get("checkpoint_path")
            if isinstance(path, str) and path:
                summary.checkpoints.append((int(row[TIME_ATTR]), float(row[TUNE_METRIC]), path))
        if rows:
            last = rows[-1]
            summary.val_loss = _num(last[TUNE_METRIC])
            summary.val_audio_accuracy = _num(last.get("val_audio_accuracy"))
            summary.step = int(last[TIME_ATTR])
            path = last.get("checkpoint_path")
            summary.checkpoint_path = path if isinstance(path, str) and path else None
        if TIME_ATTR in frame and frame[TIME_ATTR].notna().any():
            summary.last_step = int(frame[TIME_ATTR].max())
    reached = summary.last_step or 0
    if not result.error and reached and reached >= planned_steps(base.replace(**summary.overrides), lengths):
        summary.status = "completed"
    end = trials_root / trial_id / TRIAL_RESULT_FILE
    if end.exists() and not result.error:
        record = json.loads(end.read_text())
        metrics = record.get("metrics", {})
        summary.status = "completed"
        if TUNE_METRIC in metrics and int(metrics.get(TIME_ATTR, 0)) >= (summary.step or 0):
            summary.val_loss = _num(metrics[TUNE_METRIC])
            summary.val_audio_accuracy = _num(metrics.get("val_audio_accuracy"))
            summary.step = int(metrics.get(TIME_ATTR, 0))
            summary.last_step = max(summary.last_step or 0, summary.step)
            summary.checkpoint_path = record.get("checkpoint") or summary.checkpoint_path
    return summary


def select_best(trials: list[TrialSummary]) -> TrialSummary | None:
    """The trial with the lowest final val_loss (any status but error); ties go to the earlier trial."""
    scored = [t for t in trials if t.status != "error" and t.val_loss is not None]
    return min(scored, key=lambda t: t.val_loss) if scored else None  # type: ignore[arg-type,return-value]


def _fetch_checkpoint(path: str, into: Path) -> Path | None:
    """A reported checkpoint as a local directory (storage may be remote); None when it was pruned."""
    from ray.train import Checkpoint

    try:
        return Path(Checkpoint(path).to_directory(str(into)))
    except (FileNotFoundError, OSError) as err:
        logger.info("checkpoint %s is not available (%s)", path, err)
        return None


def export_best(best: TrialSummary, dest: Path) -> dict[str, Any]:
    """Copy the best trial's adapter and training config to ``dest`` and write ``best_trial.json``.

    Source, in order: the trial's final adapter (it ran to its end, and this node sees its output dir); the
    checkpoint reported with its final val_loss; its best surviving checkpoint (keep_best_k may have pruned the
    last one). ``best_trial.json`` says which, with that adapter's own step and val_loss.
    """
    if dest.exists():
        shutil.rmtree(dest)
    adapter = Path(best.output_dir) / "adapter"
    source: dict[str, Any]
    if best.status == "completed" and (adapter / "adapter_config.json").exists():
        shutil.copytree(adapter, dest)
        source = {"kind": "final_adapter", "path": str(adapter), "step": best.step, "val_loss": best.val_loss}
    else:
        candidates = [(best.step, best.val_loss, best.checkpoint_path)] if best.checkpoint_path else []
        candidates += sorted(best.checkpoints, key=lambda c: c[1])
        source = {}
        with tempfile.TemporaryDirectory(prefix="higgs-best-") as tmp:
            for i, (step, val_loss, path) in enumerate(candidates):
                local = _fetch_checkpoint(path, Path(tmp) / str(i))
                if local is None or not (local / "adapter" / "adapter_config.json").exists():
                    continue
                shutil.copytree(local / "adapter", dest)
                shutil.copy2(local / "config.yaml", dest / "training_config.yaml")
                source = {"kind": "checkpoint", "path": path, "step": step, "val_loss": val_loss}
                break
        if not source:
            raise FileNotFoundError(f"no adapter of best trial {best.trial_id} is reachable (tried {candidates})")
    record = {
        "trial_id": best.trial_id,
        "status": best.status,
        "val_loss": best.val_loss,
        "val_audio_accuracy": best.val_audio_accuracy,
        "step": best.step,
        "params": best.params,
        "training_overrides": best.overrides,
        "mlflow_run_id": best.mlflow_run_id,
        "adapter_source": source,
    }
    (dest / "best_trial.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def write_trial_table(trials: list[TrialSummary], output: Path) -> tuple[Path, Path]:
    """``trials.csv`` (one row per trial) and ``trials.json`` (the same plus drawn params and checkpoints)."""
    rows = [t.row() for t in trials]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = output / "trials.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path = output / "trials.json"
    json_path.write_text(json.dumps([asdict(t) for t in trials], indent=2, default=str) + "\n")
    return csv_path, json_path


def close_child_runs(tracking_uri: str, experiment: str, parent_run_id: str, trials: list[TrialSummary]) -> None:
    """Link trials to their child runs, log each one's final figures, and end the runs ASHA killed mid-flight."""
    from mlflow import MlflowClient

    from higgs_train.tracking import RunTracker, find_runs

    children = {
        r["tags"].get("tune_trial_id"): r
        for r in find_runs(tracking_uri, experiment)
        if r["parent_run_id"] == parent_run_id
    }
    client = MlflowClient(tracking_uri=tracking_uri)
    for trial in trials:
        run = children.get(trial.trial_id)
        if run is None:
            continue
        trial.mlflow_run_id = run["run_id"]
        tracker = RunTracker(tracking_uri).attach(run["run_id"])
        tracker.set_tags({"tune_status": trial.status, "tune_error": trial.error})
        final = {"final_val_loss": trial.val_loss, "final_val_audio_accuracy": trial.val_audio_accuracy}
        tracker.log_metrics({k: v for k, v in final.items() if v is not None}, step=trial.step or 0)
        if run["status"] == "RUNNING":  # the trial actor was stopped before its own `with tracker` could end it
            try:
                client.set_terminated(run["run_id"], status="FAILED" if trial.status == "error" else "FINISHED")
            except Exception as exc:
                logger.warning("MLflow: could not end child run %s (%s)", run["run_id"], exc)


# --------------------------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Where the sweep's outputs went."""

    output_dir: Path
    sweep_name: str
    mlflow_run_id: str | None
    tracking_uri: str
    trials: list[TrialSummary]
    best: dict[str, Any] | None

    def summary(self) -> str:
        counts = {s: sum(t.status == s for t in self.trials) for s in ("completed", "early_stopped", "error")}
        best = (
            f"best trial {self.best['trial_id']} val_loss={self.best['val_loss']:.4f} "
            f"(adapter in {self.output_dir / BEST_DIR})"
            if self.best
            else "no best trial"
        )
        return (
            f"sweep {self.sweep_name}: {len(self.trials)} trials ({counts['completed']} completed, "
            f"{counts['early_stopped']} early-stopped, {counts['error']} failed); {best}; table "
            f"{self.output_dir / 'trials.csv'}; MLflow parent run {self.mlflow_run_id} at {self.tracking_uri}"
        )


def fresh_name(storage: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when a sweep of that name already has a directory in local storage."""
    if "://" in storage or not (Path(storage) / name).exists():
        return name
    suffix = 2
    while (Path(storage) / f"{name}-{suffix}").exists():
        suffix += 1
    return f"{name}-{suffix}"


def run_sweep(config: TrainingConfig, settings: SweepSettings) -> SweepResult:
    """Caches once, then a Tuner of ``run_trial``s, then the trial table, child-run closing and the best adapter."""
    import ray
    from ray import tune

    from higgs_train.job import build_caches, check_cpu_budget, init_ray, storage_root, write_data_reports
    from higgs_train.models import resolve_paths
    from higgs_train.tracking import RunTracker, resolve_tracking_uri

    settings.validate()
    spec = load_search_space(settings.search_space)
    if config.quick_test:
        config = config.apply_quick_test()
    output = Path(config.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    storage = storage_root(config)
    sweep_name = fresh_name(storage, config.run_name or output.name)
    config = config.replace(run_name=sweep_name, resume_from="")
    tracking_uri = resolve_tracking_uri(output, config.mlflow_tracking_uri)
    tracker = RunTracker(tracking_uri)
    sweep_params = {f"tune/{k}": v for k, v in asdict(settings).items()}
    tags = {"tune_sweep": sweep_name, "run_kind": "tune_sweep", "model_path": config.model_path}
    with tracker.start(config.mlflow_experiment, sweep_name, params={**config.to_dict(), **sweep_params}, tags=tags):
        tracker.log_artifact(search_space_path(settings.search_space))
        paths = resolve_paths(config.model_path, config.audio_tokenizer_path, config.tokenizer_path or None)
        init_ray(config)
        check_cpu_budget(config)
        resources = plan_resources(config, settings, ray.cluster_resources())
        logger.info("trial resources: %s", resources)
        train_cache, val_cache, cache_root = build_caches(config, paths)
        quarantined, report_files = write_data_reports(output, {"train": train_cache, "val": val_cache})
        encoder_calls = train_cache.encoder_calls + (val_cache.encoder_calls if val_cache else 0)
        tracker.set_tags({"train_cache_key": train_cache.key, "val_cache_key": val_cache.key if val_cache else None})
        tracker.log_metrics(
            {
                "data/train_rows": train_cache.entry.num_rows,
                "data/quarantined_rows": quarantined,
                "data/encoder_calls": encoder_calls,
            },
            step=0,
        )
        if train_cache.entry.num_rows == 0:
            raise ValueError(f"no training rows survived preprocessing; see {output / 'quarantine_summary.json'}")
        if val_cache is None or val_cache.entry.num_rows == 0:
            raise ValueError("a sweep ranks trials by val_loss: give --val_data with at least one valid row")
        total_steps = planned_steps(config, train_cache.entry.lengths())  # the same rule as the trainer's
        registry = ray.remote(num_cpus=0)(PlacementGroupRegistry).remote()
        context = TrialContext(
            base_config=config.to_dict(),
            cache_root=str(cache_root.resolve()),
            train_key=train_cache.key,
            val_key=val_cache.key,
            trials_root=str(output / "trials"),
            trainer_storage=f"{storage.rstrip('/')}/{sweep_name}-trials",
            sweep_name=sweep_name,
            tracking_uri=tracking_uri,
            experiment=config.mlflow_experiment,
            parent_run_id=tracker.run_id,
            placement_groups=registry,
        )
        points = quick_test_points(spec, settings.num_samples) if config.quick_test else []
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, context=context), {"CPU": resources.function_cpus}
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(spec),
            tune_config=tune.TuneConfig(
                metric=TUNE_METRIC,
                mode=TUNE_MODE,
                search_alg=make_search_alg(settings.search_alg, spec, config.seed, points, resources.max_concurrent),
                scheduler=make_scheduler(
                    total_steps, settings.grace_period or config.eval_every_steps, settings.reduction_factor
                ),
                num_samples=settings.num_samples,
                reuse_actors=False,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=sweep_name, storage_path=storage, verbose=1, callbacks=[ReleasePlacementGroups(registry)]
            ),
        )
        grid = tuner.fit()
        ray.kill(registry)
        lengths = train_cache.entry.lengths()
        trials = [summarize_trial(r, config, output / "trials", lengths) for r in grid]
        close_child_runs(tracking_uri, config.mlflow_experiment, tracker.run_id or "", trials)
        csv_path, json_path = write_trial_table(trials, output)
        for path in (csv_path, json_path):
            tracker.log_artifact(path)
        for path in report_files:
            tracker.log_artifact(path, "data")
        counts = {s: sum(t.status == s for t in trials) for s in ("completed", "early_stopped", "error")}
        tracker.log_metrics({f"trials/{k}": v for k, v in counts.items()}, step=0)
        best_trial = select_best(trials)
        best = None
        if best_trial is not None:
            best = export_best(best_trial, output / BEST_DIR)
            tracker.log_artifact(output / BEST_DIR, BEST_DIR)
            tracker.log_metrics({"best_val_loss": best_trial.val_loss}, step=best_trial.step or 0)
            tracker.set_tags({"best_trial_id": best_trial.trial_id, "best_mlflow_run_id": best_trial.mlflow_run_id})
        if best is None:
            raise RuntimeError(f"no trial of sweep {sweep_name} reported a val_loss; see {csv_path}")
    return SweepResult(output, sweep_name, tracker.run_id, tracking_uri, trials, best)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """train.py's flags (generated from TrainingConfig) plus the sweep's own."""
    from higgs_train.cli import build_parser as training_parser

    parser = training_parser()
    parser.prog = "ray_jobs/tune.py"
    parser.description = "Ray Tune sweep (ASHA on val_loss) over LoRA and loss settings of the training job."
    group = parser.add_argument_group("sweep")
    defaults = SweepSettings()
    group.add_argument("--search_space", default=defaults.search_space, help="Search-space YAML.")
    group.add_argument("--num_samples", type=int, default=defaults.num_samples, help="Trials (times any grid).")
    group.add_argument(
        "--max_concurrent_trials",
        type=int,
        default=defaults.max_concurrent_trials,
        help="Trials at once (0: as many as the cluster fits whole: CPUs / (cpus_per_trial + training CPUs)).",
    )
    group.add_argument("--search_alg", choices=SEARCH_ALGS, default=defaults.search_alg, help="Searcher (seeded).")
    group.add_argument(
        "--cpus_per_trial", type=float, default=defaults.cpus_per_trial, help="CPUs of each trial's function."
    )
    group.add_argument(
        "--grace_period", type=int, default=defaults.grace_period, help="ASHA's first rung (0: eval_every_steps)."
    )
    group.add_argument(
        "--reduction_factor", type=float, default=defaults.reduction_factor, help="ASHA's reduction factor."
    )
    return parser


SWEEP_FLAGS = tuple(SweepSettings.__dataclass_fields__)


def args_from_argv(argv: list[str] | None = None) -> tuple[TrainingConfig, SweepSettings]:
    """Training config (defaults < --config file < flags, as train.py) and the sweep settings."""
    args = vars(build_parser().parse_args(argv))
    settings = SweepSettings(**{k: args.pop(k) for k in SWEEP_FLAGS})
    config_file = args.pop("config")
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in args.items() if v is not None})
    return TrainingConfig.from_dict(data), settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, settings = args_from_argv(argv)
        settings.validate()
        load_search_space(settings.search_space)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_sweep(config, settings)
    print(result.summary())
    return 0
