"""The training job as a user first runs it: ``python ray_jobs/train.py --use_gpu`` on a machine without GPUs must
fail within seconds, before any preprocessing, with a message that says what is missing and how to fix it (it used to
hang forever in "No available node types can fulfill {'GPU': 1}"). Issue 10 item 3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from higgs_train.tracking.runs import find_runs
from higgs_train.tracking.store import embedded_tracking_uri

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_use_gpu_without_gpus_fails_fast_with_the_fix(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--use_gpu"],
        cwd=tmp_path,  # relative default output_dir: tmp_path/outputs/default
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert "needs 1 GPU(s)" in done.stderr and "no GPUs" in done.stderr and "Drop --use_gpu" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 240, f"took {elapsed:.0f}s"  # a Ray start on a loaded 2-CPU runner; the bug was a hang
    assert not (tmp_path / "outputs" / "token_cache").exists()  # no preprocessing happened
    (run,) = find_runs(embedded_tracking_uri(tmp_path / "outputs" / "default"), "higgs-train")
    assert run["status"] == "FAILED" and "GPU" in run["tags"]["error"]
