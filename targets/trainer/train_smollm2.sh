#!/usr/bin/env bash
# Train the three task adapters on SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantised by
# transformers) into models/smollm2/<task>/. Uses CUDA when present; on this repository's
# 2-core CPU machine each task takes roughly 10-20 min. Run from anywhere:
#     bash targets/trainer/train_smollm2.sh            # all tasks
#     bash targets/trainer/train_smollm2.sh intent     # one task
#     bash targets/trainer/train_smollm2.sh all        # the jointly trained multi-task adapter
#                                                      # (models/smollm2/multi: r=24, 740 steps)
# Needs: `edgelora fetch smollm2` (the base), .venv with targets/trainer/requirements.txt, and
# `cargo build --release -p edgelora-cli` for the adapter.gguf export.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# steps per task, as committed in models/smollm2/ (normalize's hour arithmetic needs the most;
# 80 steps gave it 59.5%, 300 steps 85%); STEPS=N overrides all
# `all`: one adapter on the union of the three train splits with the three adapters' rank and
# steps summed (r = 3 x 8, alpha scaled with it so alpha/r stays 2), the multi-task upper bound
declare -A DEFAULT_STEPS=([intent]=160 [reply]=80 [normalize]=500 [all]=740)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(intent reply normalize)
for task in "${tasks[@]}"; do
  steps=${STEPS:-${DEFAULT_STEPS[$task]}}
  rank=8 alpha=16 out="models/smollm2/$task"
  [ "$task" = all ] && rank=24 alpha=48 out=models/smollm2/multi
  $PY targets/trainer/train.py --base smollm2 --task "$task" --steps "$steps" --rank $rank --alpha $alpha \
      --targets qv --lr 2e-3 --batch 16 --seed 0 --save-dtype f16 --eval-batch 100 --log-every 5 \
      --out "$out"
done
