"""Optimizer and learning-rate schedule: AdamW on adapter parameters, linear warm-up then cosine decay to 10%."""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; biases/norms (none in LoRA, but kept general) get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # On CUDA the fused kernel updates all adapters in a few launches instead of several per parameter tensor, and
    # keeps its step counters on the device (no host scalar per parameter); CPU keeps the default implementation.
    fused = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused or None
    )


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR multiplier for step s (0-based, applied after s optimizer steps)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))


def steps_in_run(steps_per_epoch: int, num_epochs: int, max_steps: int) -> int:
    """The planned-steps rule (one copy): optimizer steps per epoch x epochs, capped by ``max_steps`` (0: no cap).

    The trainer's LR schedule and end of run and a sweep's ASHA milestones both follow it."""
    planned = steps_per_epoch * num_epochs
    return min(planned, max_steps) if max_steps else planned


def planned_steps(config: Any, lengths: Any) -> int:
    """Optimizer steps a run of ``config`` will take over rows of ``lengths`` tokens, computed on the driver from
    the same epoch-0 batch plan the workers will follow (``TrainingConfig`` fields; equal on every worker)."""
    from higgs_train.data.batching import optimizer_steps, plan_epoch

    plan = plan_epoch(
        lengths,
        max_tokens_per_batch=config.max_tokens_per_batch,
        batch_size=config.batch_size,
        seed=config.seed,
        epoch=0,
        num_workers=config.num_workers,
    )
    steps_per_epoch = optimizer_steps(plan, config.gradient_accumulation_steps)
    return steps_in_run(steps_per_epoch, config.num_epochs, config.max_steps)
