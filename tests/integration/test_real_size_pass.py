"""``benchmarks/real_size.py --tiny``: the full-size pass's CPU-size twin (issue 21 item 2), as CI runs it.

The same stages and code path as the full-size pass (the released configuration's parameter count checked, the
model written in the released sharded layout with random bf16 weights and the released tokenizer size, then the
product's own commands: train 2 steps with a checkpoint per step, resume from step 1, export --merge, PeftModel on
the exported adapter, generate through the merged model), on a 2-layer, 64-wide model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_COMMAND = "python benchmarks/real_size.py --tiny"

pytestmark = pytest.mark.integration


def test_tiny_pass_runs_every_stage_and_resumes_bit_exactly(tmp_path):
    assert README_COMMAND in (ROOT / "README.md").read_text()
    root = tmp_path / "pass"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/real_size.py", "--tiny", "--root", str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert list(summary["stages"]) == ["build", "train", "resume", "export", "peft", "generate"]
    for name, stage in summary["stages"].items():
        assert stage["rc"] == 0, name
        assert stage["seconds"] > 0 and stage["peak_rss_gib"] > 0, name  # the figures the full pass reports
    model = summary["model"]
    assert model["released_parameters"] == 5_771_283_456
    assert model["layers"] == 2 and model["shards"] > 1  # the index spans several files, as released
    assert model["weight_bytes"] == 2 * model["model_parameters"]  # bf16 on disk
    resume = summary["checks"]["resume"]
    assert resume["steps_trained_after_resume"] == [2]
    assert resume["step2_loss_first_run"] is not None and resume["rel_diff"] <= 1e-6
    assert summary["checks"]["peft"]["lora_tensors"] > 0 and summary["checks"]["peft"]["mismatched"] == []
    assert summary["checks"]["generate"]["samples"] > 0
    assert not root.exists()  # everything it wrote is deleted
