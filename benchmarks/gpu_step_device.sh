#!/usr/bin/env bash
# benchmarks/gpu_step.py on a bare GPU machine (the device tool's H200: Python 3.12 with torch, no Ray, no
# boson-multimodal, no network), as one prepared run that fits the tool's 10-minute command limit.
#
#   here:    scripts/device_wheels.sh                       # once: .whl/ (about 17 MB, git-ignored)
#   device:  run(command="bash benchmarks/gpu_step_device.sh", carry=[".whl"], timeout_s=600)
#
# Each step's log and JSON summary line land in $OUT (or outputs/gpu_step_device); a step that fails (an
# out-of-memory size probe, say) is reported and the next one runs. The steps run in order of what they decide and
# share one deadline (BUDGET_S, default 520 s, inside the tool's 600 s limit and a 15-minute lease that must also
# pay the machine's start), so a slow step shortens the last ones instead of losing every log.
set -uo pipefail
deadline=$((SECONDS + ${BUDGET_S:-520}))
cd "$(dirname "$0")/.."
out="${OUT:-outputs/gpu_step_device}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, peft, boson_multimodal; print(torch.__version__, transformers.__version__, peft.__version__)" \
  | tee -a "$out/gpu.txt" || exit 1
python3 -c "from boson_multimodal.audio_processing.higgs_audio_tokenizer import HiggsAudioTokenizer; print('audio tokenizer imports: ok')" 2>&1 | tail -1 \
  | tee -a "$out/gpu.txt"  # the encode step's needs; a failure here costs only that step

step() {  # step NAME CAP COMMAND...: one benchmark run, its log in $out/NAME.log, at most CAP s and the deadline
  local name=$1 cap=$2; shift 2
  local left=$((deadline - SECONDS - 5))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 30 ]; then echo "== $name: skipped, ${left}s left before the deadline"; return; fi
  echo "== $name (at ${SECONDS}s, up to ${cap}s): $*"
  timeout "$cap" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -E "project:|bare:|per call:|built the|Error|error" "$out/$name.log" | cut -c1-200
  [ $rc -eq 0 ] || echo "   ($name exited $rc$([ $rc -eq 124 ] && echo ': out of time'))"
}

gpu_step=(python3 benchmarks/gpu_step.py)
# The issue's table, project step vs bare loop, today's defaults (fp32 adapters, dropout 0.05), with sync counts.
step defaults 150 "${gpu_step[@]}" --configs 4096x1 4096x1:ckpt 4096x4:ckpt 8192x1 --profile
# The levers: bf16 adapters and no LoRA dropout; then torch.compile of each decoder layer on top.
step levers 120 "${gpu_step[@]}" --configs 4096x1 4096x1:ckpt 4096x1:ckpt14 4096x2 --adapter_dtype bf16 \
  --lora_dropout 0 --loops project
step compiled 180 "${gpu_step[@]}" --configs 4096x1 4096x1:ckpt --adapter_dtype bf16 --lora_dropout 0 --compile \
  --loops project
# The encoding table's "per GPU" column: the real-size audio tokenizer, one clip per call vs stacked, codes checked.
step encode 150 python3 benchmarks/encode_device.py --clip_seconds 2 10 --clips 32 --batches 1 4 8 16 32
# Largest tokens per step: peak memory of single long rows, with and without checkpointing (80 GB = 74.5 GiB).
step size_plain 90 "${gpu_step[@]}" --configs 12288x1 16384x1 --loops project --steps 2 --warmup 1
step size_ckpt 120 "${gpu_step[@]}" --configs 32768x1:ckpt 49152x1:ckpt --loops project --steps 2 --warmup 1
# At most 8 files come back from the device tool: gpu.txt, the six logs and this.
grep -h '^{' "$out"/*.log >"$out/summaries.jsonl"
echo "done at ${SECONDS}s"
