"""Search-space parsing, trial overrides, resource sizing and the ASHA schedule of ``higgs_train.tune`` (no cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from higgs_train.commands.tune import sweep_config_from_args
from higgs_train.config import TrainingConfig
from higgs_train.training.schedule import planned_steps
from higgs_train.tune.resources import make_scheduler, plan_resources
from higgs_train.tune.space import (
    SweepSettings,
    complete_point,
    load_search_space,
    make_search_alg,
    quick_test_points,
    to_param_space,
    trial_overrides,
)
from higgs_train.tune.trial import ValidationReportCallback


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_default_search_space_covers_the_issue() -> None:
    spec = load_search_space("configs/tune_search_space.yaml")
    assert spec["lora_r"] == ("choice", [8, 16, 32, 64])
    assert spec["lora_alpha_multiplier"][0] == "choice"
    assert spec["learning_rate_multiplier"] == ("loguniform", [0.05, 5.0])
    assert {"text_loss_weight", "audio_loss_weight"} <= set(spec)
    assert "consistency_loss_weight" not in spec  # not a voice measure: a sweep must not switch it on
    assert set(to_param_space(spec)) == set(spec)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lora_rank: {choice: [8]}", "neither a TrainingConfig field"),
        ("lora_r: {pick: [8]}", "kind in"),
        ("lora_r: {choice: []}", "non-empty list"),
        ("learning_rate: {loguniform: [0, 1]}", "low > 0"),
        ("learning_rate: {uniform: [2, 1]}", "low < high"),
        ("lora_alpha: {choice: [8]}\nlora_alpha_multiplier: {choice: [1]}", "not both"),
        ("learning_rate: {value: 1.0e-4}\nlearning_rate_multiplier: {choice: [1]}", "not both"),
    ],
)
def test_bad_search_spaces_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_search_space(write(tmp_path, text))


def test_trial_overrides_derive_alpha_and_coerce_types() -> None:
    base = TrainingConfig()
    out = trial_overrides(base, {"lora_r": 32, "lora_alpha_multiplier": 2, "learning_rate": 1, "batch_size": 2.0})
    assert out == {"lora_r": 32, "lora_alpha": 64, "learning_rate": 1.0, "batch_size": 2}
    assert isinstance(out["batch_size"], int) and isinstance(out["learning_rate"], float)
    assert trial_overrides(base, {"lora_alpha_multiplier": 1})["lora_alpha"] == base.lora_r
    base.replace(**out)  # a valid TrainingConfig


def test_learning_rate_multiplier_scales_the_base_or_the_models_recommended_rate() -> None:
    """The shipped range [0.05, 5] is 1e-5..1e-3 for a released checkpoint (recommended 2e-4) and centres on the
    embedded model's own recommended 2e-3 for the default job."""
    auto = TrainingConfig()  # --learning_rate 0, embedded model: recommends 2e-3
    assert trial_overrides(auto, {"learning_rate_multiplier": 0.5})["learning_rate"] == pytest.approx(1e-3)
    pinned = TrainingConfig(learning_rate=2e-4)
    assert trial_overrides(pinned, {"learning_rate_multiplier": 0.05})["learning_rate"] == pytest.approx(1e-5)
    assert trial_overrides(pinned, {"learning_rate_multiplier": 5.0})["learning_rate"] == pytest.approx(1e-3)


def test_quick_test_points_are_distinct_ranks_in_listed_order() -> None:
    spec = {"lora_r": ("choice", [8, 16, 16, 32, 64])}
    assert quick_test_points(spec, 3) == [{"lora_r": 8}, {"lora_r": 16}, {"lora_r": 32}]
    assert len(quick_test_points(spec, 10)) == 4
    assert quick_test_points({"lora_r": ("grid", [8, 16])}, 3) == []


def test_resources_default_to_whole_trials_and_refuse_deadlocks() -> None:
    config = TrainingConfig()  # 1 worker x 0.5 CPU
    plan = plan_resources(config, SweepSettings(num_samples=3), {"CPU": 2.0})
    assert (plan.function_cpus, plan.worker_cpus, plan.fits, plan.max_concurrent) == (0.25, 0.5, 2, 2)
    assert plan_resources(config, SweepSettings(num_samples=1), {"CPU": 2.0}).max_concurrent == 1
    # 3 functions (0.75) + one trial's workers (0.5) fit in 2 CPUs: allowed, the third trial's worker queues.
    assert plan_resources(config, SweepSettings(max_concurrent_trials=3), {"CPU": 2.0}).max_concurrent == 3
    with pytest.raises(ValueError, match="deadlock"):
        plan_resources(config, SweepSettings(max_concurrent_trials=7), {"CPU": 2.0})
    with pytest.raises(ValueError, match="one trial needs"):
        plan_resources(config.replace(num_workers=4), SweepSettings(), {"CPU": 2.0})
    gpu = config.replace(use_gpu=True, num_workers=2, cpus_per_train_worker=4.0)
    assert plan_resources(gpu, SweepSettings(), {"CPU": 64.0, "GPU": 8.0}).fits == 4


def test_asha_rungs_stay_below_the_last_step() -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = make_scheduler(total_steps=4, grace_period=2, reduction_factor=2)
    assert isinstance(asha, ASHAScheduler)
    assert [m for m, _ in asha._brackets[0]._rungs] == [2]  # never at step 4, where the trial finishes
    assert isinstance(make_scheduler(total_steps=2, grace_period=2, reduction_factor=2), FIFOScheduler)


def test_planned_steps_follow_the_trainers_rule() -> None:
    config = TrainingConfig(batch_size=2, num_epochs=3)
    assert planned_steps(config, [10] * 8) == 12
    assert planned_steps(config.replace(max_steps=5), [10] * 8) == 5
    assert planned_steps(config.replace(gradient_accumulation_steps=3), [10] * 8) == 6


def test_cli_splits_training_flags_from_sweep_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("lora_r: 8\nlearning_rate: 0.001\n")
    config, settings = sweep_config_from_args(
        ["--config", str(file), "--learning_rate", "0.01", "--num_samples", "5", "--search_alg", "random"]
    )
    assert (config.lora_r, config.learning_rate) == (8, 0.01)
    assert (settings.num_samples, settings.search_alg, settings.max_concurrent_trials) == (5, "random", 0)


def test_optuna_gets_complete_quick_test_points() -> None:
    pytest.importorskip("optuna")
    spec = load_search_space("configs/tune_search_space.yaml")
    point = complete_point(spec, {"lora_r": 16})
    assert point["lora_r"] == 16 and set(point) == set(spec)
    assert point["learning_rate_multiplier"] == pytest.approx(0.5)  # geometric mean of [0.05, 5]
    searcher = make_search_alg("optuna", spec, 0, [{"lora_r": 8}, {"lora_r": 16}], max_concurrent=2)
    searcher.set_search_properties("val_loss", "min", to_param_space(spec))
    assert [searcher.suggest(f"t{i}")["lora_r"] for i in range(2)] == [8, 16]


def test_only_validation_reports_reach_tune() -> None:
    callback = ValidationReportCallback.__new__(ValidationReportCallback)  # __init__ needs a live Tune session
    sent: list[dict] = []
    callback._training_actor_item_queue = SimpleNamespace(put=sent.append)
    callback.after_report(None, [{"step": 1, "total_loss": 9.0}], None)
    callback.after_report(None, [{"step": 2, "val_loss": 7.0}], SimpleNamespace(path="/ckpt/2"))
    assert sent == [{"step": 2, "val_loss": 7.0, "checkpoint_path": "/ckpt/2"}]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("val_loss", "low_loss"), ("sim", "high_sim"), ("wer", "low_wer")],
)
def test_trials_are_ranked_by_the_checkpoint_metric(tmp_path, metric, expected):
    """--checkpoint_metric ranks Tune trials as it ranks checkpoints: val_loss and WER lowest, SIM highest."""
    import pandas as pd

    from higgs_train.tune.results import select_best, summarize_trial

    base = TrainingConfig(checkpoint_metric=metric, eval_rows=2 if metric != "val_loss" else 0)
    reports = {
        "low_loss": {"val_loss": 6.0, "eval/sim_rank": 0.50, "eval/wer_rank": 0.9},
        "high_sim": {"val_loss": 7.0, "eval/sim_rank": 0.90, "eval/wer_rank": 0.8},
        "low_wer": {"val_loss": 6.5, "eval/sim_rank": 0.70, "eval/wer_rank": 0.2},
    }
    trials = []
    for name, last in reports.items():
        frame = pd.DataFrame([{"step": 2, "val_loss": 8.0, "eval/sim_rank": 0.1, "eval/wer_rank": 1.0},
                              {"step": 4, **last}])  # fmt: skip
        result = SimpleNamespace(path=str(tmp_path / name), config={}, error=None, metrics_dataframe=frame)
        trials.append(summarize_trial(result, base, tmp_path / "trials", lengths=[]))
    key = {"val_loss": "val_loss", "sim": "eval/sim_rank", "wer": "eval/wer_rank"}[metric]
    assert [t.score for t in trials] == [reports[name][key] for name in reports]  # the last report, not the first
    mode = "max" if metric == "sim" else "min"
    assert Path(select_best(trials, mode).output_dir).name == expected
