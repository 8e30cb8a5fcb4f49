"""MLflow tracking for training jobs: one run per job, written from rank 0 only, never fatal after it starts.

Why this shape:

* Embedded by default, one store per project. A job must be trackable with no server: the default store is SQLite
  (MLflow 3.17 refuses plain ``file:`` stores) *next to* the output dir, ``<output_dir>/../mlflow.db`` with artifacts
  in ``<output_dir>/../mlartifacts``, where the token cache already lives: every run of a project
  (``outputs/default``, ``outputs/my-voice``, a sweep in ``outputs/sweep``, a job submitted with
  ``--output_dir "$PWD/outputs/x"``) lands in ``outputs/mlflow.db``, so one ``mlflow ui`` compares them all. A store
  in the folder a command starts from would split submitted jobs off (Ray runs them in a throwaway copy of the
  working directory). ``--mlflow_tracking_uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere; ``off`` tracks nothing.
* Absolute before Ray. Every relative path or ``sqlite:///relative.db`` is made absolute by the driver: a worker
  resolves it in its own Ray session folder, opens another database and finds no run there.
* ``MlflowClient``, not the fluent API. The fluent API keeps a process-global active-run stack and can start
  system-metrics threads; a Ray Train worker (or a test) may hold several trackers, so each tracker owns its run id.
* Fail loudly early, quietly late. A bad URI at ``start`` raises ``TrackingError`` naming the URI, because a run
  silently untracked is worse than no run. After that, a tracking hiccup (server restart, locked DB) only warns:
  losing a metric point must never cost hours of GPU time. Repeated failures switch tracking off for the run, and
  the driver then fails the job at its end (``check_logged``: the adapter is saved, the exit code says the record
  is incomplete) unless the user switched tracking off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

logger = logging.getLogger(__name__)

T = TypeVar("T")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

EMBEDDED_DB_NAME = "mlflow.db"
EMBEDDED_ARTIFACT_DIR = "mlartifacts"
TRACKING_OFF = "off"  # --mlflow_tracking_uri off
PROJECT_DIR = Path(__file__).resolve().parents[1]

# MLflow's server-side limits (mlflow.utils.validation); exceeding them rejects the whole batch.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Which history keys feed which loss-curve line; the first key present in the history wins.
LOSS_CURVE_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train total", ("train/total_loss", "train/loss", "total_loss", "loss")),
    ("train text", ("train/text_loss", "text_loss")),
    ("train audio", ("train/audio_loss", "audio_loss")),
    ("val", ("val_loss", "val/loss", "val/total_loss", "eval/loss")),
)
_STEP_KEYS = ("step", "global_step", "training_iteration")
# Counters that are the x-axis of every metric, not metrics of their own.
NOT_METRICS = frozenset({"step", "epoch", "global_step", "training_iteration"})
# MLflow's experiment type ("Machine learning"; the UI itself writes these values). MLflow 3.17's UI does not open
# its model-training view from it (the mode is kept in the browser): higgs_train/mlflow_ui.py does that.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Tags that let the next start of a run name tell a run whose driver died (left RUNNING) from a live one.
DRIVER_HOST_TAG = "driver_host"
DRIVER_PID_TAG = "driver_pid"
RUN_NAME_TAG = "run_name"


class TrackingError(RuntimeError):
    """The tracking store named in the message cannot be used (raised only by ``RunTracker.start``)."""


def tracking_error_in(error: BaseException) -> TrackingError | None:
    """The ``TrackingError`` a Ray Train worker raised, out of the ``WorkerGroupError`` (or task error) around it,
    so that the driver can show its one line instead of Ray's nested tracebacks."""
    pending: list[Any] = [error, *getattr(error, "worker_failures", {}).values()]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TrackingError):
            return TrackingError(str(current).splitlines()[-1] if "\n" in str(current) else str(current))
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    found = re.search(r"TrackingError: (.+)", str(error))
    return TrackingError(found.group(1)) if found else None


# --------------------------------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------------------------------
def project_store_dir(output_dir: str | Path) -> Path:
    """Where the project's default store lives: the folder holding the output dir (see the module docstring)."""
    return Path(output_dir).expanduser().resolve().parent


def embedded_tracking_uri(output_dir: str | Path) -> str:
    """``sqlite:///<abs output_dir>/../mlflow.db``: the project's store that needs no server."""
    return f"sqlite:///{(project_store_dir(output_dir) / EMBEDDED_DB_NAME).as_posix()}"


def tracking_off(uri: str) -> bool:
    """``--mlflow_tracking_uri off``: the user chose a job without tracking (nothing is logged, nothing checked)."""
    return uri.strip().lower() == TRACKING_OFF


def resolve_tracking_uri(output_dir: str | Path, explicit: str = "") -> str:
    """Pick the tracking URI: ``explicit`` (``--mlflow_tracking_uri``) > ``MLFLOW_TRACKING_URI`` > embedded SQLite.

    The result is absolute (``absolute_tracking_uri``); call it on the driver, in the user's working directory.
    """
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI", "")):
        candidate = (candidate or "").strip()
        if candidate:
            return absolute_tracking_uri(candidate)
    return embedded_tracking_uri(output_dir)


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with any local path in it made absolute against this process's working directory.

    ``sqlite:///rel/x.db`` -> ``sqlite:////abs/rel/x.db`` (query kept), ``file:rel`` -> ``file:///abs/rel``. A bare
    path becomes a SQLite URI (a ``.db`` file, or ``mlflow.db`` inside a directory), since MLflow would otherwise
    treat it as a refused ``file:`` store. Server URIs, ``off`` and an empty value are returned as they are.
    """
    uri = uri.strip()
    if not uri or tracking_off(uri):
        return uri
    if uri.startswith("sqlite:///"):
        db = sqlite_db_path(uri)
        if db is None:  # sqlite:///:memory: and the like
            return uri
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return f"sqlite:///{db.as_posix()}" + (f"?{query}" if query else "")
    if uri.startswith("file:") and not uri.startswith(("file:/", "file:~")):  # file:rel/dir
        return Path(unquote(uri[len("file:") :])).resolve().as_uri()
    if "://" in uri or uri.startswith(("file:", "databricks", "uc:")):
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix != ".db":
        path = path / EMBEDDED_DB_NAME
    return f"sqlite:///{path.as_posix()}"


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths resolve against the cwd, as SQLAlchemy does)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    raw = unquote(tracking_uri[len(prefix) :].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    return Path(raw).resolve()


def local_artifact_location(tracking_uri: str) -> str | None:
    """``file:`` URI of ``mlartifacts/`` beside a SQLite store; None for other stores (the server decides).

    Without this, a SQLite-backed experiment gets MLflow's default ``./mlruns`` relative to whatever the cwd of
    the creating process was (a Ray worker's temp dir), and artifacts end up scattered or lost.
    """
    db = sqlite_db_path(tracking_uri)
    return (db.parent / EMBEDDED_ARTIFACT_DIR).as_uri() if db else None


# --------------------------------------------------------------------------------------------------------------------
# Value shaping
# --------------------------------------------------------------------------------------------------------------------
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


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def driver_tags() -> dict[str, str]:
    """Who owns a run while it is RUNNING: this host and process."""
    import socket

    return {DRIVER_HOST_TAG: socket.gethostname(), DRIVER_PID_TAG: str(os.getpid())}


def driver_is_gone(tags: Mapping[str, str]) -> bool:
    """True when a RUNNING run's driver is known dead (same host, process gone) or unknown (no owner tags, e.g.
    written by an older version). A run owned by another host is left alone: its driver may still be alive."""
    import socket

    host, pid = tags.get(DRIVER_HOST_TAG), tags.get(DRIVER_PID_TAG)
    if host is None or pid is None or not pid.isdigit():
        return True
    if host != socket.gethostname():
        return False
    return int(pid) != os.getpid() and not _process_alive(int(pid))


# --------------------------------------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------------------------------------
def git_commit(project_dir: str | Path = PROJECT_DIR) -> str | None:
    """HEAD of the project checkout, or None (no git, no repo: e.g. a Ray working_dir upload excludes .git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def _probe_http(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast on an unreachable server: MLflow's own client would retry for minutes before saying so."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (502, 503, 504):  # a proxy or load balancer answering for a server that is down
            raise TrackingError(f"MLflow tracking server {uri!r} is unavailable: HTTP {exc.code}") from exc
        return  # something answered (auth, path prefix, ...): reachable; MLflow reports any real problem
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri!r} is unreachable: {reason}") from exc


# --------------------------------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------------------------------
def _series(history: list[Mapping[str, Any]], keys: tuple[str, ...]) -> tuple[str | None, list[float], list[float]]:
    key = next((k for k in keys if any(k in row for row in history)), None)
    xs: list[float] = []
    ys: list[float] = []
    if key is None:
        return None, xs, ys
    for i, row in enumerate(history):
        y = _as_float(row.get(key))
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


# --------------------------------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------------------------------
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
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self._guard("log_params", lambda c=chunk: self._client.log_batch(self.run_id, params=c))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Add or overwrite tags (e.g. results known only at the end); None values are skipped."""
        from mlflow.entities import RunTag

        items = [RunTag(clean_key(k), truncate(str(v), MAX_TAG_VALUE_LENGTH)) for k, v in tags.items() if v is not None]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
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
            number = _as_float(value)
            if number is not None:
                items.append(Metric(clean_key(key), number, now, int(step)))
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
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
            _probe_http(self.tracking_uri)

    def _get_or_create_experiment(self, client: Any, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(
                    name, artifact_location=self.artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            except MlflowException:
                exp = client.get_experiment_by_name(name)  # another process created it first
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            logger.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind chosen by the user in the UI is kept
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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


# --------------------------------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------------------------------
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
