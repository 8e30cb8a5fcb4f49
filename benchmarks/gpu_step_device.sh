#!/usr/bin/env bash
# benchmarks/gpu_step.py on a bare GPU machine (the device tool's H200: Python 3.12 with torch, no Ray, no
# boson-multimodal, no network), as one prepared run that fits the tool's 10-minute command limit.
#
#   here:    scripts/device_wheels.sh                       # once: .whl/ (about 16 MB, git-ignored)
#   device:  run(command="bash benchmarks/gpu_step_device.sh", carry=[".whl"], timeout_s=600)
#
# Each step's log and JSON summary line land in $OUT (or outputs/gpu_step_device); a step that fails (an
# out-of-memory size probe, say) is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-outputs/gpu_step_device}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, peft, boson_multimodal; print(torch.__version__, transformers.__version__, peft.__version__)" \
  | tee -a "$out/gpu.txt" || exit 1

step() {  # step NAME ARGS...: one gpu_step.py run, its log in $out/NAME.log
  local name=$1; shift
  echo "== $name: gpu_step.py $*"
  timeout 240 python3 benchmarks/gpu_step.py "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -E "project:|bare:|Error|error" "$out/$name.log" | cut -c1-220
  [ $rc -eq 0 ] || echo "   ($name exited $rc)"
}

# The issue's table, project step vs bare loop, today's defaults (fp32 adapters, dropout 0.05), with sync counts.
step defaults --configs 4096x1 4096x1:ckpt 4096x4:ckpt 8192x1 --profile
# The levers: bf16 adapters and no LoRA dropout; then torch.compile of each decoder layer on top.
step levers --configs 4096x1 4096x1:ckpt 4096x1:ckpt14 4096x2 --adapter_dtype bf16 --lora_dropout 0 --loops project
step compiled --configs 4096x1 4096x1:ckpt --adapter_dtype bf16 --lora_dropout 0 --compile --loops project
# Largest tokens per step: peak memory of single long rows, with and without checkpointing (80 GB = 74.5 GiB).
step size_plain --configs 12288x1 16384x1 --loops project --steps 2 --warmup 1
step size_ckpt --configs 32768x1:ckpt 49152x1:ckpt --loops project --steps 2 --warmup 1
