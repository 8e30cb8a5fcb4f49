"""The drivers' shared parts: one run-name rule, a typed worker spec, the import arrows the layout promises, and
the command lines generated from the config dataclasses."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pickle
import sys
from pathlib import Path

import pytest

from higgs_train.commands.train import build_parser, config_from_args
from higgs_train.commands.tune import build_sweep_parser, sweep_config_from_args
from higgs_train.config import TrainingConfig
from higgs_train.driver.cluster import next_free_name, resolve_sweep_run
from higgs_train.driver.worker import WorkerSpec
from higgs_train.evaluation.in_training import TrainingSamples, TrainingVoiceEval, validation_hooks

ROOT = Path(__file__).resolve().parents[2]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    """The package's import graph (``scripts/import_graph.py``), read from the sources once for every arrow checked
    below, with full dotted names (the root package as ``higgs_train``)."""

    def full(name: str) -> str:
        return "higgs_train" if name == "__init__" else f"higgs_train.{name}"

    return {full(a): {full(b) for b in deps} for a, deps in _import_graph().build_graph().edges.items()}


# --------------------------------------------------------------------------------------------------- run names
def test_the_suffix_rule_skips_every_taken_name():
    taken = {"voice", "voice-2", "voice-3"}
    assert next_free_name("voice", taken.__contains__) == "voice-4"
    assert next_free_name("other", taken.__contains__) == "other"


def test_a_sweep_never_reuses_a_name_in_its_storage(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "out" / "sweep"), storage_path=str(tmp_path / "storage"))
    assert resolve_sweep_run(config).run_name == "sweep"
    (tmp_path / "storage" / "sweep").mkdir(parents=True)
    (tmp_path / "storage" / "sweep-2").mkdir()
    resolved = resolve_sweep_run(config.replace(resume_from="/old/ckpt"))
    assert resolved.run_name == "sweep-3"
    assert resolved.resume_from == ""  # trials never resume


# --------------------------------------------------------------------------------------------------- worker spec
def test_the_worker_spec_is_typed_frozen_and_survives_the_process_boundary():
    spec = WorkerSpec(
        config=TrainingConfig(lora_r=4),
        cache_root="/cache",
        train_key="k1",
        val_key=None,
        mlflow_run_id="run",
        mlflow_tracking_uri="sqlite:///x.db",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train_key = "other"  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(spec))
    assert back == spec and isinstance(back.config, TrainingConfig) and back.config.lora_r == 4


def test_the_placement_strategy_reaches_ray_train_and_a_bad_one_is_refused_naming_the_choices():
    """``--placement_strategy`` is what Ray's placement group gets (STRICT_SPREAD: one worker per node); the default
    keeps the single-node behaviour (PACK)."""
    from higgs_train.driver.worker import build_torch_trainer

    assert TrainingConfig().placement_strategy == "PACK"
    config = config_from_args(["--placement_strategy", "STRICT_SPREAD", "--num_workers", "2"])
    spec = WorkerSpec(
        config, cache_root="/cache", train_key="k", val_key=None, mlflow_run_id=None, mlflow_tracking_uri=""
    )
    scaling = build_torch_trainer(spec, "run", "/tmp/storage").scaling_config
    assert (scaling.placement_strategy, scaling.num_workers) == ("STRICT_SPREAD", 2)
    with pytest.raises(ValueError, match=r"placement_strategy='spread'.*PACK, SPREAD, STRICT_SPREAD"):
        config_from_args(["--placement_strategy", "spread"])


def test_workers_stream_the_token_cache_from_the_runs_storage_when_it_is_a_uri():
    """Only --storage_path needs to be shared: a URI storage carries the token cache too, unless told otherwise."""
    from higgs_train.driver.cluster import stream_cache_location

    assert stream_cache_location(TrainingConfig(), "s3://bucket/runs") == "s3://bucket/runs/_token_cache"
    assert stream_cache_location(TrainingConfig(stream_cache_uri="gs://b/c"), "s3://bucket/runs") == "gs://b/c"
    assert stream_cache_location(TrainingConfig(), "/local/ray_results") == ""  # one node: the local cache root


# --------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("higgs_train.training", "higgs_train.export"),
        ("higgs_train.generation", "higgs_train.export"),
        ("higgs_train.adapter", "higgs_train.training"),
        ("higgs_train.tune", "higgs_train.commands"),
        ("higgs_train.tune", "higgs_train.driver.train"),
        ("higgs_train.data", "higgs_train.driver"),
        ("higgs_train.training", "higgs_train.driver"),
        # Commands parse flags; the data path and the builder below them parse none (issue 22.3).
        ("higgs_train.data", "higgs_train.builder"),
        ("higgs_train.data", "higgs_train.commands"),
        ("higgs_train.data", "higgs_train.flag_parser"),
        ("higgs_train.builder", "higgs_train.commands"),
        ("higgs_train.builder", "higgs_train.flag_parser"),
        # The data path one way (issue 22.2): storage below data/ and training/, the ChatML layout and the sample
        # data below data/ and embedded/, a sample's tokens below preprocessing, the length limit and the validator.
        ("higgs_train.data", "higgs_train.training"),
        ("higgs_train.embedded", "higgs_train.data"),
        ("higgs_train.storage", "higgs_train"),
        ("higgs_train.chatml", "higgs_train"),
        ("higgs_train.data.row_length", "higgs_train.data.preprocess"),
        ("higgs_train.data.row_checks", "higgs_train.data.preprocess"),
        ("higgs_train.data.sample_tokens", "higgs_train.data.row_length"),
    ],
)
def test_no_import_arrow_against_the_layout(source, target, import_graph):
    arrows = [
        (a, b)
        for a, deps in import_graph.items()
        if a == source or a.startswith(f"{source}.")
        for b in deps
        if b == target or b.startswith(f"{target}.")
    ]
    assert arrows == []


def test_only_the_ray_session_module_starts_ray():
    """Every driver, the data builder's stage (``prepare_data.py build``) included, starts or joins Ray through
    ``higgs_train.ray_session.init_ray`` (joining the cluster under ``ray job submit``, Hugging Face offline in workers)."""
    callers = set()
    for path in (ROOT / "higgs_train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if isinstance(func, ast.Attribute) and func.attr == "init" and getattr(func.value, "id", "") == "ray":
                callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"higgs_train/ray_session.py"}


# --------------------------------------------------------------------------------------------------- command lines
def test_one_spelling_per_flag_and_real_defaults_in_the_help(capsys):
    options = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert "--learning_rate" in options and "--learning-rate" not in options
    assert not any(opt.startswith("--no_") for opt in options)
    helps = {action.dest: action.help for action in build_parser()._actions}
    assert helps["learning_rate"].endswith(f"(default: {TrainingConfig().learning_rate!r})")
    with pytest.raises(SystemExit):
        config_from_args(["--learning-rate", "1e-4"])
    assert "did you mean --learning_rate?" in capsys.readouterr().err


def test_sweep_flags_come_from_both_dataclasses_with_the_same_precedence(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("lora_r: 8\nnum_epochs: 5\n")
    config, settings = sweep_config_from_args(["--config", str(path), "--lora_r", "4", "--num_samples", "3"])
    assert (config.lora_r, config.num_epochs, settings.num_samples) == (4, 5, 3)
    assert settings.search_alg == "random"  # untouched: SweepSettings' default
    with pytest.raises(SystemExit):
        build_sweep_parser().parse(["--search_alg", "grid"])  # choices from the field's metadata


def test_the_worker_hands_samples_then_voice_metrics_to_the_trainer_sharing_one_set_of_tokenizers():
    assert validation_hooks(TrainingConfig()) == []
    hooks = validation_hooks(TrainingConfig(num_validation_samples=2, eval_rows=1))
    assert [type(h) for h in hooks] == [TrainingSamples, TrainingVoiceEval]
    assert hooks[0].tools is hooks[1].tools
    assert [type(h) for h in validation_hooks(TrainingConfig(eval_rows=1))] == [TrainingVoiceEval]
