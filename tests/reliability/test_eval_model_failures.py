"""One model that cannot be evaluated never ends an evaluation (issue 20, item 4).

The finding: ``evaluate.py --adapter truncated --adapter good --base`` ended rc=1 after 30 s with an
``ActorDiedError`` traceback and no ``eval.json``: the truncated adapter raised in the actor's constructor, which
killed the actor, and the driver's ``ray.get`` raised. Now the model loads inside ``ModelEvaluator`` without
raising, ``run`` returns the reason in a ``ModelRun``, the driver turns an actor that dies anyway into a failed
``ModelRun`` (``collect_model_run``), and the report lists each failed model with its one-line reason.

Here without Ray (the real ``ray_jobs/evaluate.py`` run with a truncated adapter is in
tests/integration/test_evaluation.py): the evaluation job runs with its per-model actor loop replaced by the same
runner calls in this process, so the real load failures (a truncated adapter, an adapter for another base model)
and a simulated actor death go through the real job, report and command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from higgs_train.adapter import apply_lora, save_adapter
from higgs_train.commands.evaluate import main as evaluate_main
from higgs_train.config import TrainingConfig
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.evaluation import job
from higgs_train.evaluation.runner import ModelEvaluator, ModelRun, load_eval_rows
from higgs_train.evaluation.suite import AUDIO_CHECK_FLAGS, EvalSettings, check_audio, summarize
from higgs_train.generation import SamplingSettings
from higgs_train.model_loading import load_model, resolve_paths

NO_METRIC_MODELS = EvalSettings(sim=False, asr=False, dnsmos=False)  # the signal checks still run


def _adapter(model_path: str, out: Path, config: TrainingConfig) -> Path:
    model = apply_lora(load_model(model_path), 8, 16, 0.0, config.lora_target_modules)
    save_adapter(model, out)
    config.save(out / "training_config.yaml")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_failures")
    data = create_sample_data(root / "data", utterances_per_speaker=2)
    config = TrainingConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0)
    good = _adapter(resolve_paths("embedded", "embedded").model_path, root / "good" / "adapter", config)
    truncated = root / "truncated"
    truncated.mkdir()
    for f in good.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    whisper = resolve_paths("embedded:whisper", "embedded").model_path
    other_base = _adapter(whisper, root / "other_base", config.replace(model_path="embedded:whisper"))
    return {"root": root, "manifest": data["val"], "truncated": truncated, "other_base": other_base}


def test_a_model_that_cannot_load_returns_its_reason_instead_of_killing_the_actor(setup):
    rows = load_eval_rows(setup["manifest"], 1)
    sampling = SamplingSettings(seed=0, max_new_tokens=8)
    base = Path(setup["manifest"]).parent
    for name, reason in (("truncated", "corrupted or truncated"), ("other_base", "trained on base model")):
        spec = job.ModelSpec(name, adapter=str(setup[name]))
        run = ModelEvaluator(spec, NO_METRIC_MODELS, sampling, base).run(rows)  # no exception
        assert run.clips == [] and run.error.startswith("AdapterError: ") and reason in run.error, run.error
        assert "\n" not in run.error


def test_an_actor_that_dies_fails_only_its_model():
    from ray.exceptions import ActorDiedError

    def dead():
        raise ActorDiedError()

    run = job.collect_model_run("oom", dead)
    assert run == ModelRun("oom", [], "the model's actor failed: ActorDiedError: The actor died unexpectedly "
                           "before finishing this task.")  # fmt: skip
    assert job.collect_model_run("ok", lambda: ModelRun("ok", [])).error == ""


def _in_process(dies: set[str]):
    """``job._generate_and_score`` without Ray: each model through ``ModelEvaluator`` and ``collect_model_run``,
    as its actor would; a label in ``dies`` stands for an actor that died (its fetch raises ``ActorDiedError``)."""
    from ray.exceptions import ActorDiedError

    def run_models(models, rows, settings, sampling, audio_base_path, use_gpu, cpus_per_actor):
        def fetch(spec):
            if spec.label in dies:
                raise ActorDiedError()
            return ModelEvaluator(spec, settings, sampling, audio_base_path).run(rows)

        return {spec.label: job.collect_model_run(spec.label, lambda s=spec: fetch(s)) for spec in models}

    return run_models


def test_evaluate_scores_the_good_models_and_reports_each_failed_one(setup, monkeypatch, capsys):
    from higgs_train.tracking.tracker import RunTracker

    class NoTracking(RunTracker):  # MLflow costs ~40 s here and is covered by tests/integration/test_evaluation.py
        def __init__(self, tracking_uri: str = "", **kwargs) -> None:
            super().__init__(tracking_uri, enabled=False)

    monkeypatch.setattr(job, "_generate_and_score", _in_process(dies={"dying"}))
    monkeypatch.setattr(job, "RunTracker", NoTracking)
    out = setup["root"] / "eval"
    dying = setup["root"] / "dying"
    dying.mkdir()
    argv = ["--manifest", str(setup["manifest"]), "--max_rows", "1", "--max_new_tokens", "8", "--no_sim", "--no_asr",
            "--no_dnsmos", "--output_dir", str(out)]  # fmt: skip
    models = ["--adapter", str(setup["truncated"]), "--adapter", str(setup["other_base"]), "--adapter", str(dying)]
    assert evaluate_main([*argv, *models, "--base"]) == 0  # some model was scored: the report is the answer
    captured = capsys.readouterr()
    summary = json.loads((out / "eval.json").read_text())["summary"]
    assert list(summary) == ["base", "truncated", "other_base", "dying"]  # the order they were given
    assert summary["base"]["status"] == "ok" and summary["base"]["rows"] == 1
    expected = {
        "truncated": "AdapterError: ",
        "other_base": "AdapterError: adapter was trained on base model",
        "dying": "the model's actor failed: ActorDiedError",
    }
    for label, start in expected.items():
        assert summary[label]["status"] == "failed" and summary[label]["error"].startswith(start), summary[label]
        assert f"| {label} | failed: {summary[label]['error']} | 0 |" in captured.out  # the printed table
        assert f"error: model {label} failed: {summary[label]['error']}" in captured.err
    assert "corrupted or truncated" in summary["truncated"]["error"]
    assert "| base | ok | 1 |" in captured.out and "Traceback" not in captured.err

    # Every model failed: nothing was scored, exit 1 (and still a report saying why).
    assert evaluate_main([*argv, "--adapter", str(setup["truncated"])]) == 1
    assert "every model failed (1)" in capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["summary"]["truncated"]["status"] == "failed"


def test_evaluate_refuses_a_missing_adapter_or_manifest_before_starting(setup, monkeypatch, capsys):
    def no_start(*args, **kwargs):
        raise AssertionError("models were started")

    monkeypatch.setattr(job, "_generate_and_score", no_start)
    missing = setup["root"] / "nope"
    assert evaluate_main(["--manifest", str(setup["manifest"]), "--adapter", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: --adapter {missing}: no such file or directory\n"
    assert evaluate_main(["--manifest", str(missing), "--base"]) == 2
    assert capsys.readouterr().err == f"error: --manifest {missing}: no such file or directory\n"


def test_an_evaluated_row_shows_the_audio_check(setup):
    """The table's "bad audio" count is the check generate.py applies: the tiny model's clipped noise counts."""
    rows = load_eval_rows(setup["manifest"], 1)
    spec = job.ModelSpec("base")
    sampling = SamplingSettings(seed=0, max_new_tokens=24)
    run = ModelEvaluator(spec, NO_METRIC_MODELS, sampling, Path(setup["manifest"]).parent).run(rows)
    (clip,) = run.clips
    assert {"chars_per_second", "peak_dbfs", "rms_dbfs", "clipping_ratio"} <= set(clip.score.metrics)

    problems = check_audio(clip.waveform, clip.sample_rate, clip.score.text)
    flagged = [f for f in clip.score.flags if f in AUDIO_CHECK_FLAGS]
    assert len(flagged) == len(problems)
    assert summarize([clip.score])["base"]["bad_audio_rows"] == int(bool(problems))
