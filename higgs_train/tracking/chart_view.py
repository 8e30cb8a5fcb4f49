"""The project experiment's saved MLflow chart view, "Training: losses first" (issue 19).

Why: MLflow's runs page lays its charts out by metric name. Sections are sorted alphabetically, so the three
``data/*`` counts come before ``train/*``. Charts inside a section are sorted too, so ``train/total_loss`` is the
last of the 13 ``train/*`` charts. Renaming metrics to beat a sort order would be the wrong fix.

MLflow's own way to keep a layout is a saved view: the runs page's "Save as new view" stores the page state as the
experiment tag ``mlflow.sharedViewState.<key>``, and ``?viewStateShareKey=<key>`` opens it. The tracker stores this
view when it creates the experiment, and also on an existing experiment without it. A view the user edited is kept.
``mlflow ui --app-name higgs-train`` (``higgs_train/mlflow_ui.py``) opens it for a browser that has no layout of its
own for the experiment. Any UI lists it in the runs page's view menu.

The state names only what comes first: the loss charts, then the validation sections. MLflow adds a chart for every
other metric after them, and any other section (``data``, ``eval``, ``trials``, system metrics) after these.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

VIEW_KEY = "higgs-train-losses-first"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # MLflow UI's prefix for saved views (and the URL parameter below)
VIEW_URL_PARAMETER = "viewStateShareKey"
VIEW_NAME = "Training: losses first"
UNPREFIXED_SECTION = "Model metrics"  # MLflow's section name for metrics without a ``prefix/``

# Section order, and each section's first charts in order (the trainer's names: training/throughput.py, trainer.py).
FIRST_CHARTS: dict[str, tuple[str, ...]] = {
    "train": ("train/total_loss", "train/text_loss", "train/audio_loss"),
    UNPREFIXED_SECTION: ("val_loss",),
    "val": (),
}


def _stable_id(name: str) -> str:
    """The same id on every write, so the tag's value is reproducible (MLflow only needs ids unique in the view)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"higgs-train/chart-view/{name}").hex


def _line_chart(metric: str, section_id: str) -> dict[str, Any]:
    """One line chart in the shape MLflow 3's runs page writes for a metric it charts by itself."""
    return {
        "uuid": _stable_id(f"chart/{metric}"),
        "type": "LINE",
        "runsCountToCompare": 10,
        "metricSectionId": section_id,
        "deleted": False,
        "isGenerated": True,
        "metricKey": metric,
        "displayName": metric.rsplit("/", 1)[-1],
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def view_state() -> dict[str, Any]:
    """The page state of the view: ordered sections, each section's first charts.

    ``isAccordionReordered`` keeps the section order as written (MLflow otherwise re-sorts them), and a section's
    ``isReordered`` makes MLflow append its other charts after the named ones rather than sort them in between.
    """
    sections, charts = [], []
    for name, metrics in FIRST_CHARTS.items():
        section_id = _stable_id(f"section/{name}")
        sections.append(
            {
                "uuid": section_id,
                "name": name,
                "display": True,
                "isReordered": True,
                "deleted": False,
                "isGenerated": True,
            }
        )
        charts += [_line_chart(metric, section_id) for metric in metrics]
    return {
        "compareRunsMode": "CHART",
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
    }


def saved_view_tag(now_ms: int | None = None) -> tuple[str, str]:
    """``(tag key, tag value)``: the view in MLflow's saved-view envelope (the state is a JSON string in it)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = {"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(view_state())}
    return VIEW_TAG, json.dumps(envelope)
