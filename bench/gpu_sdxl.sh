#!/usr/bin/env bash
# SDXL-sized checks for a GPU machine (random weights built from config on the GPU; nothing is downloaded):
#   trainer speed and peak memory of pivotal at 1024 px in bf16, batch 1 and 4, with and without gradient
#   checkpointing, through the real train() (models/trainer/sdxl_bench.py), as JSON in OUT_DIR.
# The machine lacks diffusers and has other transformers/peft versions: the pinned ones travel as wheels in
# .whl/ (ignored by git). Once, on a machine with pip access:   bash bench/gpu_sdxl.sh --wheels
# Then on the GPU machine, carrying .whl:                    bash bench/gpu_sdxl.sh OUT_DIR
set -euo pipefail
if [ "${1:-}" = --wheels ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
    diffusers==0.42.1 peft==0.21.2 transformers==5.24.0 importlib_metadata==10.2.0
  ls -la .whl
  exit 0
fi
out=${1:-bench/results}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -m models.trainer.sdxl_bench --pipeline /tmp/sdxl --steps "${STEPS:-20}" --warmup "${WARMUP:-5}" \
  --json "$out/trainer_speed_sdxl_bf16.json"
