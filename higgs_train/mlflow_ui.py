"""MLflow UI app plugin (``mlflow ui --app-name higgs-train``): a fresh browser opens on the project's training runs.

Why a plugin: MLflow 3.17's UI decides GenAI vs model-training mode in the browser alone. The mode is the page URL's
``workflowType`` parameter, else the localStorage key ``mlflow.workflowType_v1``, else ``genai``; the experiment's
``mlflow.experimentKind`` tag is read only when that switch is compiled out, which it is not in 3.17. So no tag or
logging order on our side can change what a fresh browser shows, and ``/`` opens MLflow's GenAI home. The server only
decides what ``index.html`` says. This plugin (registered under ``mlflow.app`` in pyproject.toml) serves MLflow's own
app unchanged, except that ``index.html`` carries a few lines that run before MLflow's bundle:

* the model-training mode is seeded in localStorage when the browser has none (a mode the user picked is kept);
* a visit to ``/`` with no route lands on the project's experiment (``TrainingConfig.mlflow_experiment``'s default)
  in its runs view, charts shown, rather than the GenAI home. Any other URL is left alone;
* that visit opens the experiment's saved view "Training: losses first" (``tracking/chart_view.py``) when the
  browser keeps no layout of its own for the experiment; a layout the user made (MLflow stores it in localStorage
  once they leave the saved view or change a chart) is what they see instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from flask import Response, request

from higgs_train.config import TrainingConfig
from higgs_train.tracking.chart_view import VIEW_KEY, VIEW_TAG, VIEW_URL_PARAMETER

logger = logging.getLogger(__name__)

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage key "mlflow.workflowType", version 1
TRAINING_MODE = "machine_learning"
EXPERIMENT = TrainingConfig.__dataclass_fields__["mlflow_experiment"].default


def own_layout_key(experiment_id: str) -> str:
    """The localStorage key under which MLflow 3.17's runs page keeps a browser's own layout of one experiment."""
    return f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'


@dataclass(frozen=True)
class ProjectExperiment:
    """What ``/`` needs to know of the project's experiment in the server's store."""

    experiment_id: str
    has_saved_view: bool


def training_route(experiment: ProjectExperiment | None, saved_view: bool = False) -> str:
    """The hash route a bare ``/`` is sent to: the experiment's runs as charts (in the saved view when asked), or
    the experiment list. It names no mode: the browser's stored one (seeded, or the user's pick) decides."""
    if experiment is None:
        return "#/experiments"
    route = f"#/experiments/{experiment.experiment_id}/runs?compareRunsMode=CHART"
    return f"{route}&{VIEW_URL_PARAMETER}={VIEW_KEY}" if saved_view else route


def boot_script(experiment: ProjectExperiment | None) -> str:
    """The ``<script>`` put first in ``<head>``: it runs before MLflow's bundle reads localStorage or the route."""
    route = json.dumps(training_route(experiment))
    if experiment is not None and experiment.has_saved_view:
        own_layout = json.dumps(own_layout_key(experiment.experiment_id))
        route = f"(localStorage.getItem({own_layout})===null?{json.dumps(training_route(experiment, True))}:{route})"
    return (
        "<script>(function(){"
        f"try{{if(localStorage.getItem({json.dumps(WORKFLOW_KEY)})===null)"
        f"localStorage.setItem({json.dumps(WORKFLOW_KEY)},{json.dumps(json.dumps(TRAINING_MODE))})}}catch(e){{}}"
        f'if(["","#","#/"].indexOf(location.hash)>=0)history.replaceState(null,"",{route})'
        "})()</script>"
    )


def project_experiment() -> ProjectExperiment | None:
    """The project's experiment in the server's store, or ``None`` (no run yet, store unreadable)."""
    from mlflow.server.handlers import _get_tracking_store

    try:
        experiment = _get_tracking_store().get_experiment_by_name(EXPERIMENT)
    except Exception as exc:  # the page must still open; MLflow's own pages show the store's error
        logger.warning("could not look up MLflow experiment %r: %s", EXPERIMENT, exc)
        return None
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    return ProjectExperiment(experiment.experiment_id, VIEW_TAG in experiment.tags)


def create_app() -> Any:
    """MLflow's server app with the boot script in ``index.html`` (the ``mlflow.app`` entry point's factory).

    Returns the ASGI app when ``mlflow ui``/``server`` run uvicorn (their default), the Flask app otherwise, as
    MLflow's own ``basic-auth`` plugin does.
    """
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import _add_static_prefix, app

    index = _add_static_prefix("/")

    @app.before_request
    def _index_opens_training_runs() -> Response | None:
        if request.method != "GET" or request.path != index:
            return None
        with open(f"{app.static_folder}/index.html", encoding="utf-8") as page:
            html = page.read()
        html = html.replace("<head>", "<head>" + boot_script(project_experiment()), 1)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
