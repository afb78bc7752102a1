#!/usr/bin/env bash
# Miri (an interpreter that detects undefined behaviour: out-of-bounds and misaligned access,
# invalid values, aliasing violations, leaks) over the core's unit tests and the regression
# corpus (tests/fuzz-regressions/: every loader on ~160 malformed inputs, a bind and a forward
# pass of the tiny model, the stream loader, the PEFT reader, the tokenizer).
#
#   scripts/miri.sh [TEST FILTER]
#
# Under Miri the kernel dispatcher finds only the portable kernel (`cfg(miri)` in
# core/src/kernels/mod.rs: Miri runs neither `cpuid` nor the SIMD intrinsics), so this checks
# the scalar reference and portable paths, the loaders and the state arena (`State`'s carving
# of one caller buffer, `scratch_blocks`' byte view of f32 scratch), not the AVX2/AVX-512/NEON
# kernels; those are checked against the reference by tests/tests/kernels.rs and under
# AddressSanitizer by the fuzz targets.
#
# Not in CI: it takes tens of minutes on a 2-core machine (Miri interprets ~1000x slower than
# native code). The latest result is recorded in the issue-8 report and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add miri rust-src --toolchain nightly >/dev/null 2>&1 || true
# The regression test reads its corpus and fixtures from disk.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
# libm's x86_64 `sqrtf` is inline assembly, which Miri cannot run: build it with its portable
# soft-float code (a feature of the dependency, enabled for this run only; naming `edgelora` as
# a package is what lets `--features libm/...` reach it from the tests crate).
soft=(--features libm/force-soft-floats)
filter=("$@")
start=$(date +%s)
echo "== core unit tests"
cargo +nightly miri test -p edgelora "${soft[@]}" --lib -- "${filter[@]}"
echo "== regression corpus"
cargo +nightly miri test -p edgelora-tests -p edgelora "${soft[@]}" --test regressions -- "${filter[@]}"
echo "miri: passed in $(( $(date +%s) - start )) s"
