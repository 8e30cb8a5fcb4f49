"""Samples during training: at validation, greedy generations are written as WAVs and handed to the tracker."""

from __future__ import annotations

import pytest
import soundfile as sf

from higgs_train.config import TrainingConfig
from higgs_train.data.in_process import records_for_config
from higgs_train.evaluation.in_training import validation_hooks
from higgs_train.training.context import LocalContext
from higgs_train.training.trainer import HiggsAudioTrainer

pytestmark = pytest.mark.integration


def test_validation_samples_are_generated_and_logged(tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        eval_every_steps=1,
        save_every_steps=1,
        num_validation_samples=2,  # validation_sample_max_new_tokens at its default, as a user runs it
        lora_dropout=0.0,
    )
    logged: list[tuple[str, str | None]] = []
    context = LocalContext(
        checkpoint_root=tmp_path / "run" / "checkpoints",
        log_artifact=lambda path, artifact_path: logged.append((path, artifact_path)),
    )
    result = HiggsAudioTrainer(
        config, *records_for_config(config), context, validation_hooks=validation_hooks(config)
    ).train()

    wavs = sorted((tmp_path / "run" / "samples" / "step_0000001").glob("*.wav"))
    assert len(wavs) == 2
    for wav in wavs:
        info = sf.info(str(wav))
        assert info.samplerate == 24000 and info.frames > 0
    assert sorted(p for p, _ in logged) == sorted(str(w) for w in wavs)
    assert {a for _, a in logged} == {"samples/step_0000001"}
    agreement = result.metrics["val/sample_code_agreement"]
    assert 0.0 <= agreement <= 1.0
    assert result.metrics["val/sample_failures"] == 0


def test_a_failing_validation_sample_is_a_warning_not_a_failed_job(tmp_path, monkeypatch, caplog):
    import higgs_train.generation

    def broken_synthesize(*args, **kwargs):
        raise RuntimeError("injected generation failure")

    monkeypatch.setattr(higgs_train.generation, "synthesize", broken_synthesize)
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, eval_every_steps=1, save_every_steps=1, num_validation_samples=2
    )
    logged: list[dict] = []
    context = LocalContext(
        checkpoint_root=tmp_path / "run" / "checkpoints", log_metrics=lambda metrics, step: logged.append(metrics)
    )
    result = HiggsAudioTrainer(
        config, *records_for_config(config), context, validation_hooks=validation_hooks(config)
    ).train()

    assert result.state.global_step == 2 and (result.adapter_dir / "adapter_model.safetensors").exists()
    assert [m["val/sample_failures"] for m in logged if "val_loss" in m] == [2.0, 2.0]  # what MLflow receives
    assert "val/sample_code_agreement" not in result.metrics
    assert "injected generation failure" in caplog.text


def test_validation_samples_are_off_by_default(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=1, eval_every_steps=1, save_every_steps=1)
    result = HiggsAudioTrainer(config, *records_for_config(config), validation_hooks=validation_hooks(config)).train()
    assert "val/sample_code_agreement" not in result.metrics
    assert not (tmp_path / "run" / "samples").exists()
