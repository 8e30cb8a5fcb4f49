"""The fast step keeps the loop's figures: losses are read back from the device only at reported steps, and a run
that reports every other step logs exactly the losses of a run that reports every step."""

from __future__ import annotations

import math

import pytest
import torch
from test_training_core import one_torch_thread, records, sample_rows, trainer_for  # noqa: F401  (fixtures)


def test_unreported_steps_keep_their_losses_on_the_device(tmp_path, records):  # noqa: F811
    trainer = trainer_for(tmp_path, records[:4], batch_size=2, log_every_steps=2, save_every_steps=100, max_steps=4)
    trainer.setup()
    first = trainer._train_step([[0, 1]])  # step 1: not logged, saved or final
    assert isinstance(first.losses, torch.Tensor) and first.losses.shape == (3,)
    assert trainer._record_step(first) == {}  # nothing read back from the device
    trainer.state.global_step += 1
    second = trainer._train_step([[2, 3]])  # step 2: logged
    reported = trainer._record_step(second)
    assert math.isfinite(reported["train/total_loss"]) and reported["train/total_loss"] == float(second.losses[2])
    assert reported["total_loss"] == reported["train/total_loss"]  # the canonical name Tune and MLflow read
    # The figures cover both steps since the last report: the padding efficiency counts all four rows.
    padded = sum(2 * max(int(records[a]["num_tokens"]), int(records[b]["num_tokens"])) for a, b in ((0, 1), (2, 3)))
    real = sum(int(records[i]["num_tokens"]) for i in range(4))
    assert reported["train/padding_efficiency"] == pytest.approx(real / padded)
    assert reported["train/tokens_per_second"] > 0 and trainer._throughput.started is None


def test_reporting_every_other_step_logs_the_same_losses(tmp_path, records):  # noqa: F811
    settings = {"batch_size": 2, "num_epochs": 2, "max_steps": 4, "save_every_steps": 100, "eval_every_steps": 100}
    every = trainer_for(tmp_path / "every", records[:4], log_every_steps=1, **settings).train()
    sparse = trainer_for(tmp_path / "sparse", records[:4], log_every_steps=2, **settings).train()
    assert [m["step"] for m in every.state.history] == [1, 2, 3, 4]
    assert [m["step"] for m in sparse.state.history] == [2, 4]
    by_step = {m["step"]: m for m in every.state.history}
    for logged in sparse.state.history:
        for name in ("total_loss", "text_loss", "audio_loss", "train/grad_norm"):
            assert logged[name] == by_step[logged["step"]][name], name
