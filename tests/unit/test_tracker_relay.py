"""The driver-node MLflow relay (``driver.tracker_relay``) against a real SQLite store, without Ray: an actor handle
whose calls run in this process stands in for the actor, so what a relayed process logs is what a reader sees."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from higgs_train.driver.tracker_relay import RelayedTracker, TrackerRelay
from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.tracker import RunTracker

EXPERIMENT = "unit-relay"


class Direct:
    """An actor handle whose ``method.remote(...)`` runs here (with ``ray.get`` the identity, its result is the
    result)."""

    def __init__(self, target: object) -> None:
        self.target = target

    def __getattr__(self, name: str):
        return type("Method", (), {"remote": staticmethod(getattr(self.target, name))})


@pytest.fixture(autouse=True)
def _no_ray_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(ray, "get", lambda value: value)


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_rank_zero_logs_through_the_relay_as_it_would_log_itself(tmp_path: Path) -> None:
    """The relay receives metrics and file bytes and lays artifacts out as a direct ``log_artifact`` would: a
    folder's contents under the artifact path, a file under its name."""
    samples = tmp_path / "scratch" / "samples"
    (samples / "sub").mkdir(parents=True)
    (samples / "row0.wav").write_bytes(b"RIFF")
    (samples / "sub" / "codes.json").write_text("{}")
    rows = tmp_path / "scratch" / "eval_rows.json"
    rows.write_text("[]")
    with RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "job") as driver:
        tracker = RelayedTracker(Direct(TrackerRelay(driver.tracking_uri)), driver.run_id)
        tracker.log_metrics({"train/total_loss": 1.5, "note": "text"}, step=3)
        tracker.log_artifact(samples, "samples/step_0000003")
        tracker.log_artifact(rows, "eval/step_0000003")
        assert tracker.last_logged_step("train/total_loss") == 3
    client = MlflowClient(driver.tracking_uri)
    assert [m.value for m in client.get_metric_history(driver.run_id, "train/total_loss")] == [1.5]
    assert _artifact_paths(client, driver.run_id) == {
        "samples/step_0000003/row0.wav",
        "samples/step_0000003/sub/codes.json",
        "eval/step_0000003/eval_rows.json",
    }


def test_a_trial_creates_logs_and_closes_its_child_run_through_the_relay(tmp_path: Path) -> None:
    """A sweep's trial (``tune.trial.run_trial``) opens no store: its child run is created under the parent, logged
    into and closed through the relay, and a failing trial leaves the same FAILED run, error tag and error.txt as a
    run closed by ``RunTracker``'s own ``with`` block."""
    with RunTracker.for_output_dir(tmp_path / "sweep").start(EXPERIMENT, "sweep") as parent:
        relay = TrackerRelay(parent.tracking_uri)
        with RelayedTracker.start(
            Direct(relay),
            EXPERIMENT,
            "r8-good",
            params={"lora_r": 8},
            tags={"tune_trial_id": "t1"},
            parent_run_id=parent.run_id,
        ) as good:
            good.log_metrics({"train/total_loss": 2.0}, step=1)
            good.log_metrics({"train/total_loss": 1.0, "val_loss": 1.2}, step=2)
        bad = RelayedTracker.start(Direct(relay), EXPERIMENT, "r16-bad", parent_run_id=parent.run_id)
        with pytest.raises(ValueError, match="diverged"), bad:
            bad.log_metrics({"train/total_loss": float("nan")}, step=1)
            raise ValueError("loss diverged")
        # Ray restarted the relay: a fresh one attaches to the run by its id and keeps logging into it.
        RelayedTracker(Direct(TrackerRelay(parent.tracking_uri)), good.run_id).log_metrics({"late": 1.0}, step=2)
    runs = {r["run_id"]: r for r in find_runs(parent.tracking_uri, EXPERIMENT)}
    assert runs[parent.run_id]["parent_run_id"] is None
    assert {runs[good.run_id]["parent_run_id"], runs[bad.run_id]["parent_run_id"]} == {parent.run_id}
    assert runs[good.run_id]["status"] == "FINISHED" and runs[bad.run_id]["status"] == "FAILED"
    assert runs[good.run_id]["params"]["lora_r"] == "8" and runs[good.run_id]["tags"]["tune_trial_id"] == "t1"
    assert runs[good.run_id]["metrics"] == {"train/total_loss": 1.0, "val_loss": 1.2, "late": 1.0}
    assert runs[bad.run_id]["tags"]["error"] == "ValueError: loss diverged"
    client = MlflowClient(parent.tracking_uri)
    assert "error.txt" in _artifact_paths(client, bad.run_id)
    assert "loss diverged" in Path(client.download_artifacts(bad.run_id, "error.txt", str(tmp_path))).read_text()
    # What the sweep reads back as evidence: every metric batch each trial sent went through this relay.
    assert relay.logged_batches() == {good.run_id: 2, bad.run_id: 1}
