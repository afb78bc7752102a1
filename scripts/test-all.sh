#!/usr/bin/env bash
# Runs every check the project has: formatting, lints, the no_std cross build, and all tests
# (including parity against Hugging Face on SmolLM2, which is fetched first if missing).
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup show active-toolchain   # installs the pinned toolchain and targets from rust-toolchain.toml
rustup target add thumbv7em-none-eabihf thumbv8m.main-none-eabihf aarch64-unknown-linux-gnu >/dev/null

echo "== model: SmolLM2-135M-Instruct (Q4_1) for parity tests"
if [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cargo run --quiet --release -p edgelora-cli -- fetch smollm2 || echo "WARNING: fetch failed; SmolLM2 tests will print SKIPPED"
fi

echo "== fmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== no_std: core for thumbv7em-none-eabihf (no alloc, no std)"
cargo build -p edgelora --no-default-features --target thumbv7em-none-eabihf --release
cargo build -p edgelora --no-default-features --features alloc --target thumbv8m.main-none-eabihf --release

echo "== aarch64 NEON kernels under qemu-user"
bash scripts/test-aarch64.sh

echo "== tests"
# Release-like optimisation for tests is set in Cargo.toml ([profile.test]); parity runs a
# 135M model teacher-forced. --nocapture shows the parity figures and any SKIPPED lines.
cargo test --workspace --all-targets -- --nocapture
