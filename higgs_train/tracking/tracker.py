"""``RunTracker``: one MLflow run of one training job, written from rank 0 only, never fatal after it starts (the
package docstring says why: ``MlflowClient`` rather than the fluent API; fail loudly at ``start``, quietly later)."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from higgs_train.source_tree import git_commit
from higgs_train.tracking.chart_view import saved_view_tag
from higgs_train.tracking.loss_curve import plot_loss_curve
from higgs_train.tracking.probe import probe_http
from higgs_train.tracking.run_owner import RUN_NAME_TAG, driver_is_gone, driver_tags
from higgs_train.tracking.store import (
    TrackingError,
    local_artifact_location,
    resolve_tracking_uri,
    sqlite_db_path,
    tracking_off,
)
from higgs_train.tracking.values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    as_float,
    chunks,
    clean_key,
    flatten_params,
    metrics_to_log,
    truncate,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

# MLflow's experiment type ("Machine learning"; the UI itself writes these values). MLflow 3.17's UI does not open
# its model-training view from it (the mode is kept in the browser): higgs_train/mlflow_ui.py does that.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_tags() -> dict[str, str]:
    """The tags the project's experiments get: MLflow's experiment type and the "losses first" chart view."""
    view_key, view_value = saved_view_tag()
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, view_key: view_value}


class RunTracker:
    """One MLflow run of one training job. Only rank 0 tracks; every method is a no-op elsewhere.

    Use either ``tracker.start(...)`` ... ``tracker.end("FINISHED")`` or, so that a crash never leaves a run
    RUNNING forever, as a context manager::

        with RunTracker.for_output_dir(cfg.output_dir, cfg.mlflow_tracking_uri, rank=rank).start(...) as tracker:
            tracker.log_metrics({"train/total_loss": 1.2}, step=1)
    """

    def __init__(
        self,
        tracking_uri: str = "",
        *,
        rank: int = 0,
        enabled: bool = True,
        artifact_location: str | None = None,
        max_consecutive_failures: int = 5,
    ) -> None:
        self.enabled = enabled and rank == 0 and not tracking_off(tracking_uri)
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location or local_artifact_location(tracking_uri)
        self.max_consecutive_failures = max(1, max_consecutive_failures)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.status: str | None = None
        self._client: Any = None
        self._failures = 0
        self._broken = False
        if self.enabled and not tracking_uri:
            raise ValueError("RunTracker needs a tracking_uri on rank 0 (see resolve_tracking_uri)")

    # --- construction helpers ---
    @classmethod
    def disabled(cls) -> RunTracker:
        """A tracker that records nothing (non-zero ranks, or tracking switched off)."""
        return cls(enabled=False)

    @classmethod
    def for_output_dir(cls, output_dir: str | Path, tracking_uri: str = "", *, rank: int = 0) -> RunTracker:
        """Tracker on the resolved URI (explicit > env > embedded SQLite under ``output_dir``)."""
        if rank != 0:
            return cls.disabled()
        return cls(resolve_tracking_uri(output_dir, tracking_uri), rank=rank)

    @property
    def active(self) -> bool:
        """True while a run is open and tracking has not been switched off by repeated failures."""
        return self.enabled and self.run_id is not None and self.status is None and not self._broken

    # --- lifecycle ---
    def start(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        nested: bool = False,
    ) -> RunTracker:
        """Create the run and log ``params`` (every resolved config value) and ``tags``; returns self.

        ``parent_run_id`` makes this a child run (e.g. one Tune trial under a sweep run). ``nested=True`` without
        a parent id nests under the process's active fluent MLflow run, if any. Raises ``TrackingError`` naming
        the URI when the store is unusable.
        """
        if not self.enabled:
            return self
        if self.run_id is not None:
            raise RuntimeError(f"RunTracker already started run {self.run_id}")
        from mlflow import MlflowClient

        try:
            self._prepare_store()
            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self._get_or_create_experiment(client, experiment)
            parent = parent_run_id or (self._active_fluent_run_id() if nested else None)
            run_tags = {**self._default_tags(), **{k: v for k, v in (tags or {}).items() if v is not None}}
            if parent:
                run_tags["mlflow.parentRunId"] = parent
            run = client.create_run(
                experiment_id,
                run_name=run_name or None,
                tags={clean_key(k): truncate(str(v), MAX_TAG_VALUE_LENGTH) for k, v in run_tags.items()},
            )
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"MLflow tracking store {self.tracking_uri!r} is unusable ({type(exc).__name__}: {exc})"
            ) from exc
        self._client = client
        self.experiment_id = experiment_id
        self.run_id = run.info.run_id
        logger.info("MLflow run %s (experiment %r) at %s", self.run_id, experiment, self.tracking_uri)
        if params:
            self.log_params(params)
        return self

    def start_or_continue(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        resuming: bool = False,
    ) -> RunTracker:
        """``start`` for a job's run name, after cleaning up what earlier drivers of that name left behind.

        Runs of this name still RUNNING whose driver is gone (killed: no ``__exit__`` ever ran) are closed as
        KILLED. When the job resumes from a checkpoint, the newest unfinished run of the name (KILLED, FAILED, or
        just closed) is continued instead of starting a second run, so one training run is one MLflow run; its
        params are left as they were (MLflow params are immutable) and ``resumed_from`` is added as a tag.
        """
        if not self.enabled:
            return self
        from mlflow import MlflowClient

        tags = {RUN_NAME_TAG: run_name, **(tags or {}), **driver_tags()}
        try:
            self._prepare_store()
            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self._get_or_create_experiment(client, experiment)
            earlier = self._runs_named(client, experiment_id, run_name)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"MLflow tracking store {self.tracking_uri!r} is unusable ({type(exc).__name__}: {exc})"
            ) from exc
        closed: set[str] = set()
        for run in earlier:
            if run.info.status == "RUNNING" and driver_is_gone(run.data.tags):
                logger.warning(
                    "MLflow run %s (%s) was left RUNNING by a killed driver: closing it as KILLED",
                    run.info.run_id,
                    run_name,
                )
                client.set_tag(run.info.run_id, "closed_by", "next start of the run name: its driver was gone")
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.add(run.info.run_id)
        if resuming:
            unfinished = [r for r in earlier if r.info.status in ("KILLED", "FAILED") or r.info.run_id in closed]
            if unfinished:
                run = unfinished[-1]
                client.update_run(run.info.run_id, status="RUNNING")
                self._client = client
                self.experiment_id = experiment_id
                self.run_id = run.info.run_id
                self.set_tags({**tags, "resumed": "true"})
                logger.info("MLflow run %s (%s) continues at %s", self.run_id, run_name, self.tracking_uri)
                return self
        return self.start(experiment, run_name, params=params, tags=tags)

    @staticmethod
    def _runs_named(client: Any, experiment_id: str, run_name: str) -> list[Any]:
        """Top-level runs of ``experiment_id`` tagged with ``run_name``, oldest first."""
        quoted = run_name.replace("'", "\\'")
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{RUN_NAME_TAG} = '{quoted}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
        )
        return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]

    def attach(self, run_id: str) -> RunTracker:
        """Log into an existing run (the driver creates the run; the rank-0 training worker attaches to it).

        The attached tracker never ends the run: its creator owns the final status. Raises ``TrackingError`` when
        the store has no such run (a relative path resolved in another working directory, a node that cannot see the
        driver's SQLite file): logging into it would fail at every step.
        """
        if not self.enabled:
            return self
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        try:
            client.get_run(run_id)
        except Exception as exc:
            raise TrackingError(
                f"MLflow run {run_id} is not in the tracking store {self.tracking_uri!r} as this process sees it "
                f"({type(exc).__name__}); give --mlflow_tracking_uri a store every node reaches (an absolute path on "
                "shared storage, or an MLflow server)"
            ) from exc
        self._client = client
        self.run_id = run_id
        self._owner = False
        return self

    def check_logged(self, key: str, last_step: int) -> None:
        """Raise ``TrackingError`` unless ``key`` was logged up to ``last_step`` in this run (no-op when tracking is
        off by choice). The driver calls it after training: the rank-0 worker only warns when logging fails, so that
        a metric hiccup never costs the run, but a job whose curves are not in MLflow must not exit 0."""
        if not self.enabled or self.run_id is None or last_step <= 0:
            return
        from mlflow import MlflowClient

        try:
            history = MlflowClient(tracking_uri=self.tracking_uri).get_metric_history(self.run_id, key)
        except Exception as exc:
            raise TrackingError(
                f"MLflow run {self.run_id} at {self.tracking_uri} cannot be read back ({type(exc).__name__}: {exc})"
            ) from exc
        logged = max((int(m.step) for m in history), default=0)
        if logged < last_step:
            raise TrackingError(
                f"MLflow run {self.run_id} at {self.tracking_uri} has {key} up to step {logged} of {last_step}: the "
                "training worker could not log its metrics (see its 'MLflow ... failed' warnings); every step is in "
                "history.json. Fix the store, or pass --mlflow_tracking_uri off to train without tracking"
            )

    def end(self, status: RunStatus = "FINISHED") -> None:
        """Close the run with ``status``. Idempotent; attempted even after tracking was switched off, so a run
        whose server came back is not left RUNNING."""
        if not self.enabled or self.run_id is None or self.status is not None or not getattr(self, "_owner", True):
            return
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status must be FINISHED, FAILED or KILLED, got {status!r}")
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            logger.warning("MLflow: could not end run %s as %s (%s: %s)", self.run_id, status, type(exc).__name__, exc)
        self.status = status

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            self.end("FINISHED")
        else:
            killed = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
            if not killed and exc is not None:
                self.set_tags({"error": f"{exc_type.__name__}: {exc}"})
                self.log_text("".join(traceback.format_exception(exc_type, exc, tb)), "error.txt")
            self.end("KILLED" if killed else "FAILED")
        return False

    # --- logging ---
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches (MLflow takes at most 100 per call)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for chunk in chunks(items, MAX_PARAMS_PER_BATCH):
            self._guard("log_params", lambda c=chunk: self._client.log_batch(self.run_id, params=c))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Add or overwrite tags (e.g. results known only at the end); None values are skipped."""
        from mlflow.entities import RunTag

        items = [RunTag(clean_key(k), truncate(str(v), MAX_TAG_VALUE_LENGTH)) for k, v in tags.items() if v is not None]
        for chunk in chunks(items, MAX_PARAMS_PER_BATCH):
            self._guard("set_tags", lambda c=chunk: self._client.log_batch(self.run_id, tags=c))

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log numeric values at ``step``; None and non-numeric values are skipped (NaN/inf are kept: MLflow
        stores them, and a NaN loss is exactly what one wants to see)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics_to_log(metrics).items():
            number = as_float(value)
            if number is not None:
                items.append(Metric(clean_key(key), number, now, int(step)))
        for chunk in chunks(items, MAX_METRICS_PER_BATCH):
            self._guard("log_metrics", lambda c=chunk: self._client.log_batch(self.run_id, metrics=c))

    def last_logged_step(self, key: str) -> int:
        """The highest step at which ``key`` was logged in this run (0: none yet, or tracking is off).

        A training worker that Ray restarted from a checkpoint asks this, so that the steps it repeats (with the
        same values: resume is exact) are not logged twice.
        """
        if not self.active:
            return 0
        history = self._guard("get_metric_history", lambda: self._client.get_metric_history(self.run_id, key))
        return max((int(m.step) for m in history or []), default=0)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under ``artifact_path``."""
        p = Path(path)
        if p.is_dir():
            self._guard("log_artifacts", lambda: self._client.log_artifacts(self.run_id, str(p), artifact_path))
        else:
            self._guard("log_artifact", lambda: self._client.log_artifact(self.run_id, str(p), artifact_path))

    def log_dict(self, data: Mapping[str, Any] | list[Any], name: str) -> None:
        """Store ``data`` as a JSON (or ``.yaml``/``.yml``) artifact named ``name``."""
        if not name.endswith((".json", ".yaml", ".yml")):
            name += ".json"
        self._guard("log_dict", lambda: self._client.log_dict(self.run_id, data, name))

    def log_table(self, table: Mapping[str, list[Any]], name: str) -> None:
        """Store column-wise ``table`` as an MLflow table artifact ``name`` (a ``.json`` path; the UI renders it)."""
        self._guard("log_table", lambda: self._client.log_table(self.run_id, dict(table), name))

    def log_text(self, text: str, name: str) -> None:
        """Store ``text`` as the artifact ``name`` (a path inside the run's artifacts, e.g. 'reports/data.txt')."""
        self._guard("log_text", lambda: self._client.log_text(self.run_id, text, name))

    def log_loss_curve(
        self, history: list[Mapping[str, Any]], out_png: str | Path, artifact_path: str = "plots"
    ) -> Path | None:
        """Plot the per-step metric ``history`` to ``out_png`` and log it; returns the PNG (None when nothing to
        plot or tracking is off). A plotting error only warns, like any other tracking failure."""
        if not self.active:
            return None
        try:
            png = plot_loss_curve(history, out_png, title=f"run {self.run_id}")
        except Exception as exc:
            logger.warning("MLflow: loss curve plot failed (%s: %s); training continues", type(exc).__name__, exc)
            return None
        if png is not None:
            self.log_artifact(png, artifact_path)
        return png

    # --- internals ---
    def _guard(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run one tracking call; on failure warn, and after N consecutive failures stop tracking this run."""
        if not self.active:
            return None
        try:
            result = fn()
        except Exception as exc:
            self._failures += 1
            logger.warning(
                "MLflow %s failed for run %s at %s (%s: %s); training continues",
                what,
                self.run_id,
                self.tracking_uri,
                type(exc).__name__,
                truncate(str(exc), 500),  # SQLAlchemy errors embed whole statements
            )
            if self._failures >= self.max_consecutive_failures:
                self._broken = True
                logger.warning(
                    "MLflow tracking switched off for run %s after %d consecutive failures",
                    self.run_id,
                    self._failures,
                )
            return None
        self._failures = 0
        return result

    def _prepare_store(self) -> None:
        db = sqlite_db_path(self.tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)  # SQLAlchemy creates the file, never its folder
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow's defaults (7 retries, 120 s timeout) can stall a training step for many minutes per call
            # when the server is down; a user's explicit setting still wins.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            probe_http(self.tracking_uri)

    def _get_or_create_experiment(self, client: Any, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=self.artifact_location, tags=experiment_tags())
            except MlflowException:
                exp = client.get_experiment_by_name(name)  # another process created it first
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            logger.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(exp.experiment_id)
        for key, value in experiment_tags().items():
            if key not in exp.tags:  # a kind chosen by the user in the UI, or the saved view they edited, is kept
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    @staticmethod
    def _active_fluent_run_id() -> str | None:
        import mlflow

        run = mlflow.active_run()
        return run.info.run_id if run else None

    @staticmethod
    def _default_tags() -> dict[str, str]:
        commit = git_commit()
        return {"mlflow.source.git.commit": commit, "git_commit": commit} if commit else {}
