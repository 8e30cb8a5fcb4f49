"""Trial summaries, best-trial selection and export, the trial table, closing child runs."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.config import TrainingConfig
from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.store import tracking_off
from higgs_train.tracking.tracker import RunTracker
from higgs_train.training.checkpoint_ranking import checkpoint_score
from higgs_train.training.schedule import planned_steps
from higgs_train.tune.space import TIME_ATTR, TRIAL_RESULT_FILE, TUNE_METRIC, trial_overrides

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TrialSummary:
    """One row of the sweep's trial table."""

    trial_id: str
    status: str  # completed | early_stopped | error
    params: dict[str, Any]
    overrides: dict[str, Any]
    val_loss: float | None = None
    val_audio_accuracy: float | None = None
    score: float | None = None  # the ranking metric (--checkpoint_metric: val_loss, eval/sim_rank or eval/wer_rank)
    step: int | None = None
    last_step: int | None = None
    checkpoint_path: str | None = None
    checkpoints: list[tuple[int, float, str]] = field(default_factory=list)
    output_dir: str = ""
    mlflow_run_id: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """Flat CSV row: ids, status, figures, then the TrainingConfig values this trial set."""
        out = {
            "trial_id": self.trial_id,
            "status": self.status,
            "val_loss": self.val_loss,
            "val_audio_accuracy": self.val_audio_accuracy,
            "score": self.score,
            "step": self.step,
            "last_step": self.last_step,
            "mlflow_run_id": self.mlflow_run_id,
            "error": self.error,
        }
        out.update(self.overrides)
        return out


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize_trial(result: Any, base: TrainingConfig, trials_root: Path, lengths: Any) -> TrialSummary:
    """What Tune saw of a trial (its validation reports), completed by the trial's own end record when present.

    The final val_loss is the last one reported; a trial that ran to its end wrote ``trial_result.json`` with the
    trainer's final metrics, which win if Tune missed the last report. Where that file is not visible (the trial
    ran on another node), a trial whose reports reached its planned last step counts as completed.
    """
    score_key, _ = checkpoint_score(base.checkpoint_metric)
    trial_id = Path(result.path).name
    params = dict(result.config or {})
    summary = TrialSummary(trial_id, "error" if result.error else "early_stopped", params, {})
    summary.overrides = trial_overrides(base, params)
    summary.output_dir = str(trials_root / trial_id)
    if result.error:
        summary.error = f"{type(result.error).__name__}: {result.error}"[:2000]
    frame = result.metrics_dataframe
    if frame is not None and TUNE_METRIC in frame:
        rows = frame[frame[TUNE_METRIC].notna()].to_dict("records")
        for row in rows:
            path = row.get("checkpoint_path")
            if isinstance(path, str) and path:
                summary.checkpoints.append((int(row[TIME_ATTR]), float(row[TUNE_METRIC]), path))
        if rows:
            last = rows[-1]
            summary.val_loss = _num(last[TUNE_METRIC])
            summary.val_audio_accuracy = _num(last.get("val_audio_accuracy"))
            summary.score = _num(last.get(score_key))
            summary.step = int(last[TIME_ATTR])
            path = last.get("checkpoint_path")
            summary.checkpoint_path = path if isinstance(path, str) and path else None
        if TIME_ATTR in frame and frame[TIME_ATTR].notna().any():
            summary.last_step = int(frame[TIME_ATTR].max())
    reached = summary.last_step or 0
    if not result.error and reached and reached >= planned_steps(base.replace(**summary.overrides), lengths):
        summary.status = "completed"
    end = trials_root / trial_id / TRIAL_RESULT_FILE
    if end.exists() and not result.error:
        record = json.loads(end.read_text())
        metrics = record.get("metrics", {})
        summary.status = "completed"
        if TUNE_METRIC in metrics and int(metrics.get(TIME_ATTR, 0)) >= (summary.step or 0):
            summary.val_loss = _num(metrics[TUNE_METRIC])
            summary.val_audio_accuracy = _num(metrics.get("val_audio_accuracy"))
            summary.score = _num(metrics.get(score_key, summary.score))
            summary.step = int(metrics.get(TIME_ATTR, 0))
            summary.last_step = max(summary.last_step or 0, summary.step)
            summary.checkpoint_path = record.get("checkpoint") or summary.checkpoint_path
    return summary


def select_best(trials: list[TrialSummary], mode: str = "min") -> TrialSummary | None:
    """The trial with the best final ``score`` (lowest for mode "min", e.g. val_loss or WER; highest for "max",
    e.g. SIM) among those that did not fail; ties go to the earlier trial."""
    scored = [t for t in trials if t.status != "error" and t.score is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda t: sign * t.score)  # type: ignore[operator]


def _fetch_checkpoint(path: str, into: Path) -> Path | None:
    """A reported checkpoint as a local directory (storage may be remote); None when it was pruned."""
    from ray.train import Checkpoint

    try:
        return Path(Checkpoint(path).to_directory(str(into)))
    except (FileNotFoundError, OSError) as err:
        logger.info("checkpoint %s is not available (%s)", path, err)
        return None


def export_best(best: TrialSummary, dest: Path) -> dict[str, Any]:
    """Copy the best trial's adapter and training config to ``dest`` and write ``best_trial.json``.

    Source, in order: the trial's final adapter (it ran to its end, and this node sees its output dir); the
    checkpoint reported with its final val_loss; its best surviving checkpoint (keep_best_k may have pruned the
    last one). ``best_trial.json`` says which, with that adapter's own step and val_loss.
    """
    if dest.exists():
        shutil.rmtree(dest)
    adapter = Path(best.output_dir) / "adapter"
    source: dict[str, Any]
    if best.status == "completed" and (adapter / "adapter_config.json").exists():
        shutil.copytree(adapter, dest)
        source = {"kind": "final_adapter", "path": str(adapter), "step": best.step, "val_loss": best.val_loss}
    else:
        candidates = [(best.step, best.val_loss, best.checkpoint_path)] if best.checkpoint_path else []
        candidates += sorted(best.checkpoints, key=lambda c: c[1])
        source = {}
        with tempfile.TemporaryDirectory(prefix="higgs-best-") as tmp:
            for i, (step, val_loss, path) in enumerate(candidates):
                local = _fetch_checkpoint(path, Path(tmp) / str(i))
                if local is None or not (local / "adapter" / "adapter_config.json").exists():
                    continue
                shutil.copytree(local / "adapter", dest)
                shutil.copy2(local / "config.yaml", dest / "training_config.yaml")
                source = {"kind": "checkpoint", "path": path, "step": step, "val_loss": val_loss}
                break
        if not source:
            raise FileNotFoundError(f"no adapter of best trial {best.trial_id} is reachable (tried {candidates})")
    record = {
        "trial_id": best.trial_id,
        "status": best.status,
        "val_loss": best.val_loss,
        "val_audio_accuracy": best.val_audio_accuracy,
        "score": best.score,
        "step": best.step,
        "params": best.params,
        "training_overrides": best.overrides,
        "mlflow_run_id": best.mlflow_run_id,
        "adapter_source": source,
    }
    (dest / "best_trial.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def trial_table_text(trials: list[TrialSummary]) -> str:
    """The trials as an aligned text table for the console, lowest val_loss first (errors last)."""
    order = sorted(trials, key=lambda t: (t.val_loss is None, t.val_loss if t.val_loss is not None else 0.0))
    keys = sorted({k for t in trials for k in t.params})
    header = ["trial", "status", "step", "val_loss", "acc", *keys]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [
        [t.trial_id, t.status, cell(t.step), cell(t.val_loss), cell(t.val_audio_accuracy)]
        + [cell(t.params.get(k)) for k in keys]
        for t in order
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def write_trial_table(trials: list[TrialSummary], output: Path) -> tuple[Path, Path]:
    """``trials.csv`` (one row per trial) and ``trials.json`` (the same plus drawn params and checkpoints)."""
    rows = [t.row() for t in trials]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = output / "trials.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path = output / "trials.json"
    json_path.write_text(json.dumps([asdict(t) for t in trials], indent=2, default=str) + "\n")
    return csv_path, json_path


def close_child_runs(tracking_uri: str, experiment: str, parent_run_id: str, trials: list[TrialSummary]) -> None:
    """Link trials to their child runs, log each one's final figures, and end the runs ASHA killed mid-flight."""
    from mlflow import MlflowClient

    if tracking_off(tracking_uri) or not parent_run_id:
        return
    children = {
        r["tags"].get("tune_trial_id"): r
        for r in find_runs(tracking_uri, experiment)
        if r["parent_run_id"] == parent_run_id
    }
    client = MlflowClient(tracking_uri=tracking_uri)
    for trial in trials:
        run = children.get(trial.trial_id)
        if run is None:
            continue
        trial.mlflow_run_id = run["run_id"]
        tracker = RunTracker(tracking_uri).attach(run["run_id"])
        tracker.set_tags({"tune_status": trial.status, "tune_error": trial.error})
        final = {"final_val_loss": trial.val_loss, "final_val_audio_accuracy": trial.val_audio_accuracy}
        tracker.log_metrics({k: v for k, v in final.items() if v is not None}, step=trial.step or 0)
        if run["status"] == "RUNNING":  # the trial actor was stopped before its own `with tracker` could end it
            try:
                client.set_terminated(run["run_id"], status="FAILED" if trial.status == "error" else "FINISHED")
            except Exception as exc:
                logger.warning("MLflow: could not end child run %s (%s)", run["run_id"], exc)
