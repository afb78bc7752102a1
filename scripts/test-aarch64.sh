#!/usr/bin/env bash
# Run the kernel tests for aarch64 (NEON) under qemu-user.
#
# Needs: rustup target aarch64-unknown-linux-gnu; Debian packages qemu-user,
# gcc-aarch64-linux-gnu (install with INSTALL=1, as root). Extra arguments go to cargo test,
# e.g. `scripts/test-aarch64.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${INSTALL:-0}" == 1 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    rustup target add aarch64-unknown-linux-gnu
fi
for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool not installed (INSTALL=1 $0)"; exit 0; }
done
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Each ISA the emulated CPU has (qemu's default `max` CPU has NEON and dotprod) is tested by
# `kernels`; EDGELORA_ISA makes `env_forced_isa_actually_runs` fail unless that ISA is what the
# dispatcher ran.
for isa in neon neon-dotprod; do
    echo "== EDGELORA_ISA=$isa (qemu-aarch64)"
    EDGELORA_ISA=$isa cargo test --target aarch64-unknown-linux-gnu -p edgelora-tests \
        --test kernels --test kernels_types "$@"
done
