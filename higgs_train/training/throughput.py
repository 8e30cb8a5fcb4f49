"""What one optimizer step leaves behind, and the window of steps a reported step's figures cover.

The loop reads losses back from the device only at reported steps (each read waits for all queued work), so a step
hands over ``StepTotals`` still on the device, and ``Throughput`` accumulates the host-side counts (tokens, time
spent waiting for data) of the steps in between: tokens/s and the data-wait share of a reported step cover every
step since the previous report, like nanoGPT's MFU computed by the loop itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from higgs_train.loss import LabelTokenCounts, LossOutput


@dataclass
class StepTotals:
    """One optimizer step as the device left it: the losses are not read back, so nothing waited for the device."""

    losses: torch.Tensor  # float64 (text, audio, total) on the device: this worker's shares, summed over micro-batches
    grad_norm: torch.Tensor  # 0-d, on the device
    counts: LabelTokenCounts  # the step's label tokens over all workers (the loss normaliser)
    last: LossOutput  # the last micro-batch's loss (its weights; the step's totals replace its values when reported)
    real_tokens: int  # merged-sequence tokens of the step's rows
    padded_tokens: int  # tokens processed: every row padded to its micro-batch's longest
    data_wait: float  # seconds spent collating
    started: float  # perf_counter() at the step's start


@dataclass
class Throughput:
    """Tokens and data wait of the steps since the last reported one: a reported step's figures cover that window."""

    started: float | None = None
    real_tokens: float = 0.0
    padded_tokens: float = 0.0
    data_wait: float = 0.0

    def add(self, step: StepTotals) -> None:
        self.started = step.started if self.started is None else self.started
        self.real_tokens += step.real_tokens
        self.padded_tokens += step.padded_tokens
        self.data_wait += step.data_wait

    def take(self) -> tuple[list[float], float]:
        """(real tokens, padded tokens, data wait) of the window and the ``perf_counter()`` it started at; starts a
        new window. The caller ends the window after reading the figures back: only then has the device finished."""
        figures, started = [self.real_tokens, self.padded_tokens, self.data_wait], self.started
        self.started, self.real_tokens, self.padded_tokens, self.data_wait = None, 0.0, 0.0, 0.0
        return figures, time.perf_counter() if started is None else started


def reported_metrics(
    step: StepTotals, reduced: torch.Tensor, elapsed: float, config: Any, learning_rate: float, world_size: int
) -> tuple[dict[str, float], LossOutput]:
    """The ``train/*`` metrics of a reported step and its loss for the loss-balance monitor.

    ``reduced``: on the host, summed over workers: the step's (text, audio, total) losses, its gradient norm, and the
    window's (real tokens, padded tokens, data wait) as ``Throughput.take`` lists them; ``elapsed``: the window's
    seconds. ``config`` gives the loss weights (a ``TrainingConfig``).
    """
    text, audio, total = (float(x) for x in reduced[:3])
    text_w, audio_w = config.text_loss_weight * text, config.audio_loss_weight * audio
    step_loss = replace(
        step.last,
        text_loss=torch.tensor(text),
        audio_loss=torch.tensor(audio),
        text_tokens=step.counts.text,
        audio_tokens=step.counts.audio,
        text_token_loss=text,  # per-token means of the step (normalised by the step's global counts)
        audio_token_loss=audio,
    )
    metrics = {
        "train/total_loss": total,
        "train/text_loss": text,
        "train/audio_loss": audio,
        "train/text_loss_weighted": text_w,
        "train/audio_loss_weighted": audio_w,
        "train/text_audio_ratio": text_w / audio_w if audio_w > 0 else float("inf"),
        "train/learning_rate": learning_rate,
        "train/grad_norm": float(reduced[3]) / world_size,  # every worker holds the same reduced gradients
        "train/tokens_per_second": float(reduced[4]) / elapsed,
        "train/padding_efficiency": float(reduced[4]) / max(1.0, float(reduced[5])),
        "train/data_wait_share": float(reduced[6]) / world_size / elapsed,
        "train/text_tokens": step.counts.text,
        "train/audio_tokens": step.counts.audio,
    }
    # Canonical names (also used by Tune and MLflow): total_loss, text_loss, audio_loss, text_audio_ratio.
    metrics.update({name: metrics[f"train/{name}"] for name in ("total_loss", "text_loss", "audio_loss")})
    metrics["text_audio_ratio"] = metrics["train/text_audio_ratio"]
    return metrics, step_loss
