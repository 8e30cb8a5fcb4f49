"""What the loop needs from its surroundings, so the same loop runs alone (tests, notebooks) and under Ray Train.

``LocalContext`` is a single process: checkpoints go to ``<output_dir>/checkpoints`` (best-k by validation loss
plus the latest), metrics to an optional tracker. ``higgs_train.driver.worker`` provides the Ray Train version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from higgs_train.training.checkpoint_ranking import checkpoint_score


@dataclass
class WorkerContext:
    """Rank information and the hooks that differ between a plain process and a Ray Train worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    log_artifact: Callable[[str, str | None], None] = lambda path, artifact_path: None
    # The highest step whose metrics already reached the tracker (after a restart: possibly past the checkpoint).
    last_logged_step: Callable[[], int] = lambda: 0
    # Rank 0 prints a progress line per logged step; a Tune trial's workers do not (trials would interleave: the
    # sweep prints one line per trial result instead, tune.trial.TrialResultLines).
    console_lines: bool = True

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over workers (identity for one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, save_step: bool = False) -> None:
        """Publish metrics (and a finished checkpoint directory written by rank 0).

        ``save_step`` is True on every rank at a checkpoint step (only rank 0 has ``checkpoint_dir``), so that all
        ranks can take the same decision about a collective report."""
        raise NotImplementedError


@dataclass
class LocalContext(WorkerContext):
    """Single-process context: keeps ``keep_best_k`` checkpoints by val_loss plus the latest one."""

    checkpoint_root: Path = Path("outputs/checkpoints")
    keep_best_k: int = 2
    reported: list[dict[str, float]] = field(default_factory=list)
    checkpoint_metric: str = "val_loss"  # --checkpoint_metric: val_loss, sim or wer

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, save_step: bool = False) -> None:
        self.reported.append(dict(metrics))
        if checkpoint_dir is None:
            return
        target = self.checkpoint_root / f"step_{int(metrics['step']):07d}"
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint_dir, target)
        (target / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
        self._prune()

    def _prune(self) -> None:
        key, mode = checkpoint_score(self.checkpoint_metric)
        sign = 1.0 if mode == "min" else -1.0
        entries: list[tuple[float, int, Path]] = []
        for path in self.checkpoint_root.glob("step_*"):
            metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
            entries.append((sign * metrics.get(key, sign * float("inf")), int(path.name.split("_")[1]), path))
        if not entries:
            return
        latest = max(entries, key=lambda e: e[1])[2]
        keep = {e[2] for e in sorted(entries, key=lambda e: (e[0], -e[1]))[: self.keep_best_k]} | {latest}
        for _, _, path in entries:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def as_float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
