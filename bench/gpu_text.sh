#!/usr/bin/env bash
# Text trainer speed on a GPU machine with a 0.5B-class model (random weights in Qwen2.5-0.5B's shape,
# 151,936-row padded vocabulary, tied embeddings; nothing is downloaded): steps/s and peak memory of
# each mode at batch 8 of ~256-token examples, attention LoRA, then pivotal with attention+MLP LoRA.
# UNTESTED: written without a GPU machine; the same commands run on CPU (slowly) with --steps 2.
# Needs the pinned transformers/peft/diffusers as wheels in .whl/ where the machine lacks them.
# Usage: bash bench/gpu_text.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -m models.text.bench --qwen-random /tmp/qwen05 --batch-size 8 --example-tokens 256 --steps 30 --warmup 5 \
  --json "$out/text_trainer_qwen05_gpu.json"
python3 -m models.text.bench --qwen-random /tmp/qwen05 --batch-size 8 --example-tokens 256 --steps 20 --warmup 3 \
  --modes pivotal --lora-targets attention+mlp --json "$out/text_trainer_qwen05_gpu_mlp.json"
