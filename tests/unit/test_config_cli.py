"""Configuration and command line: defaults file in sync, every documented flag wired, precedence, errors that
name the field, file round trips, and the sample-data / validate-only entry points."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from higgs_train.commands.train import build_parser, config_from_args, main
from higgs_train.config import TrainingConfig, default_yaml, field_defaults

ROOT = Path(__file__).resolve().parents[2]

SEED_FLAGS = [
    "--config",
    "--train_data",
    "--val_data",
    "--model_path",
    "--audio_tokenizer_path",
    "--batch_size",
    "--learning_rate",
    "--num_epochs",
    "--lora_r",
    "--lora_alpha",
    "--lora_dropout",
    "--lora_target_modules",
    "--text_loss_weight",
    "--audio_loss_weight",
    "--gradient_accumulation_steps",
    "--max_grad_norm",
    "--weight_decay",
    "--output_dir",
    "--resume_from",
    "--quick_test",
    "--validate_data_only",
    "--create_sample_data",
    "--use_gradient_checkpointing",
    "--audio_base_path",
    "--dataloader_num_workers",
    "--num_workers",
    "--use_gpu",
]


def test_default_yaml_is_generated_from_the_dataclass():
    """The committed YAML is what ``default_yaml`` writes (defaults and help), and it loads as the defaults."""
    committed = ROOT / "configs" / "default.yaml"
    assert committed.read_text() == default_yaml(), (
        "configs/default.yaml is stale: python scripts/write_default_yaml.py"
    )
    assert yaml.safe_load(committed.read_text()) == field_defaults()
    assert TrainingConfig.load(committed) == TrainingConfig()


def test_every_seed_flag_exists_and_every_field_has_a_flag():
    options = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert set(SEED_FLAGS) <= options
    assert {f"--{f.name}" for f in fields(TrainingConfig)} <= options


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--batch_size", "3"], "batch_size", 3),
        (["--learning_rate", "0.003"], "learning_rate", 3e-3),
        (["--lora_dropout", "0"], "lora_dropout", 0.0),
        (["--lora_target_modules", "q_proj", "v_proj"], "lora_target_modules", ["q_proj", "v_proj"]),
        (["--use_gpu"], "use_gpu", True),  # a bare boolean flag means true
        (["--use_gradient_checkpointing", "false"], "use_gradient_checkpointing", False),
        (["--quick_test", "yes"], "quick_test", True),
        (["--resume_from", "/ckpt/step_0000010"], "resume_from", "/ckpt/step_0000010"),
        (["--num_workers", "4"], "num_workers", 4),
    ],
)
def test_flags_parse_into_typed_fields(argv, field, expected):
    config = config_from_args(argv)
    assert getattr(config, field) == expected
    assert type(getattr(config, field)) is type(expected)


def test_precedence_defaults_then_config_file_then_flags(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"lora_r": 8, "learning_rate": 1e-3, "use_gpu": True, "num_epochs": 5}))

    config = config_from_args(["--config", str(path), "--lora_r", "4", "--use_gpu", "false"])

    assert config.lora_r == 4  # flag beats file
    assert config.use_gpu is False  # an explicit false flag beats a true in the file
    assert config.learning_rate == 1e-3 and config.num_epochs == 5  # file beats default
    assert config.batch_size == TrainingConfig().batch_size  # untouched: default


def test_a_bad_value_names_the_field(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"TrainingConfig\.lora_dropout=1\.5"):
        config_from_args(["--lora_dropout", "1.5"])
    assert main(["--gradient_accumulation_steps", "0"]) == 2
    assert "gradient_accumulation_steps" in capsys.readouterr().err

    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({"lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        config_from_args(["--config", str(bad_file)])

    with pytest.raises(SystemExit) as exit_info:  # argparse: a value of the wrong type
        config_from_args(["--batch_size", "two"])
    assert exit_info.value.code == 2
    assert "--batch_size" in capsys.readouterr().err


def test_the_removed_consistency_weight_says_why_in_a_file_and_as_a_flag(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("consistency_loss_weight: 0.1\n")
    with pytest.raises(ValueError, match="did not measure voice.*--checkpoint_metric sim"):
        config_from_args(["--config", str(old)])
    with pytest.raises(SystemExit):
        config_from_args(["--consistency_loss_weight", "0.1"])
    assert "--consistency_loss_weight: removed: the hidden-state consistency term" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_load_save_round_trip(tmp_path, suffix):
    config = TrainingConfig(
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        codebook_weights=[2.0] + [1.0] * 7,
        learning_rate=3e-3,
        use_gradient_checkpointing=True,
        resume_from="/somewhere/step_0000002",
    )
    path = tmp_path / f"config{suffix}"
    config.save(path)
    parsed = json.loads(path.read_text()) if suffix == ".json" else yaml.safe_load(path.read_text())
    assert parsed["lora_target_modules"] == ["q_proj", "v_proj"]
    assert TrainingConfig.load(path) == config


def test_create_sample_data_then_validate_data_only(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["--create_sample_data", str(data)]) == 0
    train, val = data / "train.json", data / "val.json"
    assert train.exists() and val.exists()
    assert (
        main(
            [
                "--validate_data_only",
                "--train_data",
                str(train),
                "--val_data",
                str(val),
                "--output_dir",
                str(tmp_path / "ok"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "ok" / "validation_report.json").read_text())
    assert report["total"] > 0

    # The same check rejects a manifest whose audio is missing, so exit 0 above is a verdict, not a default.
    rows = json.loads(train.read_text())
    rows[0]["messages"][4]["content"]["audio_url"] = "audio/missing.wav"
    broken = data / "broken.json"
    broken.write_text(json.dumps(rows))
    argv = ["--validate_data_only", "--train_data", str(broken), "--output_dir", str(tmp_path / "bad")]
    assert main(argv) == 1
