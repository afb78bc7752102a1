#!/usr/bin/env bash
# Rebuild everything under models/tiny/ from scratch: task data, the tiny base, three adapters.
# About 15 min on 2 free CPU cores (much longer when the cores are busy); run from anywhere.
# Set SKIP_BASE=1 to keep the committed base and retrain only the adapters.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}

$PY targets/trainer/tasks.py data
if [ "${SKIP_BASE:-0}" != 1 ]; then
  $PY targets/trainer/train_tiny_base.py            # models/tiny/{tiny-base.gguf,tiny-base.spm.model,base.json}
fi
# The adapter binary export (adapter.gguf) needs the CLI: cargo build --release -p edgelora-cli
for task in intent reply normalize; do
  $PY targets/trainer/train.py --base tiny --task "$task" --steps 2000 --rank 4 --alpha 16 \
      --targets attn --lr 6e-3 --batch 16 --seed 0 --out "models/tiny/$task"
done
# The jointly trained multi-task adapter (upper bound): the union of the three train splits,
# the three adapters' rank and steps summed (alpha scaled with the rank: alpha/r stays 4).
$PY targets/trainer/train.py --base tiny --task all --steps 6000 --rank 12 --alpha 48 \
    --targets attn --lr 6e-3 --batch 16 --seed 0 --threads 1 --out models/tiny/multi
