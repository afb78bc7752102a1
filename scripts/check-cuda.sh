#!/usr/bin/env bash
# GPU parity check for the optional CUDA backend (targets/cuda). The GPU machine has no cargo
# and no network, and one call takes at most 64 MiB of files (the work tree, ~10 MB, included),
# while SmolLM2 is 94 MiB; hence:
#
#   1. here (cargo, no GPU):   bash scripts/check-cuda.sh prepare
#        builds the CLI and the GPU test binaries with --features cuda (release, stripped),
#        makes two SmolLM2 adapters, precompiles the kernels to PTX, splits SmolLM2 into
#        target/cuda-check/stage-{a,b,c}, and makes a 3-layer SmolLM2 with adapters in alt/.
#   2. GPU machine, call 1:    bash scripts/check-cuda.sh stage   carry ["target/cuda-check/stage-a"]
#      GPU machine, call 2:    bash scripts/check-cuda.sh stage   carry ["target/cuda-check/stage-b"]
#   3. GPU machine, call 3:    bash scripts/check-cuda.sh run     carry ["target/cuda-check/bin", "target/cuda-check/stage-c"]
#        (each call within the machine's 30 s warm period, or the staged parts are gone).
#        Joins and checks SmolLM2, runs the kernel and model parity tests (failing, not
#        skipping, without a GPU), `edgelora parity` on SmolLM2 without and with two adapters,
#        and `logits --backend cuda`; the log is copied to $OUT/check-cuda.log.
#   One call only:             bash scripts/check-cuda.sh run     carry ["target/cuda-check/bin", "target/cuda-check/alt"]
#        the same on the first 3 layers of SmolLM2 (said so in the log).
set -uo pipefail
cd "$(dirname "$0")/.."
C=target/cuda-check
STAGE=/tmp/edgelora-cuda-stage
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf

prepare() {
  set -e
  rm -rf "$C" && mkdir -p "$C/bin" "$C/alt" "$C/stage-a" "$C/stage-b" "$C/stage-c"
  cargo build --release -p edgelora-cli --features cuda
  cp target/release/edgelora "$C/bin/"
  cargo test --release -p edgelora-cuda --features cuda --no-run 2>&1 | tee "$C/build.log"
  for t in cuda_kernels cuda_model cuda_nvrtc; do
    exe=$(sed -n "s/.*Executable tests\/$t.rs (\(.*\))/\1/p" "$C/build.log" | tail -1)
    cp "$exe" "$C/bin/$t"
  done
  strip "$C"/bin/* || true
  [ -f "$SMOL" ] || cargo run --quiet --release -p edgelora-cli -- fetch smollm2
  prep() { cargo run --quiet --release -p edgelora-cuda --example cuda_prep -- "$@"; }
  prep adapter "$SMOL" "$C/bin/smol-a1.gguf" all-f16-dora 1
  prep adapter "$SMOL" "$C/bin/smol-a2.gguf" qv-q8 2
  prep truncate "$SMOL" 3 "$C/alt/smol-3l.gguf"
  prep adapter "$C/alt/smol-3l.gguf" "$C/alt/smol-3l-a1.gguf" all-f16-dora 1
  prep adapter "$C/alt/smol-3l.gguf" "$C/alt/smol-3l-a2.gguf" qv-q8 2
  # Kernels as PTX, for a GPU machine whose libnvrtc cannot be found (EDGELORA_CUDA_PTX).
  nv=$(ls -d .venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -1)
  LD_LIBRARY_PATH="${nv:+$nv:}${LD_LIBRARY_PATH:-}" EDGELORA_REQUIRE_NVRTC=1 EDGELORA_PTX_OUT="$PWD/$C/bin/kernels.ptx" "$C/bin/cuda_nvrtc"
  split -b 40000000 -d -a 1 "$SMOL" "$C/smol.part"
  mv "$C/smol.part0" "$C/stage-a/" && mv "$C/smol.part1" "$C/stage-b/" && mv "$C"/smol.part2 "$C/stage-c/"
  sha256sum "$SMOL" | cut -d' ' -f1 > "$C/bin/smol.sha256"
  du -sh "$C"/bin "$C"/alt "$C"/stage-* && echo "prepared: see the steps at the top of $0"
}

stage() {
  mkdir -p "$STAGE" && cp "$C"/stage-*/smol.part* "$STAGE/" && ls -la "$STAGE"
}

run() {
  local log=${OUT:-/tmp}/check-cuda.log bin="$PWD/$C/bin" fails=0 model
  exec > >(tee "$log") 2>&1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  # NVRTC: a toolkit's or PyTorch's libnvrtc if there is one, else the PTX made by `prepare`.
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib 2>/dev/null); do
    ls "$d"/libnvrtc.so* >/dev/null 2>&1 && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
  done
  if ! "$bin/cuda_nvrtc" 2>&1 | grep -q " 1 passed"; then
    echo "no usable libnvrtc: loading the PTX compiled by prepare" && export EDGELORA_CUDA_PTX="$bin/kernels.ptx"
  fi
  local a1="$bin/smol-a1.gguf" a2="$bin/smol-a2.gguf"
  [ -d "$C/stage-c" ] && stage >/dev/null 2>&1
  if [ ! -f "$SMOL" ] && [ -f "$STAGE/smol.part0" ] && [ -f "$STAGE/smol.part1" ] && [ -f "$STAGE/smol.part2" ]; then
    mkdir -p models && cat "$STAGE"/smol.part0 "$STAGE"/smol.part1 "$STAGE"/smol.part2 > "$SMOL.tmp"
    if [ "$(sha256sum "$SMOL.tmp" | cut -d' ' -f1)" = "$(cat "$bin/smol.sha256")" ]; then
      mv "$SMOL.tmp" "$SMOL"
    else
      echo "SmolLM2 reassembly: checksum mismatch" && rm -f "$SMOL.tmp"
    fi
  fi
  if [ -f "$SMOL" ]; then
    model=$SMOL
  else
    model="$C/alt/smol-3l.gguf" a1="$C/alt/smol-3l-a1.gguf" a2="$C/alt/smol-3l-a2.gguf"
    echo "NOTE: full SmolLM2 not staged; the parity runs below use its first 3 layers"
  fi
  export EDGELORA_ROOT=$PWD EDGELORA_REQUIRE_GPU=1
  for t in cuda_nvrtc cuda_kernels cuda_model; do
    echo "== $t" && "$bin/$t" --test-threads 1 --nocapture || fails=$((fails + 1))
  done
  echo "== edgelora parity: $model, no adapter"
  "$bin/edgelora" parity -m "$model" --tokens 504,3575,282,4649,314,7042,30,378 || fails=$((fails + 1))
  echo "== edgelora parity: $model, two adapters"
  "$bin/edgelora" parity -m "$model" --tokens 504,3575,282,4649,314,7042,30,378 \
    --adapter "$a1:0.7" --adapter "$a2:1.3" || fails=$((fails + 1))
  echo "== edgelora logits --backend cuda (top 3, two adapters)"
  "$bin/edgelora" logits -m "$model" --tokens 504,3575,282,4649,314 --top 3 --backend cuda \
    --adapter "$a1:0.7" --adapter "$a2:1.3" || fails=$((fails + 1))
  echo "check-cuda: $fails step(s) failed"
  [ "$fails" -eq 0 ]
}

case "${1:-}" in
  prepare) prepare ;;
  stage) stage ;;
  run) run ;;
  *) echo "usage: $0 prepare|stage|run (see the comment at the top)"; exit 2 ;;
esac
