"""The prepared GPU run (``benchmarks/gpu_step_device.sh``, wheels from ``scripts/device_wheels.sh``) cannot run in
CI, which has no GPU; what can go wrong before a GPU is reached is checked here: the shell parses, every ``step``'s
arguments parse as ``gpu_step.py`` flags with valid configurations, and every wheel is pinned in the lock."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from test_training_core import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_step_device.sh"


def test_every_step_of_the_device_script_is_a_valid_gpu_step_run():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    bench = load_benchmark("gpu_step")
    steps = [shlex.split(line)[1:] for line in SCRIPT.read_text().splitlines() if line.startswith("step ")]
    assert [name for name, *_ in steps] == ["defaults", "levers", "compiled", "size_plain", "size_ckpt"]
    names = set()
    for _, *argv in steps:
        args = bench.parse_args(argv)
        assert not args.tiny
        for text in args.configs:
            run = bench.RunConfig.parse(text, args.lora_r)
            assert run.name.split(":r")[0] == text  # parsed back to what the script asked for
            assert run.checkpoint_layers <= 28
            names.add(run.name)
    assert {"4096x1:r16", "4096x1:ckpt:r16", "4096x4:ckpt:r16", "8192x1:r16", "4096x1:ckpt14:r16"} <= names


def test_every_device_wheel_is_pinned_in_the_lock():
    text = (ROOT / "scripts" / "device_wheels.sh").read_text()
    names = re.search(r"names=\(([^)]*)\)", text).group(1).split()
    lock = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "requirements" / "lock.txt").open()}
    assert {"transformers", "peft", "boson-multimodal"} <= {n.replace("_", "-") for n in names}
    assert {n.lower().replace("_", "-") for n in names} <= lock
