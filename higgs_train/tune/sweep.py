"""The sweep driver: caches once, runs the Tuner, collects results into MLflow and best/."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.config import TrainingConfig
from higgs_train.console import quiet_libraries, quiet_tune_output
from higgs_train.data.shard_stream import stream_root_for_workers
from higgs_train.driver.cluster import check_cpu_budget, resolve_sweep_run, storage_root, stream_cache_location
from higgs_train.driver.prepare import prepare_token_caches
from higgs_train.driver.tracker_relay import start_tracker_relay
from higgs_train.ray_session import init_ray
from higgs_train.tracking.store import resolve_tracking_uri
from higgs_train.tracking.tracker import RunTracker
from higgs_train.training.checkpoint_ranking import checkpoint_score
from higgs_train.training.schedule import planned_steps
from higgs_train.tune.resources import make_scheduler, plan_resources
from higgs_train.tune.results import (
    TrialSummary,
    close_child_runs,
    export_best,
    select_best,
    summarize_trial,
    trial_table_text,
    write_trial_table,
)
from higgs_train.tune.space import (
    BEST_DIR,
    SweepSettings,
    load_search_space,
    make_search_alg,
    quick_test_points,
    search_space_path,
    to_param_space,
)
from higgs_train.tune.trial import (
    PlacementGroupRegistry,
    ReleasePlacementGroups,
    TrialContext,
    TrialResultLines,
    run_trial,
)

logger = logging.getLogger(__name__)


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
    # Metric batches each child run received through the driver-node relay (``driver.tracker_relay``): the trials'
    # only way to MLflow.
    relayed_batches: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        """The final table: one row per trial, best first (what ``trials.csv`` holds, in short)."""
        return trial_table_text(self.trials)

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


def run_sweep(config: TrainingConfig, settings: SweepSettings) -> SweepResult:
    """Caches once, then a Tuner of ``run_trial``s, then the trial table, child-run closing and the best adapter.

    Trials are ranked (by ASHA while they run, and for the best adapter at the end) by ``--checkpoint_metric``:
    val_loss, or the voice metrics SIM / WER of ``--eval_rows`` generated validation rows.
    """
    import ray
    from ray import tune

    quiet_libraries(config.verbose)
    settings.validate()
    spec = load_search_space(settings.search_space)
    config = resolve_sweep_run(config)
    output = Path(config.output_dir).resolve()
    storage = storage_root(config)
    sweep_name = config.run_name
    score_key, score_mode = checkpoint_score(config.checkpoint_metric)
    tracking_uri = resolve_tracking_uri(output, config.mlflow_tracking_uri)
    tracker = RunTracker(tracking_uri)
    sweep_params = {f"tune/{k}": v for k, v in asdict(settings).items()}
    tags = {"tune_sweep": sweep_name, "run_kind": "tune_sweep", "model_path": config.model_path}
    start = tracker.start(config.mlflow_experiment, sweep_name, params={**config.to_dict(), **sweep_params}, tags=tags)
    with start, contextlib.ExitStack() as hold:
        tracker.log_artifact(search_space_path(settings.search_space))
        init_ray(config.verbose)
        check_cpu_budget(config)
        resources = plan_resources(config, settings, ray.cluster_resources())
        logger.info("trial resources: %s", resources)
        data = prepare_token_caches(config, tracker)
        tracker.log_metrics(data.metrics, step=0)  # the parent run has no loss curves to show first
        if data.val_key is None:
            raise ValueError("a sweep ranks trials by val_loss: give --val_data with at least one valid row")
        # Trials stream both entries from the run's storage when it is a URI (or --stream_cache_uri), as train.py's
        # workers do, so no trial reads the driver's --cache_dir.
        stream_root = stream_root_for_workers(
            [data.train.entry.path, data.val.entry.path], stream_cache_location(config, storage)
        )
        lengths = data.train.entry.lengths()
        total_steps = planned_steps(config, lengths)  # the trainer's own rule
        registry = ray.remote(num_cpus=0)(PlacementGroupRegistry).remote()
        relay = start_tracker_relay(tracking_uri, tracker.run_id)  # the trials' MLflow, on this node
        if relay is not None:
            hold.callback(ray.kill, relay)  # even when the sweep fails
        context = TrialContext(
            base_config=config,
            cache_root=str(data.cache_root),
            stream_root=stream_root,
            train_key=data.train.key,
            val_key=data.val_key,
            trials_root=str(output / "trials"),
            trainer_storage=f"{storage.rstrip('/')}/{sweep_name}-trials",
            sweep_name=sweep_name,
            experiment=config.mlflow_experiment,
            parent_run_id=tracker.run_id,
            placement_groups=registry,
            tracker_relay=relay,
        )
        points = quick_test_points(spec, settings.num_samples) if config.quick_test else []
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, context=context), {"CPU": resources.function_cpus}
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(spec),
            tune_config=tune.TuneConfig(
                metric=score_key,
                mode=score_mode,
                search_alg=make_search_alg(settings.search_alg, spec, config.seed, points, resources.max_concurrent),
                scheduler=make_scheduler(
                    total_steps, settings.grace_period or config.eval_every_steps, settings.reduction_factor
                ),
                num_samples=settings.num_samples,
                reuse_actors=False,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=sweep_name,
                storage_path=storage,
                verbose=2 if config.verbose else 0,  # Tune's status tables only with --verbose
                callbacks=[ReleasePlacementGroups(registry), TrialResultLines(total_steps)],
            ),
        )
        with quiet_tune_output(config.verbose):
            grid = tuner.fit()
        ray.kill(registry)
        relayed = ray.get(relay.logged_batches.remote()) if relay is not None else {}
        trials = [summarize_trial(r, config, output / "trials", lengths) for r in grid]
        close_child_runs(tracking_uri, config.mlflow_experiment, tracker.run_id or "", trials)
        for trial in trials:  # a trial whose worker could not log fails the sweep (tracking.check_logged)
            if trial.status != "error" and trial.mlflow_run_id:
                RunTracker(tracking_uri).attach(trial.mlflow_run_id).check_logged("train/total_loss", trial.step or 0)
        csv_path, json_path = write_trial_table(trials, output)
        for path in (csv_path, json_path):
            tracker.log_artifact(path)
        for path in data.report_files:
            tracker.log_artifact(path, "data")
        counts = {s: sum(t.status == s for t in trials) for s in ("completed", "early_stopped", "error")}
        tracker.log_metrics({f"trials/{k}": v for k, v in counts.items()}, step=0)
        best_trial = select_best(trials, score_mode)
        best = None
        if best_trial is not None:
            best = export_best(best_trial, output / BEST_DIR)
            tracker.log_artifact(output / BEST_DIR, BEST_DIR)
            best_metrics = {"best_val_loss": best_trial.val_loss, f"best_{config.checkpoint_metric}": best_trial.score}
            tracker.log_metrics({k: v for k, v in best_metrics.items() if v is not None}, step=best_trial.step or 0)
            tracker.set_tags({"best_trial_id": best_trial.trial_id, "best_mlflow_run_id": best_trial.mlflow_run_id})
        if best is None:
            raise RuntimeError(f"no trial of sweep {sweep_name} reported {score_key}; see {csv_path}")
    return SweepResult(output, sweep_name, tracker.run_id, tracking_uri, trials, best, relayed)
