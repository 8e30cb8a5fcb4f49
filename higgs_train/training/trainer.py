"""``HiggsAudioTrainer``: the LoRA training loop on ``HiggsAudioModel``, identical alone and inside Ray Train.

Features and their trade-offs:

* **Loss** -- ``higgs_train.loss.compute_higgs_audio_loss``: shifted text CE on ``expanded_labels``, per-codebook
  audio CE within each audio-out segment. Sums are normalised by the label counts
  of the whole optimizer step over all workers (one tiny all-reduce per step), so the gradient does not depend on
  how a global batch is split into micro-batches or workers.
* **Precision** -- ``precision``: bf16 base weights on CUDA, fp32 on CPU by default (bf16 selectable, the GPU's
  exact dtype path); adapters fp32 (or ``adapter_dtype=bf16``); loss in fp32; upstream code never runs under
  autocast (``higgs_train.training.precision`` says why, and the trainer refuses to).
* **Gradient accumulation** -- DDP gradient sync only on the last micro-batch of a step.
* **Activation checkpointing** -- optional, real recomputation of decoder layers (upstream never checkpoints).
* **Determinism** -- the batch plan is a function of (seed, epoch); dropout RNG is reseeded from
  (seed, rank, step) at every step, so a resumed run repeats the uninterrupted run's losses.
* **Checkpoints** -- adapter, optimizer, scheduler, RNG, data position and config; best-k by ``--checkpoint_metric``.
* **Hooks** -- what else runs at a validation (audio samples, voice metrics) is handed in by the driver
  (``training.hooks``), so the loop imports neither generation nor evaluation.
* **Figures** -- tokens/s, padding efficiency and the share of step time spent waiting for data are computed by
  the loop itself and reported with the losses.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from higgs_train.adapter import apply_lora, count_parameters, save_adapter
from higgs_train.atomic_files import replace_dir, staging_dir, write_atomic
from higgs_train.config import TrainingConfig
from higgs_train.console import ProgressLine, emit
from higgs_train.data.batching import plan_epoch
from higgs_train.data.collate import build_collator, collate_records
from higgs_train.data.shard_stream import record_lengths, schedule_steps
from higgs_train.loss import LabelTokenCounts, compute_higgs_audio_loss, count_label_tokens
from higgs_train.model_loading import load_model, load_whisper_processor, resolve_paths
from higgs_train.training.activation_checkpointing import compile_decoder_layers, enable_activation_checkpointing
from higgs_train.training.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from higgs_train.training.checkpoint_store import open_checkpoint
from higgs_train.training.context import LocalContext, WorkerContext
from higgs_train.training.dual_ffn_routing import enable_sync_free_routing
from higgs_train.training.hooks import ValidationHook, ValidationStep
from higgs_train.training.loss_balance import LossBalanceMonitor
from higgs_train.training.precision import assert_no_autocast, cast_adapters, weight_dtype
from higgs_train.training.schedule import build_optimizer, build_scheduler, recommended_learning_rate, steps_in_run
from higgs_train.training.text_head import hidden_states_as_text_logits
from higgs_train.training.throughput import StepTotals, Throughput, reported_metrics

logger = logging.getLogger(__name__)
# Profiler label of the host-side data work of a step (collation, label counts): benchmarks/gpu_step.py --profile
# counts syncs and op launches of the device work outside it.
HOST_DATA_REGION = "higgs_train.host_data"
# The collated batch's fields that HiggsAudioModel.forward takes in training.
MODEL_INPUTS = (
    "input_ids", "attention_mask", "audio_features", "audio_feature_attention_mask", "audio_out_ids",
    "audio_out_ids_start", "audio_in_ids", "audio_in_ids_start", "label_ids", "label_audio_ids",
)  # fmt: skip


@dataclass
class TrainResult:
    """What a finished run returns: final counters, the last metrics and where the adapter went."""

    state: TrainerState
    adapter_dir: Path | None
    metrics: dict[str, float]


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7919 + step) % (2**31 - 1)


class HiggsAudioTrainer:
    """Train LoRA adapters on preprocessed records (see ``higgs_train.data.preprocess`` for their schema).

    ``train_records`` / ``val_records``: preprocessed records (lists, or a ``ShardStream`` of this worker's rows); the
    Ray job streams them from the token cache, tests and notebooks make them in-process (``data.in_process``).
    ``model``: an already built ``HiggsAudioModel`` to train instead of loading ``config.model_path`` (the GPU
    benchmark builds random full-size weights on the device); it is cast to the configured precision.
    ``validation_hooks``: run in order on rank 0 at every validation (``training.hooks``).
    """

    def __init__(
        self,
        config: TrainingConfig,
        train_records: Sequence[dict],
        val_records: Sequence[dict],
        context: WorkerContext | None = None,
        model: torch.nn.Module | None = None,
        validation_hooks: Sequence[ValidationHook] = (),
    ) -> None:
        if not train_records:
            raise ValueError("no training rows survived preprocessing; see the quarantine report")
        self.config = config
        self.context = context or LocalContext(
            checkpoint_root=Path(config.output_dir) / "checkpoints",
            keep_best_k=config.keep_best_k,
            checkpoint_metric=config.checkpoint_metric,
        )
        self.train_records = train_records
        self.val_records = val_records
        self.validation_hooks = list(validation_hooks)
        self.device = self.context.device
        self.weight_dtype = weight_dtype(config.precision, self.device)
        self.state = TrainerState()
        self.model: Any = None
        self._given_model = model
        self._setup_done = False
        self._logged_through = 0  # metrics of steps up to here are in the tracker already
        self.steps_per_epoch = len(self._epoch_steps(0))
        self.total_steps = steps_in_run(self.steps_per_epoch, config.num_epochs, config.max_steps)
        self._progress = ProgressLine(self.total_steps)
        self._monitor = LossBalanceMonitor(config.text_dominance_threshold, config.audio_dominance_threshold)
        self._throughput = Throughput()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Load model + tokenizers, attach LoRA, build optimizer/scheduler/collator."""
        if self._setup_done:
            return
        cfg = self.config
        torch.manual_seed(cfg.seed)
        model_path = ""  # a given model has no directory: default learning rate, no Whisper processor
        if self._given_model is None:
            model_path = resolve_paths(cfg.model_path, cfg.audio_tokenizer_path, cfg.tokenizer_path or None).model_path
            model = load_model(model_path, device=self.device, dtype=self.weight_dtype)
        else:
            model = self._given_model.to(device=self.device, dtype=self.weight_dtype)
        self.model_config = model.config
        model.config.use_cache = False
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        cast_adapters(model, cfg.adapter_dtype)
        self.parameter_counts = counts = count_parameters(model)
        logger.info("trainable %d / %d parameters (%.3f%%)", counts.trainable, counts.total, 100 * counts.fraction)
        enable_sync_free_routing(model)  # same values; checkpointing and compile below wrap the routed layer math
        if cfg.use_gradient_checkpointing or cfg.checkpoint_layers:
            checkpointed = enable_activation_checkpointing(model, cfg.checkpoint_layers)
            logger.info("activation checkpointing: %d decoder layers", checkpointed)
        if cfg.compile_layers:
            compile_decoder_layers(model)
        model.train()
        self.model = self.context.prepare_model(model)
        lr = self.learning_rate = cfg.learning_rate or recommended_learning_rate(model_path)
        if not cfg.learning_rate:
            logger.info("learning rate: %g (the model's recommended rate; --learning_rate sets another)", lr)
        self.optimizer = build_optimizer(self.model, lr, cfg.weight_decay)
        self.collator = build_collator(self.model_config, load_whisper_processor(model_path, self.model_config))
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, self.total_steps)
        if cfg.resume_from:
            self.load_checkpoint(cfg.resume_from)
        self._setup_done = True

    # ------------------------------------------------------------------ data plan
    def _epoch_plan(self, records: list[dict], epoch: int) -> list[list[int]]:
        """This worker's micro-batches (row indices) for ``epoch``; every worker gets the same count."""
        lengths = record_lengths(records)  # a ShardStream answers from its lengths column, reading no record
        plans = plan_epoch(
            lengths,
            batch_size=self.config.batch_size,
            max_tokens_per_batch=self.config.max_tokens_per_batch,
            seed=self.config.seed,
            epoch=epoch,
            num_workers=self.context.world_size,
        )
        return plans[self.context.rank]

    def _epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """Group this worker's micro-batches into optimizer steps of ``gradient_accumulation_steps``."""
        plan = self._epoch_plan(self.train_records, epoch)
        k = self.config.gradient_accumulation_steps
        steps = [plan[i : i + k] for i in range(0, len(plan), k)]
        schedule_steps(self.train_records, steps)  # a ShardStream reads these steps' rows, one step ahead
        return steps

    def _collate(self, records: list[dict], rows: list[int]):
        return collate_records([records[i] for i in rows], self.collator)

    # ------------------------------------------------------------------ forward + loss
    def _model_inputs(self, batch: Any) -> dict[str, Any]:
        """The batch on the device. On CUDA the copies do not wait for the device: from pinned memory, asynchronously
        (a blocking copy synchronises the stream, i.e. waits for all queued work)."""
        out = {}
        for name in MODEL_INPUTS:
            value = getattr(batch, name)
            if isinstance(value, torch.Tensor):
                cuda = self.device.type == "cuda"
                value = value.pin_memory().to(self.device, non_blocking=True) if cuda else value.to(self.device)
            out[name] = value
        if out.get("audio_features") is not None:
            out["audio_features"] = out["audio_features"].to(self.weight_dtype)
        return out

    def _forward_loss(self, batch: Any, global_counts: Any, host_metrics: bool = True):
        """Forward + loss of one micro-batch. The text head runs only at labelled positions (``text_head``); the
        batch's label tensors stay on the host, where the loss does its bookkeeping without device syncs."""
        cfg = self.config
        assert_no_autocast()
        inputs = self._model_inputs(batch)
        with hidden_states_as_text_logits(self.model) as text_head:
            outputs = self.model(**inputs)
        return compute_higgs_audio_loss(
            outputs,
            batch,
            text_loss_weight=cfg.text_loss_weight,
            audio_loss_weight=cfg.audio_loss_weight,
            codebook_weights=cfg.codebook_weights or None,
            num_label_tokens=global_counts,
            text_head=text_head,
            host_metrics=host_metrics,
        )

    def _global_counts(self, batches: list[Any]):
        """Label counts of this optimizer step summed over all micro-batches and all workers."""
        token_id = self.model_config.audio_out_token_idx
        local = sum((count_label_tokens(b, audio_out_token_id=token_id) for b in batches), LabelTokenCounts(0, 0))
        if self.context.world_size == 1:
            return local  # counted on the host from the collated batch: nothing to wait for
        total = self.context.all_reduce_sum(local.to_tensor(self.device))
        return LabelTokenCounts.from_tensor(total.cpu())

    # ------------------------------------------------------------------ training
    def train(self, stop_after_steps: int | None = None) -> TrainResult:
        """Run until ``num_epochs`` or ``max_steps``; validate, checkpoint and report on the configured cadence.

        ``stop_after_steps`` ends the loop once ``global_step`` reaches it, the way a preempted run ends: the
        learning-rate schedule still spans the configured run (so it is not a shorter run), the only checkpoints
        are those the save cadence wrote, and no final adapter is written (``adapter_dir`` is None). Resuming the
        same config from its last checkpoint then continues that run, which is how resumption is tested.
        """
        self.setup()
        self._catch_up_logging()
        self._progress.start(self.state.global_step)
        last_metrics: dict[str, float] = {}
        interrupted = False
        start_epoch = self.state.epoch
        restored_step = self.state.global_step
        for epoch in range(start_epoch, self.config.num_epochs):
            steps = self._epoch_steps(epoch)
            first = self.state.step_in_epoch if epoch == start_epoch else 0
            for step_in_epoch in range(first, len(steps)):
                if self.total_steps and self.state.global_step >= self.total_steps:
                    break
                if stop_after_steps is not None and self.state.global_step >= stop_after_steps:
                    interrupted = True
                    break
                metrics = self._record_step(self._train_step(steps[step_in_epoch]))
                self.state.global_step += 1
                self.state.epoch, self.state.step_in_epoch = epoch, step_in_epoch + 1
                if step_in_epoch + 1 == len(steps):
                    self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
                last_metrics = self._after_step(metrics)
            if interrupted or (self.total_steps and self.state.global_step >= self.total_steps):
                break
        if interrupted:
            return TrainResult(self.state, None, last_metrics)
        if restored_step and self.state.global_step == restored_step:
            # Restored at the last step (a worker lost after its final checkpoint reached storage but before Ray
            # registered it): report that state again, so the run's latest registered checkpoint -- where the
            # driver takes the final adapter and history from -- is the final one.
            last_metrics = dict(self.state.metrics)
            self._save_and_report(last_metrics)
        adapter_dir = self._finish(last_metrics)
        return TrainResult(self.state, adapter_dir, last_metrics)

    def _catch_up_logging(self) -> None:
        """Make the tracker hold every step of the (restored) history exactly once.

        After a restart from a checkpoint the tracker may already hold steps past it (logged before the failure;
        they are repeated now with identical values, so they are not logged again), or miss steps before it (a
        rerun's new MLflow run, or a failure between a checkpoint and its log); those are logged from the history.
        """
        logged = self.context.last_logged_step()
        for entry in self.state.history:
            if entry["step"] > logged:
                self.context.log_metrics(entry, int(entry["step"]))
        self._logged_through = max([logged, *(int(h["step"]) for h in self.state.history)])

    def _reports_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) logs, checkpoints or ends the run: only then do its figures go to
        the host (each conversion waits for the device to finish the queued work)."""
        final = bool(self.total_steps) and step >= self.total_steps
        return step % self.config.log_every_steps == 0 or step % self.config.save_every_steps == 0 or final

    def _train_step(self, micro_batches: list[list[int]]) -> StepTotals:
        """One optimizer step: forward and backward of each micro-batch, clip, update. Nothing is read back from the
        device here (each read waits for the queued work); ``_record_step`` reads the figures at reported steps."""
        cfg, ctx = self.config, self.context
        torch.manual_seed(step_seed(cfg.seed, ctx.rank, self.state.global_step))
        started = time.perf_counter()
        with torch.profiler.record_function(HOST_DATA_REGION):
            batches = [self._collate(self.train_records, rows) for rows in micro_batches]
        data_wait = time.perf_counter() - started
        with torch.profiler.record_function(HOST_DATA_REGION):
            counts = self._global_counts(batches)
        losses = torch.zeros(3, dtype=torch.float64, device=self.device)  # text, audio, total (step shares)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            no_sync = getattr(self.model, "no_sync", None)
            with nullcontext() if sync or no_sync is None else no_sync():
                out = self._forward_loss(batch, counts, host_metrics=False)
                # DDP averages gradients over workers; the loss is already normalised by *global* counts, so
                # scale by world size to turn DDP's mean into the intended sum.
                (out.total * ctx.world_size).backward()
            losses += torch.stack([out.text_loss, out.audio_loss, out.total.detach()]).double()
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Processed tokens in merged-sequence units (what num_tokens counts): every row padded to its batch's longest.
        lengths = [[int(self.train_records[i]["num_tokens"]) for i in rows] for rows in micro_batches]
        return StepTotals(
            losses, grad_norm, counts, out, sum(map(sum, lengths)), sum(len(ls) * max(ls) for ls in lengths), data_wait,
            started,
        )  # fmt: skip

    def _record_step(self, step: StepTotals) -> dict[str, float]:
        """Throughput bookkeeping of a finished step; at a reported step (``_reports_step``) also its metrics, read
        back in one sync (summed over workers) and fed to the loss-balance monitor. Empty at the other steps, whose
        figures count towards the next reported one (tokens/s and data-wait share cover the steps since the last)."""
        self._throughput.add(step)
        number = self.state.global_step + 1
        if not self._reports_step(number):
            return {}
        figures, started = self._throughput.take()
        window = torch.tensor(figures, dtype=torch.float64).to(self.device)
        reduced = self.context.all_reduce_sum(torch.cat([step.losses, step.grad_norm.reshape(1).double(), window]))
        reduced = reduced.cpu()  # the one sync: the window ends when the device has finished its steps
        elapsed, lr = time.perf_counter() - started, self.scheduler.get_last_lr()[0]
        metrics, step_loss = reported_metrics(step, reduced, elapsed, self.config, lr, self.context.world_size)
        for warning in self._monitor.update(step_loss):
            logger.warning("step %d: %s", number, warning)
        return metrics

    def _clip(self) -> torch.Tensor:
        """Clip (when ``max_grad_norm`` > 0) and return the total gradient norm as a device tensor (no sync)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.max_grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm).detach()
        norms = [p.grad.detach().norm() for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)

    def _after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        cfg, step = self.config, self.state.global_step
        metrics = {"step": step, "epoch": self.state.epoch, **metrics}  # train/* only at reported steps
        final = bool(self.total_steps) and step >= self.total_steps
        save = step % cfg.save_every_steps == 0 or final
        # Every checkpoint carries val_loss, so best-k selection never sees a checkpoint without a score.
        if self.val_records and (step % cfg.eval_every_steps == 0 or save):
            metrics.update(self.validate())
        self.state.metrics = metrics
        if step % cfg.log_every_steps == 0 or save or final:
            self.state.history.append(metrics)
            if step > self._logged_through:  # a step repeated after a restart is logged already, same values
                self.context.log_metrics(metrics, step)
            if self.context.rank == 0 and self.context.console_lines:  # printed: Ray forwards worker stdout
                emit(self._progress.line(step, metrics))
                if final:
                    emit(self._progress.summary(step, metrics))
        if save:
            self._save_and_report(metrics)
        elif step % cfg.log_every_steps == 0:
            self.context.report(metrics, None)
        return metrics

    def _save_and_report(self, metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory(prefix="higgs-ckpt-") as tmp:
            checkpoint = self.save_checkpoint(tmp) if self.context.rank == 0 else None
            self.context.report(metrics, checkpoint, save_step=True)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and per-codebook next-code top-1 accuracy over this worker's share, summed globally."""
        self.model.eval()
        plan = self._epoch_plan(self.val_records, epoch=0)
        codebooks = self.model_config.audio_num_codebooks
        sums = torch.zeros(3 + 2 * codebooks, dtype=torch.float64)  # weighted total, text tokens, audio tokens, ...
        for rows in plan:
            batch = self._collate(self.val_records, rows)
            counts = count_label_tokens(batch)
            out = self._forward_loss(batch, None)
            # Unweighted per-token sums, so val_loss is comparable across loss-weight settings (Tune trials).
            sums[0] += float(out.text_loss) * counts.text + float(out.audio_loss) * counts.audio
            sums[1] += counts.text
            sums[2] += counts.audio
            sums[3 : 3 + codebooks] += torch.tensor(out.audio_correct, dtype=torch.float64)
            sums[3 + codebooks :] += torch.tensor(out.audio_counted, dtype=torch.float64)
        sums = self.context.all_reduce_sum(sums.to(self.device)).cpu()
        self.model.train()
        accuracy = (sums[3 : 3 + codebooks] / sums[3 + codebooks :].clamp(min=1)).tolist()
        metrics = {
            "val_loss": float(sums[0] / max(1.0, float(sums[1] + sums[2]))),
            "val_audio_accuracy": float(sum(accuracy) / len(accuracy)),
        }
        metrics.update({f"val/audio_accuracy_cb{k}": a for k, a in enumerate(accuracy)})
        if self.context.rank == 0 and self.validation_hooks:
            at = ValidationStep(
                self.state.global_step,
                self.model,
                self.model_config,
                self.device,
                self.val_records,
                Path(self.config.output_dir),
                self.context.log_artifact,
            )
            for hook in self.validation_hooks:
                metrics.update(hook(at))
        return metrics

    # ------------------------------------------------------------------ end, save, load
    def _finish(self, metrics: dict[str, float]) -> Path | None:
        if self.context.rank != 0:
            return None
        output = Path(self.config.output_dir)
        adapter_dir = output / "adapter"
        staging = staging_dir(adapter_dir)  # published whole: never a mix of this run's files and another's
        save_adapter(self.model, staging)
        self.config.save(staging / "training_config.yaml")
        replace_dir(staging, adapter_dir)
        write_atomic(output / "history.json", json.dumps(self.state.history, indent=1))
        return adapter_dir

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a full checkpoint to ``path`` (seed API)."""
        self.setup()
        return save_checkpoint(
            Path(path), self.model, self.optimizer, self.scheduler, self.state, self.config.to_dict()
        )

    def load_checkpoint(self, path: str | Path) -> TrainerState:
        """Restore a checkpoint written by ``save_checkpoint`` and continue from its data position (seed API).

        A fresh trainer is set up first (like ``save_checkpoint`` does): there is no model or optimizer to restore
        into before that. Inside ``setup`` (``resume_from``) both already exist, so this does not recurse.
        """
        if self.model is None:
            self.setup()
        with open_checkpoint(str(path)) as local:  # verified; downloaded first when ``path`` is a URI
            self.state = load_checkpoint(local, self.model, self.optimizer, getattr(self, "scheduler", None))
        logger.info("resumed from %s at step %d", path, self.state.global_step)
        return self.state
