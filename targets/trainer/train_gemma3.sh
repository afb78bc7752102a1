#!/usr/bin/env bash
# Train the three task adapters on Gemma 3 270M (the pretrained model's Q4_K_M GGUF,
# dequantised by transformers) into models/gemma3/<task>/. Uses CUDA when present.
# Run from anywhere:
#     bash targets/trainer/train_gemma3.sh            # all tasks
#     bash targets/trainer/train_gemma3.sh intent     # one task
#     THREADS=1 STEPS=40 bash targets/trainer/train_gemma3.sh reply
# Needs: `edgelora fetch gemma3-270m` (the base; Gemma Terms of Use), .venv with
# targets/trainer/requirements.txt, and `cargo build --release -p edgelora-cli` for the
# adapter.gguf export.
#
# The adapters are not committed: under the Gemma Terms of Use (https://ai.google.dev/gemma/terms)
# weights trained on Gemma are "Model Derivatives", which this repository does not redistribute;
# models/gemma3/ is gitignored and this script is the way to get them.
#
# Measured on this repository's machine (no GPU; 1 thread, 2 vCPUs shared with other jobs):
# 0.13 / 0.08 / 0.20 steps/s at batch 16 for intent / reply / normalize, i.e. 13-22 min of
# training per task, plus ~1.5 min to load the base (twice: training and the re-load check)
# and 0.5-1.5 min per 200-answer PyTorch evaluation (four of them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# steps per task as used for the README's accuracy table; STEPS=N overrides all
declare -A DEFAULT_STEPS=([intent]=120 [reply]=100 [normalize]=150)
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(intent reply normalize)
for task in "${tasks[@]}"; do
  steps=${STEPS:-${DEFAULT_STEPS[$task]}}
  $PY targets/trainer/train.py --base gemma3-270m --task "$task" --steps "$steps" --rank 8 --alpha 16 \
      --targets qv --lr 2e-3 --batch 16 --seed 0 --save-dtype f16 --eval-batch 50 --log-every 5 \
      "${threads[@]}" --out "models/gemma3/$task"
done
