"""Reading runs back from a store without the MLflow UI: the tests' assertions and the README's comparisons."""

from __future__ import annotations

from typing import Any


def find_runs(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """All runs of ``experiment``, oldest first: run_id, run_name, status, params, latest metrics, tags.

    Used by tests and to compare runs from a shell (see README), without starting the MLflow UI.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000, page_token=token
        )
        for run in page:
            runs.append(
                {
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "start_time": run.info.start_time,
                    "end_time": run.info.end_time,
                    "artifact_uri": run.info.artifact_uri,
                    "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
                    "params": dict(run.data.params),
                    "metrics": dict(run.data.metrics),
                    "tags": dict(run.data.tags),
                }
            )
        token = page.token
        if not token:
            return runs
