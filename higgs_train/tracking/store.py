"""Which MLflow store a job writes to: the URI rules (explicit > ``MLFLOW_TRACKING_URI`` > the project's embedded
SQLite store), every local path made absolute before Ray, and the one error a store that cannot be used raises.
See the package docstring for why the default store sits beside the output dir."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

EMBEDDED_DB_NAME = "mlflow.db"
EMBEDDED_ARTIFACT_DIR = "mlartifacts"
TRACKING_OFF = "off"  # --mlflow_tracking_uri off


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


def project_store_dir(output_dir: str | Path) -> Path:
    """Where the project's default store lives: the folder holding the output dir (see the package docstring)."""
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
