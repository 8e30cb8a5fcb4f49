"""Which reported metric ranks checkpoints for ``--checkpoint_metric``, and in which direction.

It lives beside the checkpoints it ranks: the local context's best-k pruning, Ray Train's ``CheckpointConfig`` and a
Tune sweep's trial ranking all read this one table. ``eval/sim_rank`` and ``eval/wer_rank`` are written by the voice
evaluation the driver hands to the trainer (``higgs_train.evaluation.in_training``).
"""

from __future__ import annotations

# --checkpoint_metric -> (reported metric, mode) for Ray Train's and the local checkpoint ranking.
CHECKPOINT_METRICS: dict[str, tuple[str, str]] = {
    "val_loss": ("val_loss", "min"),
    "sim": ("eval/sim_rank", "max"),
    "wer": ("eval/wer_rank", "min"),
}


def checkpoint_score(metric: str) -> tuple[str, str]:
    """``(metric key, "min"|"max")`` that ranks checkpoints for ``--checkpoint_metric``."""
    if metric not in CHECKPOINT_METRICS:
        raise ValueError(f"checkpoint_metric {metric!r}: expected one of {', '.join(CHECKPOINT_METRICS)}")
    return CHECKPOINT_METRICS[metric]
