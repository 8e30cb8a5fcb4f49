"""Evaluation outputs: ``eval.json``, the side-by-side table (Markdown + CSV), per-row CSV and plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from higgs_train.evaluation.suite import HEADLINE_METRICS, RowScore, summarize


def write_report(
    output_dir: str | Path, rows: list[RowScore], meta: dict[str, Any], failures: dict[str, str] | None = None
) -> dict[str, Path]:
    """Write every output under ``output_dir``; returns their paths by kind.

    ``failures``: models that produced no rows at all (load error, dead actor) -> the one-line reason; each still
    gets its line, with status ``failed``, in ``eval.json``'s summary and in the tables.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ordered_summary(rows, failures, meta)
    paths = {
        "json": out / "eval.json",
        "table_md": out / "eval_table.md",
        "table_csv": out / "eval_table.csv",
        "rows_csv": out / "eval_rows.csv",
    }
    doc = {"meta": meta, "summary": _clean(summary), "rows": [r.to_dict() for r in rows]}
    paths["json"].write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    columns = _columns(summary)
    paths["table_md"].write_text(markdown_table(summary, columns, meta))
    with paths["table_csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "status", "rows", *columns, "flagged_rows", "bad_audio_rows", "flags"])
        for model, s in summary.items():
            means = [_fmt(s["mean"].get(c)) for c in columns]
            writer.writerow([model, _status(s), s["rows"], *means, s["flagged_rows"], s["bad_audio_rows"], _flags(s)])
    metric_keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    with paths["rows_csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "id", "speaker", "text", "transcript", *metric_keys, "flags", "wav"])
        for r in rows:
            values = [_fmt(r.metrics.get(k)) for k in metric_keys]
            writer.writerow(
                [r.model, r.clip_id, r.speaker or "", r.text, r.transcript, *values, ";".join(r.flags), r.wav or ""]
            )
    plot = plot_metrics(rows, out / "plots" / "eval_metrics.png")
    if plot is not None:
        paths["plot"] = plot
    return paths


def ordered_summary(
    rows: list[RowScore], failures: dict[str, str] | None, meta: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """``summarize`` with the models in the order they were given (``meta["models"]``), failed ones included."""
    summary = summarize(rows, failures)
    order = [m["label"] for m in meta.get("models", []) if m.get("label") in summary]
    return {**{label: summary[label] for label in order}, **summary}


def rows_table(rows: list[RowScore]) -> dict[str, list[Any]]:
    """Per-row metrics as columns (what ``mlflow.log_table`` takes); NaN becomes None."""
    metric_keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    table: dict[str, list[Any]] = {"model": [], "id": [], "speaker": [], "text": [], "transcript": [], "flags": []}
    table.update({k: [] for k in metric_keys})
    for r in rows:
        table["model"].append(r.model)
        table["id"].append(r.clip_id)
        table["speaker"].append(r.speaker or "")
        table["text"].append(r.text)
        table["transcript"].append(r.transcript)
        table["flags"].append(";".join(r.flags))
        for k in metric_keys:
            v = r.metrics.get(k)
            table[k].append(None if v is None or math.isnan(v) else float(v))
    return table


def markdown_table(summary: dict[str, dict[str, Any]], columns: list[str], meta: dict[str, Any]) -> str:
    arrows = {k: ("↑" if up else "↓") for k, up in HEADLINE_METRICS.items()}
    head = ["model", "status", "rows", *[f"{c} {arrows.get(c, '')}".strip() for c in columns], "flagged"]
    head += ["bad audio", "flags"]
    lines = [
        f"SIM: {meta.get('sim_model', '?')}; ASR: {meta.get('asr', '?')}; manifest: {meta.get('manifest', '?')}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for model, s in summary.items():
        cells = [model, _status(s), str(s["rows"]), *[_fmt(s["mean"].get(c)) for c in columns]]
        cells += [str(s["flagged_rows"]), str(s["bad_audio_rows"]), _flags(s)]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_metrics(rows: list[RowScore], out_png: str | Path) -> Path | None:
    """One panel per headline metric: each model's per-row values (dots) and mean (bar)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r.model for r in rows))
    keys = [k for k in HEADLINE_METRICS if any(not math.isnan(r.metrics.get(k, math.nan)) for r in rows)]
    if not models or not keys:
        return None
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for j, model in enumerate(models):
            vals = [r.metrics[key] for r in rows if r.model == model and not math.isnan(r.metrics.get(key, math.nan))]
            if vals:
                ax.bar(j, sum(vals) / len(vals), color=f"C{j}", alpha=0.5)
                ax.scatter([j] * len(vals), vals, color=f"C{j}", s=12, zorder=3)
        ax.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
        ax.set_title(f"{key} ({'higher' if HEADLINE_METRICS[key] else 'lower'} is better)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _columns(summary: dict[str, dict[str, Any]]) -> list[str]:
    present = {k for s in summary.values() for k, v in s["mean"].items() if not math.isnan(v)}
    return [k for k in HEADLINE_METRICS if k in present]


def _status(s: dict[str, Any]) -> str:
    """``ok``, or ``failed: <reason>`` on one line (the reason is already one line; newlines are flattened anyway)."""
    return "ok" if s["status"] == "ok" else f"failed: {' '.join(s['error'].split())}"


def _flags(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(s["flags"].items()))


def _fmt(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.3f}"


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
