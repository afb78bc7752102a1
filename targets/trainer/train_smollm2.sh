#!/usr/bin/env bash
# Train the three task adapters on SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantised by
# transformers) into models/smollm2/<task>/. Uses CUDA when present; on this repository's
# 2-core CPU machine each task takes roughly 10-20 min. Run from anywhere:
#     bash targets/trainer/train_smollm2.sh            # all tasks
#     bash targets/trainer/train_smollm2.sh intent     # one task
# Needs: `edgelora fetch smollm2` (the base), .venv with targets/trainer/requirements.txt, and
# `cargo build --release -p edgelora-cli` for the adapter.gguf export.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# steps per task, as committed in models/smollm2/ (normalize's hour arithmetic needs the most;
# 80 steps gave it 59.5%, 300 steps 85%); STEPS=N overrides all
declare -A DEFAULT_STEPS=([intent]=160 [reply]=80 [normalize]=500)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(intent reply normalize)
for task in "${tasks[@]}"; do
  steps=${STEPS:-${DEFAULT_STEPS[$task]}}
  $PY targets/trainer/train.py --base smollm2 --task "$task" --steps "$steps" --rank 8 --alpha 16 \
      --targets qv --lr 2e-3 --batch 16 --seed 0 --save-dtype f16 --eval-batch 100 --log-every 5 \
      --out "models/smollm2/$task"
done
