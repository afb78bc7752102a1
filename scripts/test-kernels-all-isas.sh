#!/usr/bin/env bash
# Run the kernel and fast-path model tests once per ISA this machine has, with the dispatcher
# forced through EDGELORA_ISA; `env_forced_isa_actually_runs` fails if the forced ISA is not
# the one that ran (matrixmultiply's MMTEST_ENSUREFEATURE pattern). ISAs the CPU lacks are
# reported as SKIPPED. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
have() {
    case "$1" in
        portable) return 0 ;;
        avx2) grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo ;;
        avx512) for f in avx512f avx512bw avx512vl avx512_vnni avx512vbmi; do grep -qw "$f" /proc/cpuinfo || return 1; done ;;
        *) return 1 ;;
    esac
}
for isa in portable avx2 avx512; do
    if ! have "$isa"; then
        echo "SKIPPED $isa: this CPU lacks it"
        continue
    fi
    echo "== EDGELORA_ISA=$isa"
    EDGELORA_ISA=$isa cargo test -p edgelora-tests --test kernels --test kernels_model "$@"
done
