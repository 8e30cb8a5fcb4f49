"""RunTracker against a real MLflow SQLite store in tmp_path (no MLflow mocks): what a job logs is what a reader sees."""

from __future__ import annotations

import logging
import math
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from higgs_train.tracking.loss_curve import plot_loss_curve
from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.store import (
    TrackingError,
    embedded_tracking_uri,
    local_artifact_location,
    resolve_tracking_uri,
)
from higgs_train.tracking.tracker import RunTracker
from higgs_train.tracking.values import MAX_PARAM_VALUE_LENGTH, flatten_params

EXPERIMENT = "unit-tracking"


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _history(n: int = 6) -> list[dict]:
    rows = []
    for step in range(1, n + 1):
        row = {
            "step": step,
            "train/total_loss": 4.0 / step,
            "train/text_loss": 1.0 / step,
            "train/audio_loss": 3.0 / step,
        }
        if step % 2 == 0:
            row["val_loss"] = 4.5 / step
        rows.append(row)
    return rows


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


# --- URIs -------------------------------------------------------------------------------------------------------------
def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    embedded = resolve_tracking_uri(out)
    assert embedded == embedded_tracking_uri(out) == f"sqlite:///{(tmp_path.resolve() / 'mlflow.db').as_posix()}"
    assert embedded.startswith("sqlite:////")  # absolute path: independent of the worker's cwd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-server:5000")
    assert resolve_tracking_uri(out) == "http://env-server:5000"
    assert resolve_tracking_uri(out, "http://explicit:5000") == "http://explicit:5000"
    assert resolve_tracking_uri(out, "") == "http://env-server:5000"

    # A bare path becomes a SQLite store rather than MLflow's refused file store.
    assert resolve_tracking_uri(out, str(tmp_path / "x.db")) == f"sqlite:///{(tmp_path / 'x.db').resolve().as_posix()}"
    assert resolve_tracking_uri(out, str(tmp_path)).endswith("/mlflow.db")


def test_runs_of_one_project_share_one_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """outputs/default, outputs/my-voice and a sweep's outputs/sweep meet in outputs/mlflow.db, whatever the form
    of --output_dir (relative from the project folder, absolute as `ray job submit` needs it)."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{(tmp_path.resolve() / 'outputs' / 'mlflow.db').as_posix()}"
    for output_dir in ("outputs/default", "outputs/my-voice/", str(tmp_path / "outputs" / "sweep"), "./outputs/x"):
        assert resolve_tracking_uri(output_dir) == store, output_dir


def test_relative_uris_are_made_absolute_on_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative store resolved by a Ray worker lands in its session folder (a second, empty database): the
    driver hands on only absolute URIs, from the flag or from MLFLOW_TRACKING_URI."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve().as_posix()
    assert resolve_tracking_uri("o", "sqlite:///outputs/A/mlflow.db") == f"sqlite:///{root}/outputs/A/mlflow.db"
    assert resolve_tracking_uri("o", "sqlite:///a.db?timeout=30") == f"sqlite:///{root}/a.db?timeout=30"
    assert resolve_tracking_uri("o", "outputs/A") == f"sqlite:///{root}/outputs/A/mlflow.db"
    assert resolve_tracking_uri("o", "file:mlruns") == f"file://{root}/mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("o") == f"sqlite:///{root}/env.db"
    for kept in ("sqlite:////abs/x.db", "http://server:5000", "databricks", "off", "sqlite:///:memory:"):
        assert resolve_tracking_uri("o", kept) == kept
    # The driver's config carries the absolute URI too (resolved_config.yaml, trial configs, worker specs).
    from higgs_train.config import TrainingConfig
    from higgs_train.paths import resolve_user_paths

    config = resolve_user_paths(TrainingConfig(mlflow_tracking_uri="sqlite:///outputs/A/mlflow.db"))
    assert config.mlflow_tracking_uri == f"sqlite:///{root}/outputs/A/mlflow.db"
    assert resolve_user_paths(TrainingConfig()).mlflow_tracking_uri == ""


def test_artifact_location_is_beside_sqlite_db(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert local_artifact_location(embedded_tracking_uri(out)) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert local_artifact_location("http://server:5000") is None


def test_flatten_params_stringifies_and_truncates() -> None:
    flat = flatten_params({"a": [1, 2], "b": {"y": 1, "x": 2}, "c": None, "d": 0.5, "bad:key!": 1, "long": "z" * 7000})
    assert flat["a"] == "[1, 2]"
    assert flat["b"] == '{"x": 2, "y": 1}'
    assert flat["c"] == "None" and flat["d"] == "0.5"
    assert "bad_key_" in flat
    assert len(flat["long"]) == MAX_PARAM_VALUE_LENGTH and flat["long"].endswith("chars]")
    assert "truncated" in flat["long"]


# --- a full run -----------------------------------------------------------------------------------------------------
def test_run_logs_params_metrics_artifacts_and_curve(tmp_path: Path) -> None:
    out = tmp_path / "job"
    long_list = [f"layer.{i}.self_attn.q_proj" for i in range(400)]  # JSON > 6000 chars
    params = {"lora_r": 16, "learning_rate": 2e-4, "lora_target_modules": long_list, "use_gpu": False}
    params.update({f"extra_{i}": i for i in range(150)})  # > 100 params: several batches
    report = tmp_path / "report.json"
    report.write_text('{"ok": true}')

    tracker = RunTracker.for_output_dir(out)
    with tracker.start(EXPERIMENT, "run-a", params=params, tags={"model_path": "embedded", "data_key": "abc123"}):
        for row in _history():
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        tracker.log_metrics({"train/total_loss": None, "lr": math.nan, "note": "text"}, step=7)
        tracker.log_artifact(report, "reports")
        tracker.log_dict({"a": 1}, "resolved_config")
        tracker.log_text("hello", "notes/hello.txt")
        png = tracker.log_loss_curve(_history(), out / "loss_curve.png")

    assert png is not None and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tracker.tracking_uri == embedded_tracking_uri(out)
    assert (tmp_path / "mlflow.db").is_file()

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run-a"
    assert run.info.artifact_uri.startswith((tmp_path.resolve() / "mlartifacts").as_uri())
    assert run.data.params["lora_r"] == "16"
    assert len(run.data.params["lora_target_modules"]) == MAX_PARAM_VALUE_LENGTH
    assert "truncated" in run.data.params["lora_target_modules"]
    assert run.data.params["extra_149"] == "149"
    assert run.data.tags["model_path"] == "embedded" and run.data.tags["data_key"] == "abc123"
    assert len(client.get_metric_history(tracker.run_id, "train/total_loss")) == 6  # the None at step 7 skipped
    assert len(client.get_metric_history(tracker.run_id, "val_loss")) == 3
    assert math.isnan(client.get_metric_history(tracker.run_id, "lr")[0].value)
    assert "note" not in run.data.metrics
    assert _artifact_paths(client, tracker.run_id) == {
        "reports/report.json",
        "resolved_config.json",
        "notes/hello.txt",
        "plots/loss_curve.png",
    }
    assert (tmp_path / "mlartifacts").is_dir()

    (listed,) = find_runs(tracker.tracking_uri, EXPERIMENT)
    assert listed["run_id"] == tracker.run_id and listed["status"] == "FINISHED"
    assert listed["metrics"]["train/total_loss"] == pytest.approx(4.0 / 6)
    assert listed["params"]["use_gpu"] == "False"
    assert find_runs(tracker.tracking_uri, "no-such-experiment") == []


def test_child_run_records_parent(tmp_path: Path) -> None:
    with (
        RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "sweep") as parent,
        RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "trial", parent_run_id=parent.run_id) as child,
    ):
        pass
    runs = {r["run_name"]: r for r in find_runs(parent.tracking_uri, EXPERIMENT)}
    assert runs["trial"]["parent_run_id"] == parent.run_id == runs["sweep"]["run_id"]
    assert runs["trial"]["run_id"] == child.run_id


def test_exception_inside_context_marks_run_failed(tmp_path: Path) -> None:
    tracker = RunTracker.for_output_dir(tmp_path / "out")
    with pytest.raises(RuntimeError, match="boom"), tracker.start(EXPERIMENT, "crash"):
        tracker.log_metrics({"train/total_loss": 1.0}, step=1)
        raise RuntimeError("boom")
    run = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert "RuntimeError: boom" in run.data.tags["error"]
    assert tracker.status == "FAILED"
    tracker.end("FINISHED")  # idempotent: a late end() does not overwrite the recorded outcome
    assert MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


def test_keyboard_interrupt_marks_run_killed(tmp_path: Path) -> None:
    tracker = RunTracker.for_output_dir(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt), tracker.start(EXPERIMENT, "ctrl-c"):
        raise KeyboardInterrupt
    assert MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id).info.status == "KILLED"


# --- ranks ----------------------------------------------------------------------------------------------------------
def test_non_zero_rank_logs_nothing(tmp_path: Path) -> None:
    for tracker in (
        RunTracker.for_output_dir(tmp_path / "out", rank=1),
        RunTracker(embedded_tracking_uri(tmp_path / "out"), rank=3),
    ):
        with tracker.start(EXPERIMENT, "worker", params={"a": 1}):
            tracker.log_metrics({"train/total_loss": 1.0}, step=1)
            tracker.log_text("x", "x.txt")
            assert tracker.log_loss_curve(_history(), tmp_path / "curve.png") is None
        assert tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "curve.png").exists()
    disabled = RunTracker.disabled().start(EXPERIMENT, "off")
    disabled.end("FAILED")
    assert disabled.run_id is None and not disabled.active


# --- failures -------------------------------------------------------------------------------------------------------
def test_bad_uri_at_start_raises_naming_the_uri(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9"):
        RunTracker("http://127.0.0.1:9").start(EXPERIMENT, "x")  # discard port: connection refused
    with pytest.raises(TrackingError, match="bogus://nowhere"):
        RunTracker("bogus://nowhere").start(EXPERIMENT, "x")
    file_uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(TrackingError, match=file_uri):
        RunTracker(file_uri).start(EXPERIMENT, "x")


def test_failure_after_start_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = RunTracker.for_output_dir(tmp_path / "out", rank=0)
    tracker.max_consecutive_failures = 3
    tracker.start(EXPERIMENT, "flaky")
    tracker.log_metrics({"train/total_loss": 1.0}, step=1)
    # Break metric writes under the live run (as a full disk or a server error would), leaving the rest intact.
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("CREATE TRIGGER broken BEFORE INSERT ON metrics BEGIN SELECT RAISE(ABORT, 'simulated'); END")
    with caplog.at_level(logging.WARNING, logger="higgs_train.tracking.tracker"):
        tracker.log_metrics({"train/total_loss": 0.5}, step=2)  # must not raise
        assert tracker.active
        tracker.log_metrics({"train/total_loss": 0.4}, step=3)
        tracker.log_metrics({"train/total_loss": 0.3}, step=4)
    assert sum("log_metrics failed" in r.getMessage() for r in caplog.records) == 3
    assert any("switched off" in r.getMessage() for r in caplog.records)
    assert not tracker.active
    tracker.log_metrics({"train/total_loss": 0.2}, step=5)  # switched off: silently skipped
    tracker.end("FINISHED")  # still attempted after switch-off, so the run is not left RUNNING
    run = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train/total_loss"] == 1.0  # only the pre-failure point landed


def test_missing_artifact_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "missing") as tracker:
        with caplog.at_level(logging.WARNING, logger="higgs_train.tracking.tracker"):
            tracker.log_artifact(tmp_path / "does-not-exist.bin")
        assert any("log_artifact failed" in r.getMessage() for r in caplog.records)
        tracker.log_metrics({"x": 1.0}, step=1)  # a success resets the failure count
    assert MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id).info.status == "FINISHED"


# --- plotting -------------------------------------------------------------------------------------------------------
def test_plot_loss_curve_handles_partial_and_empty_history(tmp_path: Path) -> None:
    assert plot_loss_curve([{"step": 1, "lr": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    png = plot_loss_curve([{"loss": 2.0}, {"loss": math.nan}, {"loss": 1.0, "val/loss": 1.5}], tmp_path / "p.png")
    assert png is not None and png.is_file()


# --- a job whose metrics did not land fails; tracking off by choice does not ----------------------------------------
def test_attach_to_a_run_the_store_lacks_fails_naming_the_store(tmp_path: Path) -> None:
    """What a worker met with a relative URI resolved in its session folder (another, empty database): 'Run not
    found' at every step. Here the store lacks the run id, the same answer without creating a second database."""
    with RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "job") as driver:
        RunTracker(driver.tracking_uri).attach(driver.run_id).log_metrics({"train/total_loss": 1.0}, step=1)
        missing = "0" * 32
        with pytest.raises(TrackingError, match=rf"{missing} is not in the tracking store .*{tmp_path.name}"):
            RunTracker(driver.tracking_uri).attach(missing)


def test_check_logged_fails_when_the_last_steps_are_missing(tmp_path: Path) -> None:
    with RunTracker.for_output_dir(tmp_path / "out").start(EXPERIMENT, "job") as tracker:
        for step in (1, 2, 3):
            tracker.log_metrics({"train/total_loss": 1.0 / step}, step=step)
        tracker.check_logged("train/total_loss", 3)
        with pytest.raises(TrackingError, match=r"train/total_loss up to step 3 of 4.*--mlflow_tracking_uri off"):
            tracker.check_logged("train/total_loss", 4)
        with pytest.raises(TrackingError, match="up to step 0 of 2"):
            tracker.check_logged("train/audio_loss", 2)


def test_tracking_off_logs_and_checks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = RunTracker(resolve_tracking_uri(tmp_path / "out", "off")).start(EXPERIMENT, "untracked")
    tracker.log_metrics({"train/total_loss": 1.0}, step=1)
    tracker.check_logged("train/total_loss", 30)  # the user chose no tracking: nothing to miss
    assert tracker.run_id is None and not list(tmp_path.rglob("*.db")) and not (tmp_path / "off").exists()


def test_a_workers_tracking_error_reaches_the_console_as_its_one_line() -> None:
    """Ray wraps a worker's exception (WorkerGroupError -> worker_failures -> RayTaskError cause); the driver
    shows the TrackingError's own message, not Ray's nested tracebacks."""
    from higgs_train.tracking.store import tracking_error_in

    class WorkerGroupError(RuntimeError):
        def __init__(self, message: str, worker_failures: dict) -> None:
            super().__init__(message)
            self.worker_failures = worker_failures

    try:
        try:
            raise TrackingError("MLflow run abc is not in the tracking store 'sqlite:///x.db'")
        except TrackingError as cause:
            raise RuntimeError("ray::RayTrainWorker.run_train_fn() failed") from cause
    except RuntimeError as task_error:
        wrapped = WorkerGroupError(
            "Training failed due to worker errors:\n[Rank 0 Error Snippet]: ...", {0: task_error}
        )
    found = tracking_error_in(wrapped)
    assert (
        isinstance(found, TrackingError)
        and str(found) == "MLflow run abc is not in the tracking store 'sqlite:///x.db'"
    )
    assert tracking_error_in(RuntimeError("training failed: out of memory")) is None
    # Only the text survived (an exception Ray could not rebuild): the message is still found in it.
    text_only = RuntimeError("...\nhiggs_train.tracking.store.TrackingError: MLflow run abc is not in the store\n")
    assert str(tracking_error_in(text_only)) == "MLflow run abc is not in the store"
