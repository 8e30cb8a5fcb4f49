"""The Ray Train edge: a ``TorchTrainer`` whose per-worker function runs ``HiggsAudioTrainer``.

What a worker needs crosses the process boundary as one typed, frozen ``WorkerSpec`` (built by the training driver
or by a sweep's trial), never as a loose dict.

Data reaches workers through the token cache (Parquet written by the Ray Data preprocessing stage): every worker
plans the epoch from the lengths column alone and streams only the rows of its own share of that deterministic plan
(``data/shard_stream.py``), which guarantees equal step counts per worker (Ray Data's streaming split gives equal
*rows*, not equal token-budget batches, and unequal step counts hang DDP). The entry is read from
``stream_cache_uri`` (``s3://``, ``gs://``, ``file://``) when set (by default ``<storage_path>/_token_cache`` when the
run's storage is a URI), else from ``cache_dir``; the validation entry is read whole from the same place.

Nothing a worker writes has to reach the driver through a disk: with ``WorkerSpec.node_local_outputs`` rank 0
writes its own files (validation samples, evaluation rows, the adapter it saves at the end) into a scratch folder
of its node (``worker_scratch_dir``), and the driver takes the final adapter and history from the run's final
checkpoint in storage (``driver.train.publish_final_outputs``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.adapter import STATE_FILE
from higgs_train.config import TrainingConfig
from higgs_train.console import train_logging_config
from higgs_train.data.shard_stream import open_shard_stream, read_entry
from higgs_train.driver.tracker_relay import RelayedTracker
from higgs_train.storage import filesystem_and_path
from higgs_train.tracking.tracker import RunTracker
from higgs_train.training.checkpoint import CheckpointError
from higgs_train.training.checkpoint_ranking import checkpoint_score
from higgs_train.training.checkpoint_store import find_resume_checkpoint
from higgs_train.training.context import WorkerContext, as_float_metrics
from higgs_train.training.hooks import ValidationHook
from higgs_train.training.trainer import HiggsAudioTrainer


@dataclass
class RayWorkerContext(WorkerContext):
    """Rank/device/DDP from Ray Train; reports go through ``ray.train.report`` (rank 0 attaches the checkpoint)."""

    @classmethod
    def current(cls, tracker: Any = None, console_lines: bool = True) -> RayWorkerContext:
        """The context of the Ray Train worker this runs in; ``tracker`` (rank 0's RunTracker) receives logs."""
        import ray.train
        import ray.train.torch

        train_context = ray.train.get_context()
        return cls(
            rank=train_context.get_world_rank(),
            world_size=train_context.get_world_size(),
            device=ray.train.torch.get_device(),
            # A batch without trained audio-out positions leaves the audio-MLP adapters without a gradient; DDP
            # must not wait for them.
            prepare_model=lambda m: ray.train.torch.prepare_model(
                m, parallel_strategy_kwargs={"find_unused_parameters": True}
            ),
            log_metrics=tracker.log_metrics if tracker else lambda metrics, step: None,
            log_artifact=tracker.log_artifact if tracker else lambda path, artifact_path: None,
            last_logged_step=(lambda: tracker.last_logged_step("train/total_loss")) if tracker else lambda: 0,
            console_lines=console_lines,
        )

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, save_step: bool = False) -> None:
        """Report validation/checkpoint steps to Ray; per-step training metrics go straight to MLflow (rank 0).

        A Ray Train report is a synchronisation point between workers and the controller (measured here: ~1.5 s
        per report on the tiny model, 15x the step itself), so plain training steps skip it. Every rank must take
        the same decision (the report is a collective: a rank that skips it leaves the others waiting forever), so
        it rests on what every rank knows: a validation step, or ``save_step``. It must not rest on
        ``checkpoint_dir``, which only rank 0 has (a job without validation data hung at its first checkpoint).
        """
        import ray.train

        if not save_step and "val_loss" not in metrics:
            return

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(as_float_metrics(metrics), checkpoint=checkpoint)


WORKER_SPEC = "worker_spec"  # the one key of Ray Train's ``train_loop_config``


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a training worker is handed: the resolved config, where the token caches are, the MLflow run.

    ``trial_id`` and ``placement_groups`` are set by a Tune trial only (``tune.trial``): rank 0 registers the
    worker group's placement group with the sweep's registry so a stopped trial gives its CPUs back.
    """

    config: TrainingConfig
    cache_root: str
    train_key: str
    val_key: str | None
    mlflow_run_id: str | None
    mlflow_tracking_uri: str
    stream_root: str = ""  # where workers stream the training entry from (a URI); empty: cache_root
    # Ray Train storage of the run (``<storage>/<run_name>/checkpoint_*``): a restarted worker also looks there for
    # checkpoints Ray did not live to register. Empty (a Tune trial): only Ray's and the driver's choice count.
    checkpoint_storage: str = ""
    trial_id: str | None = None
    placement_groups: Any = None
    # True (the training driver): rank 0 writes into its node's scratch folder, never into ``config.output_dir``,
    # a path of the driver's machine. False (a Tune trial): into ``config.output_dir``, where the sweep looks first.
    node_local_outputs: bool = False
    # A ``TrackerRelay`` actor on the driver's node (``driver.tracker_relay``; the training driver's, or a sweep's):
    # rank 0 logs into ``mlflow_run_id`` through it. None: rank 0 attaches to ``mlflow_tracking_uri`` itself.
    tracker_relay: Any = None
    # What rank 0 runs at each validation besides the loss, built from the run's config on the worker
    # (``evaluation.in_training.validation_hooks``: audio samples, voice metrics). The driver hands it over, so the
    # worker and the loop below it import no evaluation or generation code. None: the loss only.
    validation_hooks: Callable[[TrainingConfig], list[ValidationHook]] | None = None


WORKER_SCRATCH_ENV = "HIGGS_WORKER_SCRATCH"


def worker_scratch_dir(run_name: str) -> Path:
    """Rank 0's writable folder on its own node: ``$HIGGS_WORKER_SCRATCH/<run>`` (else under the node's temp dir).

    Files there are evidence only (they are logged to MLflow as they are written); what the job promises in
    ``--output_dir`` reaches the driver through the run's storage.
    """
    root = os.environ.get(WORKER_SCRATCH_ENV) or str(Path(tempfile.gettempdir()) / "higgs-train-worker")
    return Path(root) / run_name


def train_loop_per_worker(loop_config: dict[str, WorkerSpec]) -> None:
    """Ray Train's entry on every worker (Ray hands over a dict; it carries one ``WorkerSpec``)."""
    run_worker(loop_config[WORKER_SPEC])


def run_worker(spec: WorkerSpec) -> None:
    """Runs on every Ray Train worker."""
    import ray.train

    config = spec.config
    if spec.node_local_outputs:
        config = config.replace(output_dir=str(worker_scratch_dir(config.run_name)))
    tracker = RunTracker.disabled()
    if ray.train.get_context().get_world_rank() == 0 and spec.tracker_relay is not None:
        tracker = RelayedTracker(spec.tracker_relay, spec.mlflow_run_id)
    elif ray.train.get_context().get_world_rank() == 0 and spec.mlflow_run_id:
        tracker = RunTracker(spec.mlflow_tracking_uri).attach(spec.mlflow_run_id)
    context = RayWorkerContext.current(tracker, console_lines=spec.trial_id is None)
    world = context.world_size
    # Only this worker's rows, one step ahead, from wherever the driver published the entries (data/shard_stream.py);
    # the validation entry, small and needed whole, from the same place (not the driver's cache_root).
    stream_root = spec.stream_root or spec.cache_root
    train_records = open_shard_stream(stream_root, spec.train_key)
    val_records = read_entry(stream_root, spec.val_key) if spec.val_key else []
    if world > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    hooks = spec.validation_hooks(config) if spec.validation_hooks is not None else []
    trainer = HiggsAudioTrainer(
        config.replace(resume_from=""), train_records, val_records, context, validation_hooks=hooks
    )
    trainer.setup()
    stored = (spec.checkpoint_storage, config.run_name) if spec.checkpoint_storage else None
    restore_worker(trainer, ray.train.get_checkpoint(), config.resume_from, stored)
    trainer.train()
    train_records.close()


def restore_worker(trainer: Any, reported: Any, resume_from: str, stored: tuple[str, str] | None = None) -> None:
    """Continue from where this run stands: the newest verified of Ray's latest reported checkpoint, the driver's
    choice and the run's own checkpoint folders in storage.

    ``reported`` (``ray.train.get_checkpoint()``) is set when Ray restarted the worker group after a failure, or
    when a rerun finds the run's snapshot in storage; it is the newest checkpoint Ray *registered*. A worker killed
    after uploading a checkpoint but before Ray registered it leaves a complete, newer folder that Ray does not
    know of (a SIGKILL at step 5 restored step 2 while step 4 lay verified in storage): ``stored`` = (storage,
    run name) adds the newest folder of the run that verifies (``checkpoint_store.find_resume_checkpoint``; the
    run's lock guarantees no live job of another driver writes there). ``resume_from`` is the driver's choice:
    the user's ``--resume_from``, or the run's newest verified checkpoint when the job started. Every candidate
    is verified before anything is loaded; one that does not verify is skipped with a warning. Folders left
    unregistered are removed when the job ends (``checkpoint_store.remove_debris``). The step restored from is
    logged as ``train/restored_from_step``, so every restart shows in MLflow.
    """
    log = logging.getLogger(__name__)
    with contextlib.ExitStack() as stack:
        candidates: list[tuple[int, str]] = []
        if reported is not None:
            local = stack.enter_context(reported.as_directory())
            try:
                candidates.append((json.loads((Path(local) / STATE_FILE).read_text())["global_step"], local))
            except (OSError, ValueError, KeyError) as err:
                log.warning("not restoring Ray's latest checkpoint %s: %s", reported.path, err)
        if resume_from:
            fs, path = filesystem_and_path(resume_from)
            with fs.open_input_stream(f"{path}/{STATE_FILE}") as stream:
                candidates.append((json.loads(stream.read())["global_step"], resume_from))
        if stored is not None:
            newest = find_resume_checkpoint(*stored)
            if newest is not None and all(newest.global_step > step for step, _ in candidates):
                candidates.append((newest.global_step, newest.location))
        for step, location in sorted(candidates, key=lambda c: c[0], reverse=True):
            try:
                state = trainer.load_checkpoint(location)
            except CheckpointError as err:
                log.warning("not restoring %s (step %d): %s", location, step, err)
                continue
            trainer.context.log_metrics({"train/restored_from_step": state.global_step}, state.global_step)
            return
        if candidates:  # starting over would silently throw the run's progress away
            raise CheckpointError(f"no checkpoint to resume from verifies (tried {[c[1] for c in candidates]})")


def build_torch_trainer(
    spec: WorkerSpec,
    run_name: str,
    storage_path: str,
    callbacks: list[Any] | None = None,
    train_loop: Callable[[dict[str, WorkerSpec]], None] = train_loop_per_worker,
):
    """The ``TorchTrainer`` for one run: resources from the config, best-k checkpoints by val_loss.

    ``callbacks`` go to the ``RunConfig``: a Tune sweep passes its ``TuneReportCallback`` here, since under Train V2
    a trainer is run inside a Tune function trainable rather than handed to the ``Tuner`` itself. ``train_loop``
    lets the sweep wrap ``train_loop_per_worker`` (to register the worker group's placement group).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config = spec.config
    score_key, score_mode = checkpoint_score(config.checkpoint_metric) if spec.val_key else ("step", "max")
    resources = {"CPU": config.cpus_per_train_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config={WORKER_SPEC: spec},
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.placement_strategy,
        ),
        run_config=RunConfig(
            logging_config=train_logging_config(config.verbose),
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_best_k,
                checkpoint_score_attribute=score_key,
                checkpoint_score_order=score_mode,
            ),
            failure_config=FailureConfig(max_failures=config.max_failures),
            callbacks=callbacks,
        ),
    )
