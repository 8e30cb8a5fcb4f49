"""Evaluation during training, without a model: metric aggregation, checkpoint ranking, config checks."""

from __future__ import annotations

import math

import pytest

from higgs_train.config import TrainingConfig
from higgs_train.evaluation.in_training import training_metrics
from higgs_train.evaluation.suite import RowScore
from higgs_train.generation_prompt import auto_max_new_tokens, last_user_text
from higgs_train.training.checkpoint_ranking import checkpoint_score
from higgs_train.training.context import LocalContext


def test_training_metrics_rank_silent_clips_last() -> None:
    rows = [
        RowScore("train", "a", "t", {"sim": 0.8, "wer": 0.5}, []),
        RowScore("train", "b", "t", {"sim": math.nan, "wer": math.nan}, ["silent"]),
    ]
    m = training_metrics(rows)
    assert m["eval/sim"] == pytest.approx(0.8)  # the plain mean ignores the clip without speech ...
    assert m["eval/sim_rank"] == pytest.approx(0.4)  # ... the ranking key counts it as 0
    assert m["eval/wer_rank"] == pytest.approx(0.75)
    assert m["eval/flagged_rows"] == 1.0 and m["eval/generation_errors"] == 0.0


@pytest.mark.parametrize(
    ("metric", "key", "values", "best"),
    [("sim", "eval/sim_rank", [0.3, 0.9, 0.5, 0.4], 2), ("wer", "eval/wer_rank", [0.7, 0.9, 0.2, 0.8], 3)],
)
def test_local_checkpoints_are_ranked_by_the_chosen_metric(tmp_path, metric, key, values, best) -> None:
    context = LocalContext(checkpoint_root=tmp_path / "ckpt", keep_best_k=1, checkpoint_metric=metric)
    for step, value in enumerate(values, start=1):
        src = tmp_path / f"src{step}"
        src.mkdir()
        (src / "weights").write_text("x")
        context.report({"step": step, "val_loss": float(step), key: value}, src)
    kept = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "ckpt").glob("step_*"))
    assert kept == sorted({best, len(values)})  # the best by the metric, plus the latest


def test_checkpoint_metric_config() -> None:
    assert checkpoint_score("val_loss") == ("val_loss", "min")
    assert "consistency_loss_weight" not in TrainingConfig.field_names() and TrainingConfig().eval_rows == 0
    TrainingConfig(checkpoint_metric="wer", eval_rows=2)
    with pytest.raises(ValueError, match="checkpoint_metric"):
        TrainingConfig(checkpoint_metric="sim")  # sim needs the voice evaluation on
    with pytest.raises(ValueError, match="checkpoint_metric"):
        TrainingConfig(checkpoint_metric="mos", eval_rows=1)


def test_generation_length_follows_the_expected_clip() -> None:
    assert auto_max_new_tokens(2.0, 1024) == 2 * 25 * 2 + 32
    assert auto_max_new_tokens(60.0, 1024) == 1024
    assert auto_max_new_tokens(None, 512) == 512


def test_last_user_text() -> None:
    prompt = (
        "<|start_header_id|>user<|end_header_id|>\n\nReference words.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSay this now.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
    )
    assert last_user_text(prompt) == "Say this now."
