"""The runs of the project's MLflow store, as the page shows them (MLflow is the record; the Studio only reads).

The store is the one every job under ``--output_root`` writes to: ``<output_root>/mlflow.db`` with artifacts in
``<output_root>/mlartifacts`` (``tracking.store.embedded_tracking_uri`` of any ``<output_root>/<run>`` output dir).
Validation samples are the WAV artifacts a run logs under ``samples/step_N/`` (``--num_validation_samples``); they
are served from the local artifact folder, which must lie under a root.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from higgs_train.chatml import context_of, target_audio_url, text_of
from higgs_train.data.manifest import load_manifest
from higgs_train.studio.refusals import StudioRefusal
from higgs_train.studio.roots import PathRefused, Roots
from higgs_train.tracking.store import EMBEDDED_DB_NAME

# Curves the page draws and the per-checkpoint table's columns (the MLflow keys the trainer logs).
CURVE_KEYS = ("train/total_loss", "train/text_loss", "train/audio_loss", "val_loss")
TABLE_KEYS = ("val_loss", "val_audio_accuracy", "eval/sim", "eval/wer", "eval/dnsmos_ovrl", "val/sample_code_agreement")
PROGRESS_KEYS = ("train/total_loss", "train/tokens_per_second", "val_loss", "val_audio_accuracy")


class RunNotFound(StudioRefusal, LookupError):
    """No run of that id in the store."""

    status = 404


class RunStore:
    """Read-only view of ``<output_root>/mlflow.db``; no store yet means no runs (not an error)."""

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self.db = roots.output / EMBEDDED_DB_NAME
        self.uri = f"sqlite:///{self.db.as_posix()}"
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def ready(self) -> bool:
        """The store exists and its schema is complete. Opening it earlier would make this process run MLflow's
        migrations at the same time as the job creating it, and one of the two fails ("table _alembic_tmp_...
        already exists"); so until a job has finished creating the store, the Studio sees no runs."""
        if self._client is not None:
            return True
        if not self.db.is_file():
            return False
        try:
            with sqlite3.connect(f"{self.db.as_uri()}?mode=ro", uri=True, timeout=5) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                version = db.execute("SELECT version_num FROM alembic_version").fetchall() if tables else []
        except sqlite3.Error:
            return False
        if not version or any(t.startswith("_alembic_tmp") for t in tables):
            return False
        try:  # mid-migration the version is an older one; a store of a newer MLflow is left to MLflow's own error
            from mlflow.store.db.utils import _get_latest_schema_revision

            return version[0][0] == _get_latest_schema_revision()
        except ImportError:  # pragma: no cover - another MLflow layout: the table check above has to do
            return True

    def runs(self) -> list[dict[str, Any]]:
        """Every run of every experiment, newest first, with its latest metrics."""
        if not self.ready():
            return []
        client = self.client()
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if not experiments:
            return []
        out: list[dict[str, Any]] = []
        token = None
        while True:
            page = client.search_runs(list(experiments), order_by=["attributes.start_time DESC"], max_results=500,
                                      page_token=token)  # fmt: skip
            out += [self._summary(run, experiments) for run in page]
            token = page.token
            if not token:
                return out

    def _summary(self, run: Any, experiments: dict[str, str]) -> dict[str, Any]:
        params, tags = run.data.params, run.data.tags
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment": experiments.get(run.info.experiment_id, ""),
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "output_dir": params.get("output_dir", ""),
            "max_steps": params.get("max_steps", ""),
            "parent_run_id": tags.get("mlflow.parentRunId"),
            "error": tags.get("error", ""),
            "metrics": dict(run.data.metrics),
        }

    def run(self, run_id: str) -> Any:
        try:
            return self.client().get_run(run_id)
        except Exception as err:  # noqa: BLE001 -- MlflowException for unknown or malformed ids
            raise RunNotFound(f"run {run_id!r}: not in {self.db}") from err

    def run_for_output_dir(self, output_dir: str) -> dict[str, Any] | None:
        """The newest run whose ``output_dir`` param is this folder (how a job finds its run)."""
        found = [r for r in self.runs() if r["output_dir"] and Path(r["output_dir"]) == Path(output_dir)]
        return found[0] if found else None

    def history(self, run_id: str, keys: tuple[str, ...] = CURVE_KEYS) -> dict[str, list[list[float]]]:
        """``key -> [[step, value], ...]`` for the curves (only keys the run logged)."""
        self.run(run_id)
        client = self.client()
        out = {}
        for key in keys:
            points = client.get_metric_history(run_id, key)
            if points:
                out[key] = [[p.step, p.value] for p in sorted(points, key=lambda p: (p.step, p.timestamp))]
        return out

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        """One row per evaluated step with the table's metrics (what ranks one checkpoint against another)."""
        rows: dict[int, dict[str, Any]] = {}
        for key, points in self.history(run_id, TABLE_KEYS).items():
            for step, value in points:
                rows.setdefault(int(step), {"step": int(step)})[key] = value
        return [rows[s] for s in sorted(rows)]

    def artifact_dir(self, run_id: str) -> Path:
        uri = self.run(run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise PathRefused(f"run {run_id}: artifacts at {uri} are not a local folder; the Studio serves local ones")
        return self.roots.inside(unquote(parsed.path))

    def samples(self, run_id: str) -> list[dict[str, Any]]:
        """Every validation sample of the run: step, sample id, URL of the WAV, and where known the row's reference
        and target clip (from the run's ``val_data`` manifest) so they can be heard side by side."""
        folder = self.artifact_dir(run_id) / "samples"
        if not folder.is_dir():
            return []
        refs = self._validation_clips(self.run(run_id).data.params)
        out = []
        for step_dir in sorted(folder.glob("step_*")):
            for wav in sorted(step_dir.glob("*.wav")):
                step = int(step_dir.name.removeprefix("step_")) if step_dir.name[5:].isdigit() else None
                out.append({"step": step, "sample_id": wav.stem, "url": self.roots.file_url(wav),
                            **refs.get(wav.stem, {})})  # fmt: skip
        return out

    def _validation_clips(self, params: dict[str, str]) -> dict[str, dict[str, Any]]:
        """``safe sample id -> {reference_url, target_url, text}`` of the run's validation rows (best effort)."""
        val = params.get("val_data") or ""
        if not val and params.get("output_dir"):  # sample data: next to the output dir (train.py's default)
            val = str(Path(params["output_dir"]).parent / "sample_data" / "val.json")
        try:
            manifest = self.roots.inside(val)
            rows = list(load_manifest(manifest))
        except Exception:  # noqa: BLE001 -- no manifest, or outside the roots: samples still play on their own
            return {}
        base = Path(params.get("audio_base_path") or manifest.parent)
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            sid = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(row.get("id", ""))) or "sample"
            try:
                context = context_of(row)["messages"]
                ref = next((t for t in reversed(context) if t.get("role") == "assistant"), None)
                ref_url = _audio_url(ref)
                target = target_audio_url(row)
                out[sid] = {
                    "text": text_of(context[-1].get("content")),
                    "reference_url": self.roots.file_url(base / ref_url) if ref_url else None,
                    "target_url": self.roots.file_url(base / target) if target else None,
                }
            except Exception:  # noqa: BLE001 -- a row of another shape just has no side-by-side clips
                continue
        return out


def _audio_url(turn: dict | None) -> str | None:
    if not turn:
        return None
    content = turn.get("content")
    items = content if isinstance(content, list) else [content]
    for item in items:
        if isinstance(item, dict) and item.get("type") == "audio":
            return item.get("audio_url")
    return None


def data_sets(roots: Roots) -> list[dict[str, Any]]:
    """Built data sets (a ``data_report.json`` beside ``train.jsonl``) and sample data under the output root."""
    out = []
    for report in sorted(roots.output.glob("**/data_report.json")):
        folder = report.parent
        try:
            summary = json.loads(report.read_text())
        except (OSError, ValueError):
            summary = {}
        report = summary.get("summary", summary)
        source = roots.locate(report["source"]) if isinstance(report.get("source"), str) else None
        out.append({"name": roots.locate(folder)[1], "train": (folder / "train.jsonl").is_file(),
                    "val": (folder / "val.jsonl").is_file(), "report": report,
                    "source": f"{source[0]}:{source[1]}" if source else None})  # fmt: skip
    return out
