#!/usr/bin/env bash
# Wheels that benchmarks/gpu_step_device.sh installs on a bare GPU machine (Python 3.12, x86-64, no network).
# Such a machine has torch, numpy, pyarrow, pyyaml, accelerate, scipy, numba and pandas but not this project's
# pins of transformers / tokenizers / huggingface_hub / peft, nor boson_multimodal and its import-time needs (those
# of the model and of the audio tokenizer; checked by importing both with only the device's packages on the path).
# Versions come from requirements/lock.txt. Run from the repository root; the wheels land in .whl/ (git-ignored),
# about 17 MB, which the device tool carries (`carry: [".whl"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
# The model's needs, then those of upstream's audio tokenizer (benchmarks/encode_device.py): the codec packages.
names=(transformers tokenizers huggingface_hub peft boson_multimodal loguru dacite librosa audioread soundfile soxr
       pooch decorator lazy-loader platformdirs cffi pycparser
       omegaconf vector-quantize-pytorch einx frozendict torch-einops-utils descript-audio-codec descript-audiotools
       docstring_parser ffmpy flatten-dict importlib_resources julius)
# Published as source only (pure Python): built into wheels here, which install anywhere.
source_only=(argbind randomname)
pin() {
  grep -i -E "^${1//[-_]/[-_]}==" requirements/lock.txt || { echo "not in the lock: $1" >&2; exit 1; }
}
pins=()
for name in "${names[@]}"; do pins+=("$(pin "$name")"); done
source_pins=()
for name in "${source_only[@]}"; do source_pins+=("$(pin "$name")"); done
mkdir -p .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
python -m pip wheel -q --no-deps -w .whl "${source_pins[@]}"
du -sh .whl
