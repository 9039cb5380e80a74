#!/usr/bin/env bash
# SD-1.5-sized checks for a GPU machine (random weights; nothing is downloaded):
#   1. trainer speed: steps/s and peak memory of each mode at 512 px, batch 4, bf16;
#   2. the booster's dataset builder, target fitting and training commands run on an SD-1.5-sized model.
# Needs diffusers (and the pinned peft) as wheels in .whl/ where the machine lacks them.
# Usage: bash bench/gpu_sd15.sh OUT_DIR [all|speed|booster]
set -euo pipefail
out=${1:-bench/results}
stage=${2:-all}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 -c "from pathlib import Path; from models.trainer.bench import build_sd15_random as b; b(Path('/tmp/sd15'))"
if [ "$stage" != booster ]; then
python3 -m models.trainer.bench --sd15-random /tmp/sd15 --mixed-precision bf16 --steps 30 --warmup 5 \
  --json "$out/trainer_speed_sd15_bf16.json"
python3 -m models.trainer.bench --sd15-random /tmp/sd15 --mixed-precision no --steps 20 --warmup 3 \
  --modes pivotal --json "$out/trainer_speed_sd15_fp32.json"
fi
[ "$stage" = speed ] && exit 0
# Words our SD-1.5-sized stand-in's tokenizer (leap-tiny's) keeps whole; on real SD 1.5 use any words.
printf 'star\ncircle\nred\nblue\n' > /tmp/words.txt
python3 -m models.booster.dataset --base-model /tmp/sd15 --out /tmp/sd15-words --word-list /tmp/words.txt \
  --images 8 --steps 4
python3 -m models.booster.targets --base-model /tmp/sd15 --data /tmp/sd15-words --steps 4 --chunk 2 \
  --out /tmp/sd15-targets 2>&1 | tail -n 1
python3 -m models.booster.train_booster --base-model /tmp/sd15 --data /tmp/sd15-words --targets /tmp/sd15-targets \
  --world-share 0 --steps 4 --sets 2 --image-size 128 --out /tmp/sd15-booster --work-dir /tmp/sd15-booster-work \
  2>&1 | tail -n 3
ls -la /tmp/sd15-booster && cp /tmp/sd15-booster/booster.json "$out/sd15_booster_config.json"
