"""What the loop hands to the work that runs at a validation, so the loop does not know that work.

Listening to samples and scoring voices need generation, codecs and metric models; the loop needs none of them. The
driver hands the worker their builder (``evaluation.in_training.validation_hooks``: audio samples from
``generation``, voice metrics from ``evaluation``), which builds them and passes them to ``HiggsAudioTrainer``, the way Ray Train and Lightning take callbacks. At every
validation rank 0 calls each hook in order, after the validation loss, and merges the metrics it returns into the
step's metrics: what the tracker logs and what ranks checkpoints (``checkpoint_ranking``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class ValidationStep:
    """What a hook may read at one validation (on rank 0, with the model back in training mode)."""

    step: int  # the optimizer step just taken (1-based)
    model: torch.nn.Module  # the model being trained; a hook that switches it to eval mode switches it back
    model_config: Any  # the HiggsAudioConfig of the model
    device: torch.device
    records: Sequence[dict]  # the preprocessed validation records; a hook takes the first few it needs
    output_dir: Path  # where the run writes its files (samples/, eval/ under it)
    log_artifact: Callable[[str, str | None], None]  # (local path, artifact folder) to the run's tracker


class ValidationHook(Protocol):
    """Runs at a validation; returns metrics named the way the tracker shows them (``val/...``, ``eval/...``)."""

    def __call__(self, at: ValidationStep) -> dict[str, float]: ...
