#!/usr/bin/env bash
# GPU parity check for the optional CUDA backend (targets/cuda). Three steps, because the GPU
# machine has no cargo, no network and takes at most 64 MiB of files per call, and SmolLM2 is
# 94 MiB:
#
#   1. here (cargo, no GPU):       bash scripts/check-cuda.sh prepare
#        builds the CLI and the GPU test binaries with --features cuda (release, stripped),
#        makes two SmolLM2 adapters and an 8-layer SmolLM2, precompiles the kernels to PTX,
#        and splits SmolLM2 in two parts, all under target/cuda-check/.
#   2. GPU machine, first call:    bash scripts/check-cuda.sh stage
#        with carry ["target/cuda-check/stage-a"]; keeps part 1 of SmolLM2 in /tmp.
#   3. GPU machine, second call within the machine's warm period (30 s):
#                                  bash scripts/check-cuda.sh run
#        with carry ["target/cuda-check/bin", "target/cuda-check/stage-b"]; joins SmolLM2, runs
#        the kernel and model parity tests (failing, not skipping, without a GPU) and
#        `edgelora parity` on SmolLM2 with no adapter and with two adapters, and copies the
#        log to $OUT. If step 2 was lost (machine given back), `run` falls back to the 8-layer
#        SmolLM2 carried in target/cuda-check/bin and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
C=target/cuda-check
STAGE=/tmp/edgelora-cuda-stage
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf

prepare() {
  set -e
  rm -rf "$C" && mkdir -p "$C/bin" "$C/stage-a" "$C/stage-b"
  cargo build --release -p edgelora-cli --features cuda
  cp target/release/edgelora "$C/bin/"
  cargo test --release -p edgelora-cuda --features cuda --no-run 2>&1 | tee "$C/build.log"
  for t in cuda_kernels cuda_model cuda_nvrtc; do
    exe=$(sed -n "s/.*Executable tests\/$t.rs (\(.*\))/\1/p" "$C/build.log" | tail -1)
    cp "$exe" "$C/bin/$t"
  done
  strip "$C"/bin/* || true
  [ -f "$SMOL" ] || cargo run --quiet --release -p edgelora-cli -- fetch smollm2
  cargo run --quiet --release -p edgelora-cuda --example cuda_prep -- adapter "$SMOL" "$C/bin/smol-a1.gguf" all-f16-dora 1
  cargo run --quiet --release -p edgelora-cuda --example cuda_prep -- adapter "$SMOL" "$C/bin/smol-a2.gguf" qv-q8 2
  cargo run --quiet --release -p edgelora-cuda --example cuda_prep -- truncate "$SMOL" 8 "$C/bin/smol-8l.gguf"
  # Kernels as PTX, for a GPU machine whose libnvrtc cannot be found (EDGELORA_CUDA_PTX).
  nv=$(ls -d .venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -1)
  LD_LIBRARY_PATH="${nv:+$nv:}${LD_LIBRARY_PATH:-}" EDGELORA_REQUIRE_NVRTC=1 EDGELORA_PTX_OUT="$PWD/$C/bin/kernels.ptx" "$C/bin/cuda_nvrtc"
  head -c 58720256 "$SMOL" > "$C/stage-a/smol.part0"
  tail -c +58720257 "$SMOL" > "$C/stage-b/smol.part1"
  sha256sum "$SMOL" | cut -d' ' -f1 > "$C/bin/smol.sha256"
  du -sh "$C"/bin "$C"/stage-a "$C"/stage-b
  echo "prepared: now run 'stage' (carry $C/stage-a) and then 'run' (carry $C/bin and $C/stage-b) on the GPU machine"
}

stage() {
  mkdir -p "$STAGE" && cp "$C/stage-a/smol.part0" "$STAGE/" && ls -la "$STAGE"
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
  if [ -f "$STAGE/smol.part0" ] && [ -f "$C/stage-b/smol.part1" ]; then
    mkdir -p models && cat "$STAGE/smol.part0" "$C/stage-b/smol.part1" > "$SMOL"
    [ "$(sha256sum "$SMOL" | cut -d' ' -f1)" = "$(cat "$bin/smol.sha256")" ] || { echo "SmolLM2 reassembly: checksum mismatch"; rm -f "$SMOL"; }
  fi
  if [ -f "$SMOL" ]; then model=$SMOL; else model="$bin/smol-8l.gguf"; echo "NOTE: full SmolLM2 not staged; parity on its first 8 layers"; fi
  export EDGELORA_ROOT=$PWD EDGELORA_REQUIRE_GPU=1
  for t in cuda_nvrtc cuda_kernels cuda_model; do
    echo "== $t" && "$bin/$t" --test-threads 1 --nocapture || fails=$((fails + 1))
  done
  echo "== edgelora parity: $model, no adapter"
  "$bin/edgelora" parity -m "$model" --tokens 504,3575,282,4649,314,7042,30,378 || fails=$((fails + 1))
  echo "== edgelora parity: $model, two adapters"
  "$bin/edgelora" parity -m "$model" --tokens 504,3575,282,4649,314,7042,30,378 \
    --adapter "$bin/smol-a1.gguf:0.7" --adapter "$bin/smol-a2.gguf:1.3" || fails=$((fails + 1))
  echo "== edgelora logits --backend cuda (top 3, two adapters)"
  "$bin/edgelora" logits -m "$model" --tokens 504,3575,282,4649,314 --top 3 --backend cuda \
    --adapter "$bin/smol-a1.gguf:0.7" --adapter "$bin/smol-a2.gguf:1.3" || fails=$((fails + 1))
  echo "check-cuda: $fails step(s) failed"
  [ "$fails" -eq 0 ]
}

case "${1:-}" in
  prepare) prepare ;;
  stage) stage ;;
  run) run ;;
  *) echo "usage: $0 prepare|stage|run (see the comment at the top)"; exit 2 ;;
esac
