"""A user's first tries, the way a user makes them: from the repository root, relative paths, default flags.

Issue 10: relative paths resolved in the driver, ``--create_sample_data FILE``, config files typed by field,
flags without prefix matching and with a suggestion, the natural data mistakes caught before MLflow or Ray start,
``--use_gpu`` on a cluster without GPUs, the progress line, and a job that never reports success without its outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from higgs_train.commands.train import config_from_args, main
from higgs_train.config import TrainingConfig
from higgs_train.console import ProgressLine
from higgs_train.driver.cluster import ClusterResourcesError, check_gpus
from higgs_train.driver.train import JobOutputsMissing, check_outputs
from higgs_train.paths import resolve_user_paths


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The working directory a user runs the commands from (a fresh checkout's root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------- paths
def test_relative_user_paths_become_absolute_in_the_driver(in_tmp):
    config = TrainingConfig(
        train_data="data/train.jsonl",
        val_data="data/val.jsonl",
        audio_base_path="data",
        output_dir="outputs/my-voice",
        cache_dir="cache",
        resume_from="outputs/my-voice/ray_results/my-voice/checkpoint_1",
        create_sample_data="data/sample.json",
        model_path="./models/base",
        tokenizer_path="org/hub-model",
        storage_path="s3://bucket/runs",
    )
    resolved = resolve_user_paths(config)
    for name in ("train_data", "val_data", "audio_base_path", "output_dir", "cache_dir", "resume_from"):
        assert getattr(resolved, name) == str(in_tmp / getattr(config, name)), name
    assert resolved.create_sample_data == str(in_tmp / "data" / "sample.json")
    assert resolved.model_path == str(in_tmp / "models" / "base")  # written as a path
    assert resolved.tokenizer_path == "org/hub-model"  # a hub id stays
    assert resolved.audio_tokenizer_path == "embedded"
    assert resolved.storage_path == "s3://bucket/runs"
    assert resolve_user_paths(resolved) == resolved  # idempotent
    assert resolve_user_paths(TrainingConfig()).output_dir == str(in_tmp / "outputs" / "default")


def test_a_job_without_its_outputs_fails(tmp_path):
    adapter = tmp_path / "adapter"
    with pytest.raises(JobOutputsMissing, match="adapter_model.safetensors"):
        check_outputs(adapter, tmp_path / "history.json", None)
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")
    (tmp_path / "history.json").write_text("[]")
    with pytest.raises(JobOutputsMissing, match="loss_curve.png"):
        check_outputs(adapter, tmp_path / "history.json", None)
    (tmp_path / "loss_curve.png").write_bytes(b"png")
    check_outputs(adapter, tmp_path / "history.json", tmp_path / "loss_curve.png")


# --------------------------------------------------------------------------------------------------- sample data
@pytest.mark.parametrize("name", ["data/sample.json", "data/train.jsonl", "data/sample.parquet"])
def test_create_sample_data_to_a_manifest_file_then_train_data_reads_it(in_tmp, name, capsys):
    assert main(["--create_sample_data", name]) == 0
    manifest = in_tmp / name
    assert manifest.is_file()
    val = manifest.with_name(("val" if manifest.stem == "train" else manifest.stem + "_val") + manifest.suffix)
    assert val.is_file()
    assert (in_tmp / "data" / "audio").is_dir()
    assert str(val) in capsys.readouterr().out
    code = main(["--validate_data_only", "--train_data", name, "--val_data", str(val.relative_to(in_tmp))])
    assert code == 0
    report = json.loads((in_tmp / "outputs" / "default" / "validation_report.json").read_text())
    assert report["valid"] == report["total"] == 20


def test_create_sample_data_to_a_folder_keeps_its_layout(in_tmp):
    assert main(["--create_sample_data", "data/samples"]) == 0
    assert (in_tmp / "data" / "samples" / "train.json").is_file()
    assert (in_tmp / "data" / "samples" / "val.json").is_file()


# --------------------------------------------------------------------------------------------------- config files
def test_yaml_config_values_are_coerced_by_field_type(in_tmp):
    Path("job.yaml").write_text("learning_rate: 1e-4\nlora_r: '8'\nuse_gpu: 'no'\nlora_target_modules: q_proj\n")
    config = config_from_args(["--config", "job.yaml"])
    assert config.learning_rate == 1e-4 and type(config.learning_rate) is float
    assert config.lora_r == 8 and config.use_gpu is False
    assert config.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learning_rate: fast\n", r"TrainingConfig\.learning_rate='fast' is invalid: expected a number"),
        ("lora_r: 8.5\n", r"TrainingConfig\.lora_r=8\.5 is invalid: expected an integer"),
        ("use_gpu: maybe\n", r"TrainingConfig\.use_gpu='maybe' is invalid: expected true or false"),
        ("lora_rank: 8\n", r"'lora_rank' \(did you mean 'lora_r'\?\)"),
        ("learning_rate: [1\n", "cannot be parsed"),
    ],
)
def test_a_bad_config_file_names_the_field(in_tmp, capsys, text, expected):
    Path("job.yaml").write_text(text)
    assert main(["--config", "job.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(expected, err), err


# --------------------------------------------------------------------------------------------------- flags
def test_a_flag_typo_gets_a_short_error_with_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--lora_rank", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--lora_rank -> did you mean --lora_r?" in err
    assert len(err.strip().splitlines()) <= 3  # not the 40-line usage


def test_a_flag_prefix_is_not_taken_for_the_flag(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--learning_rat", "1e-4"])
    assert "did you mean --learning_rate?" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- data mistakes
def test_a_wrong_manifest_path_is_a_clear_error_in_validate_mode(in_tmp, capsys):
    assert main(["--validate_data_only", "--train_data", "data/trian.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "--train_data data/trian.jsonl" in err and "does not exist" in err and str(in_tmp) in err
    assert "Traceback" not in err


def test_a_wrong_manifest_path_fails_before_mlflow_or_ray_start(in_tmp, capsys):
    assert main(["--train_data", "data/missing.json", "--output_dir", "outputs/x"]) == 2
    assert "--train_data data/missing.json" in capsys.readouterr().err
    assert not (in_tmp / "outputs" / "mlflow.db").exists()  # no MLflow run was opened


def _one_sample_row(audio_url: str) -> dict:
    return {
        "speaker": "s",
        "start_index": 4,
        "messages": [
            {"role": "system", "content": "x"},
            {"role": "user", "content": "ref"},
            {"role": "assistant", "content": {"type": "audio", "audio_url": audio_url}},
            {"role": "user", "content": "target"},
            {"role": "assistant", "content": {"type": "audio", "audio_url": audio_url}},
        ],
    }


def test_a_samples_wrapper_file_points_to_the_data_format(in_tmp, capsys):
    Path("data").mkdir()
    Path("data/train.json").write_text(json.dumps({"samples": [_one_sample_row("a.wav")] * 3}))
    assert main(["--validate_data_only", "--train_data", "data/train.json"]) == 2
    err = capsys.readouterr().err
    assert 'rows under "samples"' in err and "Data format" in err and "prepare_data.py build" in err
    assert err.count("\n") == 1  # one error, not one per line


def test_a_flat_audio_text_jsonl_points_to_the_manifest_builder(in_tmp, capsys):
    Path("data").mkdir()
    rows = [{"audio_filepath": f"wavs/{i}.wav", "text": "hello", "duration": 1.0} for i in range(50)]
    Path("data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["--train_data", "data/train.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "'audio_filepath'" in err and "no 'messages'" in err and "prepare_data.py build" in err
    assert err.count("\n") == 1


def test_audio_missing_under_the_root_names_the_root_and_the_flag(in_tmp, capsys):
    assert main(["--create_sample_data", "data/train.json"]) == 0
    Path("manifests").mkdir()
    Path("data/train.json").rename("manifests/train.json")  # audio paths are now relative to the wrong folder
    assert main(["--validate_data_only", "--train_data", "manifests/train.json"]) == 2
    err = capsys.readouterr().err
    assert f"audio root {in_tmp / 'manifests'}" in err and "--audio_base_path" in err
    # ... and with the root given, the same manifest validates.
    code = main(["--validate_data_only", "--train_data", "manifests/train.json", "--audio_base_path", "data"])
    assert code == 0


# --------------------------------------------------------------------------------------------------- GPUs
def test_use_gpu_without_gpus_names_what_is_missing_and_the_fix():
    config = TrainingConfig(use_gpu=True, num_workers=2)
    with pytest.raises(ClusterResourcesError) as info:
        check_gpus(config, {"CPU": 2.0, "memory": 1e9})
    message = str(info.value)
    assert "needs 2 GPU(s)" in message and "no GPUs" in message and "CPU 2" in message
    assert "Drop --use_gpu" in message
    check_gpus(config, {"CPU": 2.0, "GPU": 2.0})
    check_gpus(TrainingConfig(), {"CPU": 2.0})


# --------------------------------------------------------------------------------------------------- console
def test_progress_line_shows_step_losses_throughput_and_eta():
    now = [100.0]
    progress = ProgressLine(total_steps=30, clock=lambda: now[0])
    progress.start(0)
    now[0] += 20.0  # 2 s per step over the first 10 steps
    metrics = {
        "train/total_loss": 7.5,
        "train/text_loss": 2.25,
        "train/audio_loss": 6.9375,
        "train/tokens_per_second": 7512.4,
        "val_loss": 7.0,
        "val_audio_accuracy": 0.0125,
    }
    line = progress.line(10, metrics)
    assert line == (
        "step 10/30 | loss 7.5000 (text 2.2500, audio 6.9375) | val_loss 7.0000 acc 0.013 | 7512 tok/s | ETA 40s"
    )
    now[0] += 40.0
    assert progress.summary(30, metrics).startswith("training done: 30 steps in 1m00s; train/total_loss 7.5000")


def test_rows_with_missing_audio_get_a_hint_naming_the_root(in_tmp, capsys):
    assert main(["--create_sample_data", "data/train.json"]) == 0
    Path("data/audio/spk_low/utt_01.wav").unlink()  # one file gone: those rows fail, the others are fine
    capsys.readouterr()
    assert main(["--validate_data_only", "--train_data", "data/train.json"]) == 1
    out = capsys.readouterr().out
    assert "audio file not found: audio/spk_low/utt_01.wav" in out
    assert f"hint: 2 row(s) name audio files that do not exist under the audio root {in_tmp / 'data'}" in out
    assert "--audio_base_path" in out


def test_ray_internal_lines_are_not_forwarded_to_the_console():
    from higgs_train.console import forwarded_lines

    cleaner = {"actor_name": "PlacementGroupCleaner", "lines": ["Exception in thread PlacementGroupCleanerMonitor:"]}
    assert forwarded_lines(cleaner) == []
    worker = {
        "actor_name": "RayTrainWorker",
        "lines": [
            "step 3/30 | loss 7.1 (text 2.0, audio 6.9) | 900 tok/s | ETA 40s",
            "Reporting training result 1: TrainingReport(checkpoint=None, metrics={})",
            "[Gloo] Rank 0 is connected to 0 peer ranks. Expected number of connected peer ranks is : 0",
            "WARNING step 3: text loss dominates",
        ],
    }
    assert forwarded_lines(worker) == [worker["lines"][0], worker["lines"][3]]
