"""The loss curve a run logs (``plots/loss_curve.png``) and the driver writes beside ``history.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from higgs_train.tracking.values import as_float

# Which history keys feed which loss-curve line; the first key present in the history wins.
LOSS_CURVE_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train total", ("train/total_loss", "train/loss", "total_loss", "loss")),
    ("train text", ("train/text_loss", "text_loss")),
    ("train audio", ("train/audio_loss", "audio_loss")),
    ("val", ("val_loss", "val/loss", "val/total_loss", "eval/loss")),
)
_STEP_KEYS = ("step", "global_step", "training_iteration")


def _series(history: list[Mapping[str, Any]], keys: tuple[str, ...]) -> tuple[str | None, list[float], list[float]]:
    key = next((k for k in keys if any(k in row for row in history)), None)
    xs: list[float] = []
    ys: list[float] = []
    if key is None:
        return None, xs, ys
    for i, row in enumerate(history):
        y = as_float(row.get(key))
        if y is None or not math.isfinite(y):
            continue
        step = next((row[s] for s in _STEP_KEYS if row.get(s) is not None), i + 1)
        xs.append(float(step))
        ys.append(y)
    return key, xs, ys


def plot_loss_curve(history: list[Mapping[str, Any]], out_png: str | Path, title: str = "") -> Path | None:
    """Draw train total/text/audio loss and val loss (whichever are present) against the step; None if none are.

    Uses a bare Agg canvas rather than pyplot, so no global backend is switched and no GUI is ever touched in a
    headless Ray worker.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for label, keys in LOSS_CURVE_SERIES:
        key, xs, ys = _series(history, keys)
        if not xs:
            continue
        style = {"marker": "o", "linestyle": "--"} if label == "val" else {"linewidth": 1.5}
        ax.plot(xs, ys, label=f"{label} ({key})", **style)
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
