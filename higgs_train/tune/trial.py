"""One trial: a function trainable that creates its MLflow child run and fits one TorchTrainer.

A trial function and its training workers may run on any node, so neither opens the tracking store: the child run
is created, logged into and closed through the sweep's ``TrackerRelay`` on the driver's node (``TrialContext``
carries the relay, not the store's URI).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from higgs_train.config import TrainingConfig
from higgs_train.console import emit
from higgs_train.driver.cluster import run_params
from higgs_train.driver.tracker_relay import RelayedTracker
from higgs_train.driver.worker import WORKER_SPEC, WorkerSpec, build_torch_trainer, run_worker
from higgs_train.evaluation.in_training import validation_hooks
from higgs_train.tracking.tracker import RunTracker
from higgs_train.tune.space import TRIAL_RESULT_FILE, TUNE_METRIC, trial_overrides

logger = logging.getLogger(__name__)


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


def trial_train_loop(loop_config: dict[str, WorkerSpec]) -> None:
    """``train_loop_per_worker``, after rank 0 has registered the worker group's placement group."""
    import ray
    import ray.train

    spec = loop_config[WORKER_SPEC]
    group = ray.util.get_current_placement_group()
    if spec.placement_groups is not None and group is not None and ray.train.get_context().get_world_rank() == 0:
        ray.get(spec.placement_groups.register.remote(spec.trial_id, group))
    run_worker(spec)


class TrialResultLines(Callback):
    """The sweep's console: one line per trial result (what Tune's status tables and every trial's step lines
    used to say in about 250 lines for a 3-trial smoke sweep), and one per failed trial."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any):
        emit(trial_result_line(trial.trial_id, trial.config, result, self.total_steps))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        emit(f"trial {trial.trial_id} failed: see {getattr(trial, 'path', None) or 'its error.txt'}")


def trial_result_line(trial_id: str, params: dict[str, Any], result: dict[str, Any], total_steps: int) -> str:
    """``trial 3a1f_00002 [lora_r=16 ...] step 4/8 | val_loss 7.1234 acc 0.004 | loss 7.3456``."""
    drawn = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    parts = [f"trial {trial_id} [{drawn}] step {result.get('step', '?')}/{total_steps}"]
    if "val_loss" in result:
        parts.append(f"val_loss {result['val_loss']:.4f} acc {result.get('val_audio_accuracy', 0.0):.3f}")
    if "total_loss" in result or "train/total_loss" in result:
        parts.append(f"loss {result.get('train/total_loss', result.get('total_loss')):.4f}")
    return " | ".join(parts)


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

    base_config: TrainingConfig
    cache_root: str
    train_key: str
    val_key: str
    trials_root: str
    trainer_storage: str
    sweep_name: str
    experiment: str
    parent_run_id: str | None
    placement_groups: Any = None
    # The sweep's ``TrackerRelay`` (driver node): the only way a trial reaches MLflow. None: tracking is off.
    tracker_relay: Any = None
    stream_root: str = ""  # where the trials' workers read the entries (a URI, or the local cache root)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-{trial_id}"


def _short_number(value: float) -> str:
    """2e-4 for 0.0002, 0.1 for 0.1, 1 for 1.0: short enough for a run name, exact enough to tell trials apart."""
    if value != 0 and not 1e-2 <= abs(value) < 1e3:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def readable_trial_name(config: TrainingConfig, params: dict[str, Any], trial_id: str) -> str:
    """The MLflow name of a trial's run, from what it tries: ``r16-a32-lr2e-4-audio1.5-<trial>``.

    Rank, alpha and learning rate always; the loss weights only when the sweep draws them. The end of the trial
    id keeps names unique when two trials draw the same values (grid repeats)."""
    parts = [f"r{config.lora_r}", f"a{config.lora_alpha}", f"lr{_short_number(config.learning_rate)}"]
    for name, label in (
        ("text_loss_weight", "text"),
        ("audio_loss_weight", "audio"),
    ):
        if name in params:
            parts.append(f"{label}{_short_number(float(getattr(config, name)))}")
    parts.append(trial_id.rsplit("_", 1)[-1][-5:])
    return "-".join(parts)


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: one child MLflow run and one TorchTrainer over the shared token cache."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    base = context.base_config
    run_name = trial_run_name(context.sweep_name, trial_id)
    output = Path(context.trials_root) / trial_id
    config = base.replace(**trial_overrides(base, params), output_dir=str(output), run_name=run_name)
    output.mkdir(parents=True, exist_ok=True)
    config.save(output / "resolved_config.yaml")
    data_keys = {"train_cache_key": context.train_key, "val_cache_key": context.val_key}
    (output / "data_keys.json").write_text(
        json.dumps(data_keys, indent=2) + "\n"
    )  # export's model card, as driver.train
    tags = {
        "tune_trial_id": trial_id,
        "tune_sweep": context.sweep_name,
        "tune_params": json.dumps(params, sort_keys=True, default=str),
        **data_keys,
    }
    tracker = RunTracker.disabled()
    if context.tracker_relay is not None:
        tracker = RelayedTracker.start(
            context.tracker_relay,
            context.experiment,
            readable_trial_name(config, params, trial_id),
            params=run_params(config),
            tags=tags,
            parent_run_id=context.parent_run_id,
        )
    spec = WorkerSpec(
        config=config,
        cache_root=context.cache_root,
        stream_root=context.stream_root,
        train_key=context.train_key,
        val_key=context.val_key,
        mlflow_run_id=tracker.run_id,
        mlflow_tracking_uri="",  # rank 0 logs through the relay only
        trial_id=trial_id,
        placement_groups=context.placement_groups,
        tracker_relay=context.tracker_relay,
        validation_hooks=validation_hooks,
    )
    with tracker:
        trainer = build_torch_trainer(
            spec,
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
