"""MLflow logging done on the driver's node, for processes that may run anywhere in the cluster.

Why: the default tracking store is an SQLite file next to ``--output_dir`` on the driver's disk, which a training
worker (or a Tune trial function) on another node cannot open. A ``TrackerRelay`` actor pinned to the driver's node
holds the runs' trackers; the others log through a ``RelayedTracker`` (metrics, tags, and artifact files sent as
bytes), so a cluster needs no shared disk for MLflow.

One relay serves every run of a job: the training driver's run (rank 0 logs into it), or a sweep's child runs (each
trial function creates and closes its own through it, and its rank 0 logs into it). Every call names its run, so a
relay that Ray restarted simply attaches again; only the closing of a run it created before the restart is left to
its creator's fallback (the sweep driver ends the child runs still RUNNING, ``tune.results.close_child_runs``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs_train.ray_session import on_this_node
from higgs_train.tracking.tracker import RunTracker
from higgs_train.training.context import as_float_metrics


class TrackerRelay:
    """The runs' trackers, held in a Ray actor on the driver's node (``start_tracker_relay``)."""

    def __init__(self, tracking_uri: str) -> None:
        self._tracking_uri = tracking_uri
        self._runs: dict[str, RunTracker] = {}
        self._logged: dict[str, int] = {}

    def _run(self, run_id: str) -> RunTracker:
        """The tracker of ``run_id``: the one this relay created, else attached (raises ``TrackingError``)."""
        if run_id not in self._runs:
            self._runs[run_id] = RunTracker(self._tracking_uri).attach(run_id)
        return self._runs[run_id]

    def start_run(
        self,
        experiment: str,
        run_name: str,
        params: dict[str, Any] | None,
        tags: dict[str, Any] | None,
        parent_run_id: str | None,
    ) -> str:
        """Create a run (``RunTracker.start``) that this relay owns and may end; returns its id."""
        tracker = RunTracker(self._tracking_uri).start(
            experiment, run_name, params=params, tags=tags, parent_run_id=parent_run_id
        )
        self._runs[tracker.run_id] = tracker
        self._logged[tracker.run_id] = 0
        return tracker.run_id

    def end_run(self, run_id: str, status: str) -> None:
        self._run(run_id).end(status)

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        self._run(run_id).log_metrics(metrics, step)
        self._logged[run_id] = self._logged.get(run_id, 0) + 1

    def last_logged_step(self, run_id: str, key: str) -> int:
        return self._run(run_id).last_logged_step(key)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._run(run_id).set_tags(tags)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self._run(run_id).log_text(text, name)

    def log_files(self, run_id: str, name: str, files: dict[str, bytes], is_dir: bool, artifact_path: str | None):
        """Log what the caller had at ``name`` (a file, or a folder's ``files`` by relative path) under
        ``artifact_path``."""
        with tempfile.TemporaryDirectory(prefix="higgs-relay-") as tmp:
            root = Path(tmp) / name
            for relative, data in files.items():
                target = root / relative if is_dir else root
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self._run(run_id).log_artifact(root, artifact_path)

    def logged_batches(self) -> dict[str, int]:
        """``log_metrics`` calls served per run since this relay (re)started: the evidence that a run's metrics came
        through it (the runs it created count from 0)."""
        return dict(self._logged)


def start_tracker_relay(tracking_uri: str, run_id: str | None) -> Any:
    """A ``TrackerRelay`` actor pinned to this (the driver's) node, or None when the job is not tracked (no
    ``run_id``: the job's own run, or a sweep's parent run)."""
    if not run_id:
        return None
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, **on_this_node())(TrackerRelay)
    return actor.remote(tracking_uri)


@dataclass(frozen=True)
class RelayedTracker:
    """One run of a ``TrackerRelay``, with the part of ``RunTracker``'s interface its users call: rank 0's logging
    (``RayWorkerContext.current``) and a trial function's ``with`` block around its child run."""

    relay: Any
    run_id: str

    @classmethod
    def start(
        cls,
        relay: Any,
        experiment: str,
        run_name: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> RelayedTracker:
        """Create the run on the relay's side (``RunTracker.start``) and log into it."""
        import ray

        return cls(relay, ray.get(relay.start_run.remote(experiment, run_name, params, tags, parent_run_id)))

    def end(self, status: str = "FINISHED") -> None:
        import ray

        ray.get(self.relay.end_run.remote(self.run_id, status))

    def __enter__(self) -> RelayedTracker:
        return self

    # The same closing rule as a run logged directly: FINISHED, or the error tag and error.txt then FAILED (KILLED
    # on an interrupt). It calls only ``end``, ``set_tags`` and ``log_text``, which go through the relay here.
    __exit__ = RunTracker.__exit__

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        import ray

        ray.get(self.relay.log_metrics.remote(self.run_id, as_float_metrics(metrics), step))

    def last_logged_step(self, key: str) -> int:
        import ray

        return ray.get(self.relay.last_logged_step.remote(self.run_id, key))

    def set_tags(self, tags: dict[str, Any]) -> None:
        import ray

        ray.get(self.relay.set_tags.remote(self.run_id, dict(tags)))

    def log_text(self, text: str, name: str) -> None:
        import ray

        ray.get(self.relay.log_text.remote(self.run_id, text, name))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import ray

        path = Path(path)
        if path.is_dir():
            files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
        else:
            files = {path.name: path.read_bytes()}
        ray.get(self.relay.log_files.remote(self.run_id, path.name, files, path.is_dir(), artifact_path))
