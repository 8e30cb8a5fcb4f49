"""The prepared GPU run (``benchmarks/gpu_step_device.sh``, wheels from ``scripts/device_wheels.sh``) cannot run in
CI, which has no GPU; what can go wrong before a GPU is reached is checked here: the shell parses, every ``step``'s
arguments parse as ``gpu_step.py`` (or ``encode_device.py``) flags with valid configurations, and every wheel is
pinned in the lock. That the wheels are all a bare machine lacks was checked by importing both benchmarks with only
the device image's packages on the path; a missing one (cffi, for soundfile) cost the 2026-12-04 run its encode step."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from test_training_core import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_step_device.sh"


def _steps() -> list[tuple[str, list[str]]]:
    """(name, command) of every ``step NAME CAP COMMAND...`` line, continuation lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        if line.startswith("step "):
            name, cap, *command = shlex.split(line)[1:]
            assert 30 <= int(cap) <= 240, name
            steps.append((name, command))
    return steps


def test_every_step_of_the_device_script_is_a_valid_benchmark_run():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    steps = _steps()
    assert [name for name, _ in steps] == ["defaults", "levers", "compiled", "encode", "size_plain", "size_ckpt"]
    gpu_step, encode = load_benchmark("gpu_step"), load_benchmark("encode_device")
    names = set()
    for name, command in steps:
        if command[0] == "${gpu_step[@]}":
            args = gpu_step.parse_args(command[1:])
            assert not args.tiny
            for text in args.configs:
                run = gpu_step.RunConfig.parse(text, args.lora_r)
                assert run.name.split(":r")[0] == text  # parsed back to what the script asked for
                assert run.checkpoint_layers <= 28
                names.add(run.name)
        else:
            assert command[:2] == ["python3", "benchmarks/encode_device.py"], name
            args = encode.parse_args(command[2:])
            assert not args.tiny and 1 in args.batches and max(args.batches) > 1
    assert {"4096x1:r16", "4096x1:ckpt:r16", "4096x4:ckpt:r16", "8192x1:r16", "4096x1:ckpt14:r16"} <= names


def test_every_device_wheel_is_pinned_in_the_lock():
    text = (ROOT / "scripts" / "device_wheels.sh").read_text()
    names = [
        name for array in ("names", "source_only") for name in re.search(array + r"=\(([^)]*)\)", text).group(1).split()
    ]
    lock = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "requirements" / "lock.txt").open()}
    assert {"transformers", "peft", "boson-multimodal"} <= {n.replace("_", "-") for n in names}
    assert {n.lower().replace("_", "-") for n in names} <= lock
