#!/usr/bin/env bash
# Runs every check the project has: formatting, lints, the no_std cross build, and all tests
# (including parity against Hugging Face on SmolLM2, which is fetched first if missing).
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup show active-toolchain   # installs the pinned toolchain and targets from rust-toolchain.toml
rustup target add thumbv7em-none-eabihf thumbv8m.main-none-eabihf riscv32imac-unknown-none-elf aarch64-unknown-linux-gnu >/dev/null

echo "== model: SmolLM2-135M-Instruct (Q4_1) for parity tests"
if [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cargo run --quiet --release -p edgelora-cli -- fetch smollm2 || echo "WARNING: fetch failed; SmolLM2 tests will print SKIPPED"
fi

echo "== fmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== docs (core, no broken intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc -p edgelora --no-deps --features std

echo "== no_std: core for thumbv7em, thumbv8m.main (alloc) and riscv32imac (no alloc, no std)"
cargo build -p edgelora --no-default-features --target thumbv7em-none-eabihf --release
cargo build -p edgelora --no-default-features --features alloc --target thumbv8m.main-none-eabihf --release
cargo build -p edgelora --no-default-features --target riscv32imac-unknown-none-elf --release
echo "== no_std: each KV cache feature alone (firmware picks one), warnings denied"
for f in kv-f16 kv-q8_0; do
  RUSTFLAGS="-D warnings" cargo build -p edgelora --no-default-features --features "$f" \
    --target thumbv7em-none-eabihf --release --target-dir target/featcheck
done

echo "== aarch64 NEON kernels under qemu-user"
bash scripts/test-aarch64.sh

echo "== task data: the committed splits are what the generators produce (pure Python, seeded)"
tmp_data=$(mktemp -d)
python3 targets/trainer/tasks.py data --out "$tmp_data" >/dev/null
diff -r "$tmp_data" targets/trainer/data
rm -rf "$tmp_data"

echo "== python: .venv with the official openai client (the serve test drives the server with it)"
if [ ! -x .venv/bin/pip ]; then python3 -m venv .venv || echo "WARNING: python3 -m venv failed"; fi
if [ -x .venv/bin/pip ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check openai || echo "WARNING: openai not installed; its serve test prints SKIPPED"
fi

echo "== tests"
# Release-like optimisation for tests is set in Cargo.toml ([profile.test]); parity runs a
# 135M model teacher-forced. --nocapture shows the parity figures and any SKIPPED lines.
cargo test --workspace --all-targets --no-fail-fast -- --nocapture

echo "== python bindings: wheel built with maturin, installed in a clean venv, pytest"
bash targets/python/build_and_test.sh

echo "== crates: cargo publish --dry-run (packaged and built as crates.io would)"
# Cargo verifies each crate against the others through a local overlay registry under
# <target>/package/tmp-registry. It unpacks that registry's crates once into
# $CARGO_HOME/registry/src/-<hash of that path>/ and never again, and treats registry crates'
# build artifacts as immutable: a machine that ran this before from the same checkout path
# (CI keeps its path and cargo home) compiled the *old* sources of edgelora 0.1.0 and failed
# on a function added since. So: its own target dir, emptied, and those unpacked copies removed.
rm -rf target/publish-check "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/edgelora-*
CARGO_TARGET_DIR=target/publish-check \
  cargo publish --dry-run --allow-dirty -p edgelora -p edgelora-cuda -p edgelora-ffi -p edgelora-cli
rm -rf target/publish-check

echo "== cuda feature (no GPU here: builds, NVRTC compile of every kernel; GPU tests print SKIPPED)"
if [ -x .venv/bin/pip ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc-cu12 || echo "WARNING: nvrtc wheel not installed"
fi
NVRTC_LIB="$(ls -d "$PWD"/.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -1 || true)"
cargo clippy -p edgelora-cuda --features cuda --all-targets --no-deps -- -D warnings
cargo build -p edgelora-cli --features cuda
if [ -n "$NVRTC_LIB" ]; then
  LD_LIBRARY_PATH="$NVRTC_LIB:${LD_LIBRARY_PATH:-}" EDGELORA_REQUIRE_NVRTC=1 cargo test -p edgelora-cuda --features cuda -- --nocapture
else
  echo "SKIPPED: NVRTC compile check (nvidia-cuda-nvrtc-cu12 wheel unavailable)"
  cargo test -p edgelora-cuda --features cuda -- --nocapture
fi
