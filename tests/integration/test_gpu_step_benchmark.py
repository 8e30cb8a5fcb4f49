"""``benchmarks/gpu_step.py --tiny`` as CI runs it: the released 3B configuration's parameter count, the project step
and the bare loop on the tiny model, finite losses, the JSON summary line, and no Ray on the import path (a bare GPU
machine may not have Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_COMMAND = "python benchmarks/gpu_step.py --tiny --profile"

pytestmark = pytest.mark.integration


def test_tiny_benchmark_runs_both_loops_without_ray():
    assert f"`{README_COMMAND}`" in (ROOT / "README.md").read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *README_COMMAND.split()[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "boson_multimodal" in imported  # the -X importtime listing is real
    assert not {m for m in imported if m.split(".")[0] in ("ray", "mlflow")}

    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["released_parameters"] == 5_771_283_456
    assert summary["all_finite"] is True
    runs = {(r["config"], r["loop"]): r for r in summary["runs"]}
    assert set(runs) == {(c, loop) for c in ("192x2:r16", "192x2:ckpt:r16") for loop in ("project", "bare")}
    for run in runs.values():
        assert run["tokens_per_step"] == 2 * 192
        assert run["tokens_per_second"] > 0 and run["step_seconds"] > 0
        assert run["activation_memory_gib"] > 0
        assert run["profile"]["leaf_ops"] > 0 and run["profile"]["host_syncs"] > 0
    assert set(summary["project_over_bare_step_time"]) == {"192x2:r16", "192x2:ckpt:r16"}
    # Checkpointing keeps fewer activations than the plain step (both loops, same rows).
    for loop in ("project", "bare"):
        plain, ckpt = runs[("192x2:r16", loop)], runs[("192x2:ckpt:r16", loop)]
        assert ckpt["activation_memory_gib"] < plain["activation_memory_gib"]
    # The project step's losses equal themselves with and without checkpointing (same seed, same rows).
    assert runs[("192x2:r16", "project")]["losses"] == pytest.approx(runs[("192x2:ckpt:r16", "project")]["losses"])
    assert not (ROOT / "outputs" / "gpu_step").exists()  # the benchmark writes nothing


def test_compiled_layers_train_like_eager_ones():
    """``--compile`` (each decoder layer's computation under ``torch.compile``, inductor on CPU here) on the project
    step, with and without activation checkpointing: the same losses as eager layers (LoRA dropout 0, so no random
    masks differ), no graph break anywhere in a layer (the route is found outside the compiled part), and fewer
    operator launches per step than eager, also with checkpointing (where compile once ran the layers eagerly)."""

    def run(*flags: str) -> dict[str, dict]:
        command = [sys.executable, "benchmarks/gpu_step.py", "--tiny", "--lora_dropout", "0", "--loops", "project"]
        command += ["--configs", "192x2", "192x2:ckpt", "--steps", "2", "--profile", *flags]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_LOGS": "graph_breaks"}
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Graph break" not in proc.stderr, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["compile"] is bool(flags)
        return {r["config"]: r for r in summary["runs"]}

    eager, compiled = run(), run("--compile")
    assert set(eager) == set(compiled) == {"192x2:r16", "192x2:ckpt:r16"}
    for config, want in eager.items():
        got = compiled[config]
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-5), config
        assert got["profile"]["leaf_ops"] < 0.8 * want["profile"]["leaf_ops"], config
