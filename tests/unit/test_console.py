"""What the console shows while a user waits, and what it leaves out (issue 19 item 6), without starting Ray."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from higgs_train.console import RateLine, quiet_libraries, worker_env
from higgs_train.tune.results import TrialSummary, trial_table_text
from higgs_train.tune.trial import trial_result_line


def test_rate_line_shows_rows_done_rate_and_eta():
    now = [50.0]
    rate = RateLine("token cache (train)", total=2000, clock=lambda: now[0])
    now[0] += 100.0
    assert rate.line(500) == "token cache (train): 500/2000 rows (25%) | 5.0 rows/s | ETA 5m00s"
    assert rate.line(0).endswith("0/2000 rows (0%) | 0.0 rows/s | ETA ?")
    now[0] += 300.0
    assert rate.line(2000) == "token cache (train): 2000/2000 rows (100%) | 5.0 rows/s | done in 6m40s"


def test_one_line_per_trial_result_and_a_final_table_best_first():
    result = {"step": 4, "val_loss": 7.12345, "val_audio_accuracy": 0.0041, "train/total_loss": 7.5}
    line = trial_result_line("a1_00002", {"lora_r": 16, "learning_rate_multiplier": 0.5}, result, 8)
    assert (
        line
        == "trial a1_00002 [learning_rate_multiplier=0.5 lora_r=16] step 4/8 | val_loss 7.1235 acc 0.004 | loss 7.5000"
    )
    trials = [
        TrialSummary("t_00000", "early_stopped", {"lora_r": 8}, {}, val_loss=7.6, step=2),
        TrialSummary("t_00001", "error", {"lora_r": 32}, {}),
        TrialSummary("t_00002", "completed", {"lora_r": 16}, {}, val_loss=7.1, val_audio_accuracy=0.004, step=4),
    ]
    table = trial_table_text(trials).splitlines()
    assert table[0].split() == ["trial", "status", "step", "val_loss", "acc", "lora_r"]
    assert [row.split()[0] for row in table[1:]] == ["t_00002", "t_00000", "t_00001"]  # lowest val_loss first
    assert table[3].split() == ["t_00001", "error", "-", "-", "-", "32"]
    assert len({row.index(row.split()[1], len(row.split()[0])) for row in table}) == 1  # aligned columns


@pytest.fixture
def restore_logging_and_warnings():
    from higgs_train.console import QUIET_LOGGERS

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # each warning shows, unless a filter put in front of this one drops it
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_default_console_drops_library_noise_and_verbose_keeps_it(restore_logging_and_warnings, monkeypatch):
    quiet_libraries(verbose=False)
    assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.INFO)  # "Creating initial tables"
    token_notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert not token_notice.isEnabledFor(logging.WARNING)
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`torch.nn.utils.weight_norm` is deprecated in favor of ...", FutureWarning, stacklevel=1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another FutureWarning"]
    # Ray's workers get the same filter through their environment, added to the user's own.
    monkeypatch.setenv("PYTHONWARNINGS", "error::DeprecationWarning")
    spec = worker_env(verbose=False)["PYTHONWARNINGS"]
    assert spec == "error::DeprecationWarning,ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning"

    quiet_libraries(verbose=True)
    assert logging.getLogger("mlflow.store.db.utils").level == logging.NOTSET
    assert token_notice.level == logging.NOTSET and worker_env(verbose=True) == {}


def test_tune_prints_nothing_of_its_own_unless_verbose(monkeypatch):
    """Tune's new output engine prints its experiment box at any verbosity; its legacy one at verbose 0 is silent."""
    from higgs_train.console import quiet_tune_output

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    with quiet_tune_output(verbose=False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    with quiet_tune_output(verbose=True):
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's choice wins
    with quiet_tune_output(verbose=False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


def test_the_raylets_fractional_cpu_advice_is_not_shown_on_a_sweeps_console():
    from higgs_train.console import forwarded_lines

    raylet = {"pid": "raylet", "lines": ["WARNING: 8 PYTHON worker processes have been started on node: d57 with ..."]}
    assert forwarded_lines(raylet) == []
    assert forwarded_lines({"pid": "raylet", "lines": ["WARNING: node d57 is running low on memory"]}) != []
