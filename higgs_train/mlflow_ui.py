"""MLflow UI app plugin (``mlflow ui --app-name higgs-train``): a fresh browser opens on the project's training runs.

Why a plugin: MLflow 3.17's UI decides GenAI vs model-training mode in the browser alone. The mode is the page URL's
``workflowType`` parameter, else the localStorage key ``mlflow.workflowType_v1``, else ``genai``; the experiment's
``mlflow.experimentKind`` tag is read only when that switch is compiled out, which it is not in 3.17. So no tag or
logging order on our side can change what a fresh browser shows, and ``/`` opens MLflow's GenAI home. The server only
decides what ``index.html`` says. This plugin (registered under ``mlflow.app`` in pyproject.toml) serves MLflow's own
app unchanged, except that ``index.html`` carries a few lines that run before MLflow's bundle:

* the model-training mode is seeded in localStorage when the browser has none (a mode the user picked is kept);
* a visit to ``/`` with no route lands on the project's experiment (``TrainingConfig.mlflow_experiment``'s default)
  in its runs view, charts shown, rather than the GenAI home. Any other URL is left alone.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from higgs_train.config import TrainingConfig

logger = logging.getLogger(__name__)

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage key "mlflow.workflowType", version 1
TRAINING_MODE = "machine_learning"
EXPERIMENT = TrainingConfig.__dataclass_fields__["mlflow_experiment"].default


def training_route(experiment_id: str | None) -> str:
    """The hash route a bare ``/`` is sent to: the experiment's runs as charts, or the experiment list. It names no
    mode: the browser's stored one (seeded, or the user's own pick with MLflow's switch) decides."""
    if experiment_id is None:
        return "#/experiments"
    return f"#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def boot_script(route: str) -> str:
    """The ``<script>`` put first in ``<head>``: it runs before MLflow's bundle reads localStorage or the route."""
    return (
        "<script>(function(){"
        f"try{{if(localStorage.getItem({json.dumps(WORKFLOW_KEY)})===null)"
        f"localStorage.setItem({json.dumps(WORKFLOW_KEY)},{json.dumps(json.dumps(TRAINING_MODE))})}}catch(e){{}}"
        f'if(["","#","#/"].indexOf(location.hash)>=0)history.replaceState(null,"",{json.dumps(route)})'
        "})()</script>"
    )


def project_experiment_id() -> str | None:
    """The id of the project's experiment in the server's store, or ``None`` (no run yet, store unreadable)."""
    from mlflow.server.handlers import _get_tracking_store

    try:
        experiment = _get_tracking_store().get_experiment_by_name(EXPERIMENT)
    except Exception as exc:  # the page must still open; MLflow's own pages show the store's error
        logger.warning("could not look up MLflow experiment %r: %s", EXPERIMENT, exc)
        return None
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    return experiment.experiment_id


def create_app() -> Any:
    """MLflow's server app with the boot script in ``index.html`` (the ``mlflow.app`` entry point's factory).

    Returns the ASGI app when ``mlflow ui``/``server`` run uvicorn (their default), the Flask app otherwise, as
    MLflow's own ``basic-auth`` plugin does.
    """
    from flask import Response, request
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import _add_static_prefix, app

    index = _add_static_prefix("/")

    @app.before_request
    def _index_opens_training_runs() -> Response | None:
        if request.method != "GET" or request.path != index:
            return None
        with open(f"{app.static_folder}/index.html", encoding="utf-8") as page:
            html = page.read()
        html = html.replace("<head>", "<head>" + boot_script(training_route(project_experiment_id())), 1)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
