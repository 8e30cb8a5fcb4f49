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
* **Checkpoints** -- adapter, optimizer, scheduler, RNG, data position and config; best-k by validation loss.
* **Figures** -- tokens/s, padding efficiency and the share of step time spent waiting for data are computed by
  the loop itself and reported with the losses.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from higgs_train.adapter import apply_lora, count_parameters, save_adapter
from higgs_train.config import TrainingConfig
from higgs_train.console import ProgressLine, emit
from higgs_train.training.activation_checkpointing import compile_decoder_layers, enable_activation_checkpointing
from higgs_train.training.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from higgs_train.training.context import LocalContext, WorkerContext
from higgs_train.training.dual_ffn_routing import enable_sync_free_routing
from higgs_train.training.precision import assert_no_autocast, cast_adapters, weight_dtype
from higgs_train.training.schedule import build_optimizer, build_scheduler, steps_in_run

logger = logging.getLogger(__name__)
# Profiler label of the host-side data work of a step (collation, label counts): benchmarks/gpu_step.py --profile
# counts syncs and op launches of the device work outside it.
HOST_DATA_REGION = "higgs_train.host_data"


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

    ``train_records`` / ``val_records``: lists of preprocessed records. When omitted they are produced from the
    config's manifests in-process (``higgs_train.training.data_source``), which is the path without Ray.
    ``model``: an already built ``HiggsAudioModel`` to train instead of loading ``config.model_path`` (the GPU
    benchmark builds random full-size weights on the device); it is cast to the configured precision.
    """

    def __init__(
        self,
        config: TrainingConfig,
        context: WorkerContext | None = None,
        train_records: list[dict] | None = None,
        val_records: list[dict] | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        self.config = config
        self.context = context or LocalContext(
            checkpoint_root=Path(config.output_dir) / "checkpoints",
            keep_best_k=config.keep_best_k,
            checkpoint_metric=config.checkpoint_metric,
        )
        self.train_records = train_records
        self.val_records = val_records
        self.state = TrainerState()
        self.model: Any = None
        self._given_model = model
        self._setup_done = False
        self._logged_through = 0  # metrics of steps up to here are in the tracker already

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Load model + tokenizers, attach LoRA, build optimizer/scheduler/collator and the data."""
        if self._setup_done:
            return
        from higgs_train.models import load_model, load_whisper_processor, recommended_learning_rate, resolve_paths

        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.device = self.context.device
        self.weight_dtype = weight_dtype(cfg.precision, self.device)
        if self._given_model is None:
            self.paths = resolve_paths(cfg.model_path, cfg.audio_tokenizer_path, cfg.tokenizer_path or None)
            model = load_model(self.paths.model_path, device=self.device, dtype=self.weight_dtype)
        else:
            self.paths = None
            model = self._given_model.to(device=self.device, dtype=self.weight_dtype)
        self.model_config = model.config
        model.config.use_cache = False
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        cast_adapters(model, cfg.adapter_dtype)
        counts = count_parameters(model)
        logger.info("trainable %d / %d parameters (%.3f%%)", counts.trainable, counts.total, 100 * counts.fraction)
        self.parameter_counts = counts
        enable_sync_free_routing(model)  # same values; checkpointing and compile below wrap the routed layer math
        if cfg.use_gradient_checkpointing or cfg.checkpoint_layers:
            checkpointed = enable_activation_checkpointing(model, cfg.checkpoint_layers)
            logger.info("activation checkpointing: %d decoder layers", checkpointed)
        if cfg.compile_layers:
            compile_decoder_layers(model)
        model.train()
        self.model = self.context.prepare_model(model)
        self.learning_rate = cfg.learning_rate or recommended_learning_rate(self.paths.model_path if self.paths else "")
        if not cfg.learning_rate:
            logger.info(
                "learning rate: %g (the model's recommended rate; --learning_rate sets another)", self.learning_rate
            )
        self.optimizer = build_optimizer(self.model, self.learning_rate, cfg.weight_decay)
        self._setup_data(load_whisper_processor(self.paths.model_path if self.paths else "", self.model_config))
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, self.total_steps)
        if cfg.resume_from:
            self.load_checkpoint(cfg.resume_from)
        self._setup_done = True

    def _setup_data(self, whisper_processor: Any) -> None:
        from higgs_train.data.collate import build_collator

        self.collator = build_collator(self.model_config, whisper_processor)
        if self.train_records is None:
            from higgs_train.training.data_source import records_for_config

            self.train_records, self.val_records = records_for_config(self.config, self.paths, self.model_config)
        if not self.train_records:
            raise ValueError("no training rows survived preprocessing; see the quarantine report")
        self.steps_per_epoch = len(self._epoch_steps(0))
        self.total_steps = steps_in_run(self.steps_per_epoch, self.config.num_epochs, self.config.max_steps)

    # ------------------------------------------------------------------ data plan
    def _epoch_plan(self, records: list[dict], epoch: int) -> list[list[int]]:
        """This worker's micro-batches (row indices) for ``epoch``; every worker gets the same count."""
        from higgs_train.data.batching import plan_epoch
        from higgs_train.data.shard_stream import record_lengths

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
        from higgs_train.data.shard_stream import schedule_steps

        k = self.config.gradient_accumulation_steps
        steps = [plan[i : i + k] for i in range(0, len(plan), k)]
        schedule_steps(self.train_records, steps)  # a ShardStream reads these steps' rows, one step ahead
        return steps

    def _collate(self, records: list[dict], rows: list[int]):
        from higgs_train.data.collate import collate_records

        return collate_records([records[i] for i in rows], self.collator)

    # ------------------------------------------------------------------ forward + loss
    def _to_device(self, value: torch.Tensor) -> torch.Tensor:
        """Host-to-device copy that does not wait for the device: from pinned memory, asynchronously (a blocking
        copy synchronises the stream, i.e. waits for all queued work)."""
        if self.device.type != "cuda":
            return value.to(self.device)
        return value.pin_memory().to(self.device, non_blocking=True)

    def _model_inputs(self, batch: Any) -> dict[str, Any]:
        names = (
            "input_ids",
            "attention_mask",
            "audio_features",
            "audio_feature_attention_mask",
            "audio_out_ids",
            "audio_out_ids_start",
            "audio_in_ids",
            "audio_in_ids_start",
            "label_ids",
            "label_audio_ids",
        )
        out = {}
        for name in names:
            value = getattr(batch, name)
            out[name] = self._to_device(value) if isinstance(value, torch.Tensor) else value
        if out.get("audio_features") is not None:
            out["audio_features"] = out["audio_features"].to(self.weight_dtype)
        return out

    def _forward_loss(self, batch: Any, global_counts: Any, host_metrics: bool = True):
        """Forward + loss of one micro-batch. The text head runs only at labelled positions (``text_head``); the
        batch's label tensors stay on the host, where the loss does its bookkeeping without device syncs."""
        from higgs_train.loss import compute_higgs_audio_loss
        from higgs_train.training.text_head import hidden_states_as_text_logits

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
        from higgs_train.loss import LabelTokenCounts, count_label_tokens

        token_id = self.model_config.audio_out_token_idx
        local = LabelTokenCounts(0, 0)
        for batch in batches:
            local = local + count_label_tokens(batch, audio_out_token_id=token_id)
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
        from higgs_train.training.loss_balance import LossBalanceMonitor

        self.setup()
        self._catch_up_logging()
        cfg = self.config
        self._progress = ProgressLine(self.total_steps)
        self._progress.start(self.state.global_step)
        monitor = LossBalanceMonitor(cfg.text_dominance_threshold, cfg.audio_dominance_threshold)
        last_metrics: dict[str, float] = {}
        interrupted = False
        start_epoch = self.state.epoch
        restored_step = self.state.global_step
        for epoch in range(start_epoch, cfg.num_epochs):
            steps = self._epoch_steps(epoch)
            first = self.state.step_in_epoch if epoch == start_epoch else 0
            for step_in_epoch in range(first, len(steps)):
                if self.total_steps and self.state.global_step >= self.total_steps:
                    break
                if stop_after_steps is not None and self.state.global_step >= stop_after_steps:
                    interrupted = True
                    break
                metrics = self._train_step(steps[step_in_epoch])
                self.state.global_step += 1
                self.state.epoch, self.state.step_in_epoch = epoch, step_in_epoch + 1
                if step_in_epoch + 1 == len(steps):
                    self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
                if self._last_step_loss is not None:  # None at steps whose figures stay on the device
                    for warning in monitor.update(self._last_step_loss):
                        logger.warning("step %d: %s", self.state.global_step, warning)
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
        cfg = self.config
        final = bool(self.total_steps) and step >= self.total_steps
        return step % cfg.log_every_steps == 0 or step % cfg.save_every_steps == 0 or final

    def _train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        """One optimizer step. The losses are summed on the device and read back (one sync) only at reported steps
        (``_reports_step``); at the others the loss entries are 0-d device tensors and nothing waits for the device.
        Tokens/s and the data-wait share cover the steps since the last reported one."""
        cfg, ctx = self.config, self.context
        step_start = time.perf_counter()
        torch.manual_seed(step_seed(cfg.seed, ctx.rank, self.state.global_step))
        data_start = time.perf_counter()
        with torch.profiler.record_function(HOST_DATA_REGION):
            batches = [self._collate(self.train_records, rows) for rows in micro_batches]
        data_wait = time.perf_counter() - data_start
        with torch.profiler.record_function(HOST_DATA_REGION):
            counts = self._global_counts(batches)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # text, audio, total (step shares)
        real_tokens = sum(int(self.train_records[i]["num_tokens"]) for rows in micro_batches for i in rows)
        # Processed tokens in merged-sequence units (what num_tokens counts): every row padded to its batch's longest.
        lengths = [[int(self.train_records[i]["num_tokens"]) for i in rows] for rows in micro_batches]
        padded_tokens = sum(len(ls) * max(ls) for ls in lengths)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            no_sync = getattr(self.model, "no_sync", None)
            with nullcontext() if sync or no_sync is None else no_sync():
                out = self._forward_loss(batch, counts, host_metrics=False)
                # DDP averages gradients over workers; the loss is already normalised by *global* counts, so
                # scale by world size to turn DDP's mean into the intended sum.
                (out.total * ctx.world_size).backward()
            sums += torch.stack([out.text_loss, out.audio_loss, out.total.detach()]).double()
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        window = getattr(self, "_figures_window", None) or [step_start, 0.0, 0.0, 0.0]
        window[1:] = [window[1] + real_tokens, window[2] + padded_tokens, window[3] + data_wait]
        self._figures_window = window
        if not self._reports_step(self.state.global_step + 1):
            self._last_step_loss = None
            text_w, audio_w = cfg.text_loss_weight * sums[0], cfg.audio_loss_weight * sums[1]
            return {
                "train/total_loss": sums[2],
                "train/text_loss": sums[0],
                "train/audio_loss": sums[1],
                "train/text_audio_ratio": text_w / audio_w,
                "train/learning_rate": self.scheduler.get_last_lr()[0],
            }
        self._figures_window = None
        figures = torch.tensor(window[1:], dtype=torch.float64).to(self.device)
        reduced = ctx.all_reduce_sum(torch.cat([sums, grad_norm.reshape(1).double(), figures])).cpu()
        elapsed = time.perf_counter() - window[0]
        text, audio, total = (float(x) for x in reduced[:3])
        text_w, audio_w = cfg.text_loss_weight * text, cfg.audio_loss_weight * audio
        self._last_step_loss = replace(
            out,
            text_loss=torch.tensor(text),
            audio_loss=torch.tensor(audio),
            text_tokens=counts.text,
            audio_tokens=counts.audio,
            text_token_loss=text,  # per-token means of the step (normalised by the step's global counts)
            audio_token_loss=audio,
        )
        return {
            "train/total_loss": total,
            "train/text_loss": text,
            "train/audio_loss": audio,
            "train/text_loss_weighted": text_w,
            "train/audio_loss_weighted": audio_w,
            "train/text_audio_ratio": text_w / audio_w if audio_w > 0 else float("inf"),
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(reduced[3]) / ctx.world_size,  # every worker holds the same reduced gradients
            "train/tokens_per_second": float(reduced[4]) / elapsed,
            "train/padding_efficiency": float(reduced[4]) / max(1.0, float(reduced[5])),
            "train/data_wait_share": float(reduced[6]) / ctx.world_size / elapsed,
            "train/text_tokens": counts.text,
            "train/audio_tokens": counts.audio,
        }

    def _clip(self) -> torch.Tensor:
        """Clip (when ``max_grad_norm`` > 0) and return the total gradient norm as a device tensor (no sync)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.max_grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm).detach()
        norms = [p.grad.detach().norm() for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)

    def _after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        cfg, step = self.config, self.state.global_step
        metrics = {"step": step, "epoch": self.state.epoch, **metrics}
        # Canonical names (also used by Tune and MLflow): total_loss, text_loss, audio_loss, ...
        for name in ("total_loss", "text_loss", "audio_loss", "text_audio_ratio"):
            metrics[name] = metrics[f"train/{name}"]
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
            ckpt = None
            if self.context.rank == 0:
                ckpt = save_checkpoint(
                    Path(tmp), self.model, self.optimizer, self.scheduler, self.state, self.config.to_dict()
                )
            self.context.report(metrics, ckpt, save_step=True)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and per-codebook next-code top-1 accuracy over this worker's share, summed globally."""
        from higgs_train.loss import count_label_tokens

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
        if self.config.num_validation_samples and self.context.rank == 0:
            metrics.update(self._validation_samples())
        if self.config.eval_rows and self.context.rank == 0:
            metrics.update(self._voice_eval())
        return metrics

    def _voice_eval(self) -> dict[str, float]:
        """SIM / WER / quality of a few generated validation rows (``--eval_rows``); see evaluation.in_training."""
        from higgs_train.evaluation.in_training import TrainingVoiceEval

        if not hasattr(self, "_voice_evaluator"):
            self._voice_evaluator = TrainingVoiceEval(self.config, self.paths, self.model_config, self.device)
        return self._voice_evaluator(
            self.model,
            self.val_records[: self.config.eval_rows],
            self.state.global_step,
            self.config.output_dir,
            log_artifact=self.context.log_artifact,
        )

    def _validation_samples(self) -> dict[str, float]:
        """Listenable evidence: greedy generations for the first validation rows, logged as WAV artifacts.

        Never fails the job: a failure (of one row, or of loading the tools) is a warning and is counted in
        ``val/sample_failures``.
        """
        from higgs_train.generation import SamplingSettings, generate_validation_samples
        from higgs_train.models import load_audio_tokenizer, load_text_tokenizer, load_whisper_processor

        step = self.state.global_step
        artifact_dir = f"samples/step_{step:07d}"
        try:
            if not hasattr(self, "_sample_tools"):  # loaded on first use: the audio tokenizer is large for real models
                self._sample_tools = (
                    load_text_tokenizer(self.paths.tokenizer_path),
                    load_audio_tokenizer(self.paths.audio_tokenizer_path, device=self.device),
                    load_whisper_processor(self.paths.model_path, self.model_config),
                )
            tokenizer, audio_tokenizer, whisper = self._sample_tools
            samples = generate_validation_samples(
                self.model,
                tokenizer,
                audio_tokenizer,
                self.model_config,
                self.val_records[: self.config.num_validation_samples],
                Path(self.config.output_dir) / artifact_dir,
                SamplingSettings(temperature=0.0, max_new_tokens=self.config.validation_sample_max_new_tokens),
                whisper_processor=whisper,
                log_artifact=lambda path: self.context.log_artifact(path, artifact_dir),
            )
        except Exception:  # noqa: BLE001 -- samples are evidence for a human; training goes on without them
            logger.warning("step %d: validation samples failed; training continues", step, exc_info=True)
            return {"val/sample_failures": float(len(self.val_records[: self.config.num_validation_samples]))}
        return samples.metrics()

    # ------------------------------------------------------------------ end, save, load
    def _finish(self, metrics: dict[str, float]) -> Path | None:
        if self.context.rank != 0:
            return None
        from higgs_train.paths import replace_dir, staging_dir, write_atomic

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
        from higgs_train.training.checkpoint_store import open_checkpoint

        if self.model is None:
            self.setup()
        with open_checkpoint(str(path)) as local:  # verified; downloaded first when ``path`` is a URI
            self.state = load_checkpoint(local, self.model, self.optimizer, getattr(self, "scheduler", None))
        logger.info("resumed from %s at step %d", path, self.state.global_step)
        return self.state
