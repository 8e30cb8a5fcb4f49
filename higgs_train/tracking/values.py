"""Config values and metrics shaped to what MLflow accepts: valid keys, string params within the server's length
limits (exceeding one rejects the whole batch), batches of the allowed size, and each metric logged once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# MLflow's server-side limits (mlflow.utils.validation); exceeding them rejects the whole batch.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# Counters that are the x-axis of every metric, not metrics of their own.
NOT_METRICS = frozenset({"step", "epoch", "global_step", "training_iteration"})


def truncate(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` chars, ending in a marker that says how much was dropped."""
    if len(value) <= limit:
        return value
    kept = limit
    while True:  # the marker's length depends on the count it reports; settle both (two rounds at most in practice)
        marker = f"...[truncated {len(value) - kept} chars]"
        if kept + len(marker) <= limit:
            return value[:kept] + marker
        if kept == 0:  # limit shorter than any marker: a plain cut is all that fits
            return value[:limit]
        kept = max(0, limit - len(marker))


def clean_key(key: Any) -> str:
    """Make ``key`` a valid MLflow param/metric/tag name; '/' is kept so 'train/total_loss' groups in the UI."""
    text = re.sub(r"[^/\w.\- ]", "_", str(key))
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:MAX_KEY_LENGTH]


def param_value(value: Any) -> str:
    """Stringify one config value: lists/dicts as JSON (readable and diffable in the UI), then length-limit."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict, set)):
        items = sorted(value, key=str) if isinstance(value, set) else value
        text = json.dumps(items, sort_keys=True, default=str)
    else:
        text = str(value)
    return truncate(text, MAX_PARAM_VALUE_LENGTH)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Config dict -> MLflow params (string values, valid keys, within limits)."""
    return {clean_key(k): param_value(v) for k, v in params.items()}


def as_float(value: Any) -> float | None:
    """A number as a float (tensors and numpy scalars included); None for strings, None and non-numbers."""
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def chunks(items: list[T], size: int) -> Iterable[list[T]]:
    """``items`` in consecutive lists of at most ``size`` (MLflow's per-call batch limits)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def metrics_to_log(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Each metric once under one name: step/epoch counters dropped (they are the step), and a bare alias dropped
    when the same value is also given under its ``train/`` name (the loop keeps short aliases for Tune)."""
    out = {}
    for key, value in metrics.items():
        if key in NOT_METRICS:
            continue
        grouped = f"train/{key}"
        if "/" not in key and grouped in metrics and metrics[grouped] == value:
            continue
        out[key] = value
    return out
