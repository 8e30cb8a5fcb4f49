"""Samples during training: at validation, greedy generations are written as WAVs and handed to the tracker."""

from __future__ import annotations

import pytest
import soundfile as sf

from higgs_train.config import TrainingConfig
from higgs_train.training.context import LocalContext
from higgs_train.training.trainer import HiggsAudioTrainer

pytestmark = pytest.mark.integration


def test_validation_samples_are_generated_and_logged(tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        eval_every_steps=1,
        save_every_steps=1,
        num_validation_samples=2,
        validation_sample_max_new_tokens=24,
        lora_dropout=0.0,
    )
    logged: list[tuple[str, str | None]] = []
    context = LocalContext(
        checkpoint_root=tmp_path / "run" / "checkpoints",
        log_artifact=lambda path, artifact_path: logged.append((path, artifact_path)),
    )
    result = HiggsAudioTrainer(config, context).train()

    wavs = sorted((tmp_path / "run" / "samples" / "step_0000001").glob("*.wav"))
    assert len(wavs) == 2
    for wav in wavs:
        info = sf.info(str(wav))
        assert info.samplerate == 24000 and info.frames > 0
    assert sorted(p for p, _ in logged) == sorted(str(w) for w in wavs)
    assert {a for _, a in logged} == {"samples/step_0000001"}
    agreement = result.metrics["val/sample_code_agreement"]
    assert 0.0 <= agreement <= 1.0


def test_validation_samples_are_off_by_default(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=1, eval_every_steps=1, save_every_steps=1)
    result = HiggsAudioTrainer(config).train()
    assert "val/sample_code_agreement" not in result.metrics
    assert not (tmp_path / "run" / "samples").exists()
