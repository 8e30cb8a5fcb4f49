"""The training job's driver: resolve -> prepare -> fit -> finalize.

1. resolve the run (``driver.cluster``: quick-test shrink, run name, storage, auto-resume), open the MLflow run,
   join or start Ray and check its resources;
2. prepare the data (``driver.prepare``: manifests -> token caches in Ray Data CPU actors, reports, data metrics);
3. fit a ``TorchTrainer`` whose workers run ``HiggsAudioTrainer`` (``driver.worker``);
4. finalize: take the final adapter and history from the run's final checkpoint in storage (workers may run on
   other machines: nothing they write on their disks is read here), write them and the loss curve into
   ``--output_dir``, log them with the resolved config and data reports; end the MLflow run FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.adapter import ADAPTER_DIR, STATE_FILE
from higgs_train.atomic_files import replace_dir, staging_dir, write_atomic
from higgs_train.config import TrainingConfig
from higgs_train.console import quiet_libraries
from higgs_train.data.shard_stream import stream_root_for_workers
from higgs_train.driver.cluster import (
    COMPLETED_MARKER,
    check_cpu_budget,
    resolve_run,
    run_params,
    storage_root,
    stream_cache_location,
)
from higgs_train.driver.prepare import prepare_token_caches
from higgs_train.driver.tracker_relay import start_tracker_relay
from higgs_train.driver.worker import WorkerSpec, build_torch_trainer
from higgs_train.evaluation.in_training import validation_hooks
from higgs_train.paths import resolve_user_paths
from higgs_train.ray_session import init_ray
from higgs_train.storage import join
from higgs_train.tracking.loss_curve import plot_loss_curve
from higgs_train.tracking.store import resolve_tracking_uri, tracking_error_in
from higgs_train.tracking.tracker import RunTracker
from higgs_train.training.checkpoint import TrainerState
from higgs_train.training.checkpoint_store import open_checkpoint, remove_debris, write_marker

logger = logging.getLogger(__name__)


@dataclass
class JobResult:
    """Where things went and the final metrics."""

    output_dir: Path
    adapter_dir: Path
    run_name: str
    mlflow_run_id: str | None
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    quarantined: int = 0
    resumed_from: str | None = None

    def summary(self) -> str:
        keys = ("total_loss", "text_loss", "audio_loss", "val_loss", "val_audio_accuracy")
        shown = ", ".join(f"{k}={self.metrics[k]:.4f}" for k in keys if k in self.metrics)
        tracked = f"MLflow run {self.mlflow_run_id} at {self.tracking_uri}" if self.mlflow_run_id else "not tracked"
        return (
            f"run {self.run_name} finished: adapter at {self.adapter_dir}; {shown}; quarantined rows: "
            f"{self.quarantined}; {tracked}"
        )


class JobOutputsMissing(RuntimeError):
    """Training returned but an output the job promises (adapter, history, loss curve) is not where it should be."""


def _plot_untracked(history: list[dict[str, Any]], output: Path) -> Path | None:
    """The loss curve when tracking is off (the tracker only plots what it logs)."""
    return plot_loss_curve(history, output / "loss_curve.png", title="loss curve")


def last_logged_step(history: list[dict[str, Any]], key: str = "train/total_loss") -> int:
    """The last step of ``history.json`` that carries ``key``: what MLflow must hold when tracking worked."""
    return max((int(row["step"]) for row in history if key in row and "step" in row), default=0)


def check_outputs(adapter_dir: Path, history: Path, loss_curve: Path | None) -> None:
    """A job never reports success when what it promises is not there (the MLflow run then ends FAILED)."""
    expected = [adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors", history]
    missing = [str(p) for p in expected if not p.is_file()]
    if loss_curve is None or not Path(loss_curve).is_file():
        missing.append(str(history.parent / "loss_curve.png"))
    if missing:
        raise JobOutputsMissing(
            "training finished but these outputs are missing: " + ", ".join(missing) + " (a worker may have written "
            "them relative to its own working directory, or the run's final checkpoint did not reach storage)"
        )


def publish_final_outputs(
    checkpoint: str, output: Path, config: TrainingConfig, last_step: int | None = None
) -> list[dict[str, Any]]:
    """Write the final adapter (with ``training_config.yaml``) and ``history.json`` into the driver's ``output``
    from the run's final checkpoint (``checkpoint``: a folder or URI in the run's storage); returns the history.
    ``last_step``: the step training last reported; a checkpoint of another step is refused, never published.

    Every run ends with a checkpoint at its last step (``HiggsAudioTrainer._after_step``), reported to Ray and
    uploaded to storage, and Ray's retention always keeps the latest one. Reading it here instead of what rank 0
    wrote means the driver needs no disk in common with the workers; it is verified against its manifest first.
    """
    with open_checkpoint(checkpoint) as local:
        state = TrainerState.from_json((local / STATE_FILE).read_text())
        if last_step is not None and state.global_step != last_step:
            raise JobOutputsMissing(
                f"training ended at step {last_step} but the run's latest checkpoint {checkpoint} is of step "
                f"{state.global_step}: the final adapter is not in storage; rerun the job (it resumes the run)"
            )
        staging = staging_dir(output / "adapter")
        shutil.copytree(local / ADAPTER_DIR, staging, dirs_exist_ok=True)
    config.replace(resume_from="").save(staging / "training_config.yaml")  # what the workers trained with
    replace_dir(staging, output / "adapter")
    write_atomic(output / "history.json", json.dumps(state.history, indent=1))
    return state.history


def final_checkpoint(result: Any, storage: str, run_name: str) -> str:
    """The run's final checkpoint as a location in ``storage``: Ray's ``Result.checkpoint`` (the latest reported)."""
    if result.checkpoint is None:
        raise JobOutputsMissing(
            f"training finished but Ray reported no checkpoint for run {run_name} in {storage}: the final adapter "
            "and history.json cannot be collected; rerun the job (it resumes from the run's checkpoints)"
        )
    return join(storage, run_name, Path(result.checkpoint.path).name)


def run_training_job(config: TrainingConfig) -> JobResult:
    """Run one training job end to end (see the module docstring).

    The run's lock (``driver.cluster.hold_run``) is held from the run's resolution to its COMPLETED marker, so a
    second job of the same run name is refused instead of sharing its checkpoints and outputs.
    """
    quiet_libraries(config.verbose)
    with contextlib.ExitStack() as hold:
        config, run_name, resume = resolve_run(resolve_user_paths(config), hold)  # absolute before Ray runs anything
        output = Path(config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        tracking_uri = resolve_tracking_uri(output, config.mlflow_tracking_uri)
        tracker = RunTracker(tracking_uri)
        tags = {
            "model_path": config.model_path,
            "audio_tokenizer_path": config.audio_tokenizer_path,
            "run_name": run_name,
            "resumed_from": resume,
        }
        start = tracker.start_or_continue(
            config.mlflow_experiment, run_name, params=run_params(config), tags=tags, resuming=bool(resume)
        )
        with start:
            init_ray(config.verbose)
            check_cpu_budget(config)
            data = prepare_token_caches(config, tracker)
            write_atomic(output / "data_keys.json", json.dumps(data.data_keys, indent=2) + "\n")  # export's card
            config.save(output / "resolved_config.yaml")
            storage = storage_root(config)
            entries = [data.train.entry.path, *([data.val.entry.path] if data.val_key else [])]
            spec = WorkerSpec(
                config=config,
                cache_root=str(data.cache_root),
                train_key=data.train.key,
                val_key=data.val_key,
                mlflow_run_id=tracker.run_id,
                mlflow_tracking_uri=tracking_uri,
                stream_root=stream_root_for_workers(entries, stream_cache_location(config, storage)),
                checkpoint_storage=storage,
                node_local_outputs=True,
                tracker_relay=start_tracker_relay(tracking_uri, tracker.run_id),  # rank 0 logs via this node
                validation_hooks=validation_hooks,
            )
            try:
                result = build_torch_trainer(spec, run_name, storage).fit()
            except Exception as exc:  # a worker that cannot log says so in one line, not in Ray's nested tracebacks
                raise (tracking_error_in(exc) or exc) from exc
            finally:
                if spec.tracker_relay is not None:
                    import ray

                    ray.kill(spec.tracker_relay)
                tracker.log_metrics(data.metrics, step=0)  # after the loss curves (PreparedData.metrics)
            if result.error:
                raise RuntimeError(f"training failed: {result.error}") from result.error
            # A worker restart can leave folders Ray never registered (an upload it did not live to report); the
            # finished run's newer checkpoints supersede them, and Ray's retention never deletes them.
            remove_debris(storage, run_name)
            metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
            adapter_dir = output / "adapter"
            last_step = int(metrics["step"]) if "step" in metrics else None
            history = publish_final_outputs(final_checkpoint(result, storage, run_name), output, config, last_step)
            curve = tracker.log_loss_curve(history, output / "loss_curve.png") or _plot_untracked(history, output)
            check_outputs(adapter_dir, output / "history.json", curve)
            tracker.check_logged("train/total_loss", last_logged_step(history))
            tracker.log_artifact(adapter_dir, "adapter")
            tracker.log_artifact(output / "resolved_config.yaml")
            for path in data.report_files:
                tracker.log_artifact(path, "data")
            write_marker(storage, run_name, COMPLETED_MARKER, json.dumps(metrics, sort_keys=True))
    return JobResult(output, adapter_dir, run_name, tracker.run_id, tracking_uri, metrics, data.quarantined, resume)
