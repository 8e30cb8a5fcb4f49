"""One training run = one MLflow run, each metric once, an experiment that opens in the model-training view, and no
run left RUNNING by a killed driver (issue 10 item 10, issue 11 item 9). Real MLflow SQLite stores, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from higgs_train.tracking.chart_view import VIEW_NAME, VIEW_TAG, saved_view_tag, view_state
from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.store import embedded_tracking_uri
from higgs_train.tracking.tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, RunTracker
from higgs_train.tracking.values import metrics_to_log
from higgs_train.tune.trial import readable_trial_name

EXPERIMENT = "unit-runs"


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_each_metric_once_and_step_epoch_are_not_metrics(tmp_path: Path) -> None:
    step_metrics = {"step": 3, "epoch": 1, "train/total_loss": 2.0, "total_loss": 2.0, "val_loss": 1.5}
    assert metrics_to_log(step_metrics) == {"train/total_loss": 2.0, "val_loss": 1.5}
    uri = embedded_tracking_uri(tmp_path / "out")
    with RunTracker(uri).start(EXPERIMENT, "job") as tracker:
        tracker.log_metrics(step_metrics, step=3)
    (run,) = find_runs(uri, EXPERIMENT)
    assert set(run["metrics"]) == {"train/total_loss", "val_loss"}


def test_experiment_opens_in_the_model_training_view(tmp_path: Path) -> None:
    uri = embedded_tracking_uri(tmp_path / "out")
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())  # made by an earlier version
    for name in (EXPERIMENT, "older"):
        with RunTracker(uri).start(name, "job"):
            pass
        tags = client.get_experiment_by_name(name).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
        view = json.loads(tags[VIEW_TAG])  # the "losses first" chart view (issue 19), as MLflow's UI saves views
        assert view["name"] == VIEW_NAME and json.loads(view["state"]) == view_state()

    # A view the user edited in the UI (same key, new state) is theirs: the next job leaves it alone.
    experiment_id = client.get_experiment_by_name("older").experiment_id
    client.set_experiment_tag(experiment_id, VIEW_TAG, '{"name": "mine"}')
    with RunTracker(uri).start("older", "job-2"):
        pass
    assert client.get_experiment(experiment_id).tags[VIEW_TAG] == '{"name": "mine"}'


def test_the_saved_view_puts_the_loss_charts_first_and_keeps_the_rest() -> None:
    state = view_state()
    sections = {s["uuid"]: s["name"] for s in state["compareRunSections"]}
    assert list(sections.values())[:2] == ["train", "Model metrics"] and state["isAccordionReordered"]
    assert all(s["isReordered"] for s in state["compareRunSections"])  # MLflow appends other charts, after these
    charts = [(sections[c["metricSectionId"]], c["metricKey"]) for c in state["compareRunCharts"]]
    assert charts[:3] == [("train", "train/total_loss"), ("train", "train/text_loss"), ("train", "train/audio_loss")]
    assert json.loads(saved_view_tag(5)[1])["createdAt"] == 5


def _run_killed_driver(uri: str, run_name: str) -> None:
    """A driver that opens the run and dies by SIGKILL: no ``__exit__``, no ``set_terminated``."""
    code = (
        "import os, signal\n"
        "from higgs_train.tracking.tracker import RunTracker\n"
        f"RunTracker({uri!r}).start_or_continue({EXPERIMENT!r}, {run_name!r})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == -9


def test_a_run_left_running_by_a_killed_driver_is_closed_on_the_next_start(tmp_path: Path) -> None:
    uri = embedded_tracking_uri(tmp_path / "out")
    _run_killed_driver(uri, "voice")
    (stuck,) = find_runs(uri, EXPERIMENT)
    assert stuck["status"] == "RUNNING"

    with RunTracker(uri).start_or_continue(EXPERIMENT, "voice", resuming=False) as tracker:
        pass
    runs = {r["run_id"]: r for r in find_runs(uri, EXPERIMENT)}
    assert runs[stuck["run_id"]]["status"] == "KILLED"
    assert runs[tracker.run_id]["status"] == "FINISHED"


def test_a_resumed_job_continues_its_mlflow_run(tmp_path: Path) -> None:
    uri = embedded_tracking_uri(tmp_path / "out")
    first = RunTracker(uri)
    # interrupted (Ctrl-C): closed as KILLED
    with pytest.raises(KeyboardInterrupt), first.start_or_continue(EXPERIMENT, "voice", params={"lora_r": 16}):
        first.log_metrics({"train/total_loss": 3.0}, step=1)
        raise KeyboardInterrupt
    with RunTracker(uri).start_or_continue(
        EXPERIMENT, "voice", params={"lora_r": 16}, tags={"resumed_from": "ckpt"}, resuming=True
    ) as second:
        second.log_metrics({"train/total_loss": 2.0}, step=2)
    (run,) = find_runs(uri, EXPERIMENT)
    assert second.run_id == first.run_id == run["run_id"]
    assert run["status"] == "FINISHED" and run["tags"]["resumed_from"] == "ckpt"
    history = MlflowClient(tracking_uri=uri).get_metric_history(run["run_id"], "train/total_loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0)]

    # A run killed by SIGKILL is continued as well, and another run name is never touched.
    _run_killed_driver(uri, "other")
    _run_killed_driver(uri, "voice2")
    with RunTracker(uri).start_or_continue(EXPERIMENT, "voice2", resuming=True) as third:
        pass
    runs = {r["run_name"]: r for r in find_runs(uri, EXPERIMENT)}
    assert runs["voice2"]["run_id"] == third.run_id and runs["voice2"]["status"] == "FINISHED"
    assert runs["other"]["status"] == "RUNNING"
    assert len(find_runs(uri, EXPERIMENT)) == 3


def test_a_live_driver_run_is_left_alone(tmp_path: Path) -> None:
    uri = embedded_tracking_uri(tmp_path / "out")
    live = RunTracker(uri).start_or_continue(EXPERIMENT, "shared")  # this process: alive
    with RunTracker(uri).start_or_continue(EXPERIMENT, "shared"):
        pass
    assert {r["run_id"]: r["status"] for r in find_runs(uri, EXPERIMENT)}[live.run_id] == "RUNNING"
    live.end("FINISHED")


def test_trial_runs_get_readable_names() -> None:
    from higgs_train.config import TrainingConfig

    config = TrainingConfig(lora_r=16, lora_alpha=32, learning_rate=2e-4, audio_loss_weight=1.5)
    params = {"lora_r": 16, "learning_rate": 2e-4, "audio_loss_weight": 1.5}
    assert readable_trial_name(config, params, "f3a1c_00002") == "r16-a32-lr2e-4-audio1.5-00002"


def test_a_fresh_browser_is_sent_to_the_saved_view_and_one_with_its_own_layout_is_not() -> None:
    """The boot script of ``mlflow ui --app-name higgs-train`` (the browser test runs it for real): the saved view's
    route only while the browser keeps no layout of its own for the experiment."""
    from higgs_train.mlflow_ui import ProjectExperiment, boot_script, own_layout_key

    with_view = boot_script(ProjectExperiment("7", has_saved_view=True))
    plain = "#/experiments/7/runs?compareRunsMode=CHART"
    assert f'localStorage.getItem({json.dumps(own_layout_key("7"))})===null?"{plain}&viewStateShareKey=' in with_view
    assert f':"{plain}")' in with_view  # a browser with its own layout of experiment 7 gets the plain route
    assert "viewStateShareKey" not in boot_script(ProjectExperiment("7", has_saved_view=False))
    assert '"#/experiments"' in boot_script(None)
