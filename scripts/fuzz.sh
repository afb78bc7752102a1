#!/usr/bin/env bash
# Fuzz every entry point that takes bytes or indices from outside (issue 8), one target at a
# time, on one core, at low priority. Builds are cargo-fuzz's default: optimised, with debug
# assertions, overflow checks and AddressSanitizer.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 600 s; all six targets)
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Targets (fuzz/fuzz_targets/):
# gguf, adapter, stream, peft, tokenizer, forward. Corpora live in fuzz/corpus/<target>
# (git-ignored) and are seeded here from the committed fixtures, from adapters converted from
# the committed PEFT fixtures by the CLI, and from the committed crash inputs under
# tests/fuzz-regressions/<target>/ (which `tests/tests/regressions.rs` replays in every
# `cargo test`). A crash leaves its input in fuzz/artifacts/<target>/: minimise it with
# `cargo +nightly fuzz tmin <target> <file>`, fix the core, and commit the input under
# tests/fuzz-regressions/<target>/ with the error it must now produce.
#
# Per target, the summary prints libFuzzer's final stats: executions, and coverage as `cov`
# (edges) and `ft` (features) of the last status line. Logs: fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf adapter stream peft tokenizer forward)

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 1; }
FX=tests/fixtures
C=fuzz/corpus
mkdir -p fuzz/target/logs

# ---- seed corpora -------------------------------------------------------------------------
seed_dir() { mkdir -p "$C/$1"; }
conv=fuzz/target/seed-adapters
mkdir -p "$conv"
if [ -z "$(ls -A "$conv" 2>/dev/null)" ]; then
  # Small real adapters: the converter's output for the committed tiny PEFT fixtures.
  if cargo build -q --release -p edgelora-cli 2>/dev/null; then
    for d in qv dora head plain; do
      for t in q8_0 f16; do
        target/release/edgelora adapter convert --base $FX/tiny/tiny-q8_0.gguf --dtype $t \
          -o "$conv/$d-$t.gguf" $FX/lora/tiny/$d >/dev/null || echo "seed: convert $d $t failed"
      done
    done
  else
    echo "seed: CLI did not build; adapter seeds come from the llama.cpp fixtures only"
  fi
fi
for t in gguf adapter stream peft tokenizer forward; do seed_dir $t; done
cp -n $FX/gguf/*.gguf $FX/tokenizer/*.gguf $FX/tiny/tiny-q8_0.gguf $FX/tiny/tiny-q4_1.gguf \
  $FX/lora/tiny/rslora.llamacpp.gguf "$C/gguf/"
cp -n $FX/lora/tiny/*.llamacpp.gguf "$C/adapter/"
cp -n "$conv"/*.gguf "$C/gguf/" 2>/dev/null || true
cp -n "$conv"/*.gguf "$C/adapter/" 2>/dev/null || true

# Recipe-shaped seeds (see each target's header comment for the layout).
python3 - "$C" "$FX" "$conv" <<'PY'
import glob, json, os, random, struct, sys
C, FX, conv = sys.argv[1:4]
rnd = random.Random(8)
def put(target, name, data):
    p = os.path.join(C, target, name)
    if not os.path.exists(p):
        open(p, "wb").write(data)
adapters = sorted(glob.glob(os.path.join(conv, "*.gguf"))) + sorted(glob.glob(os.path.join(FX, "lora/tiny/*.llamacpp.gguf")))
# stream: flags, i8, 8 chunk-size bytes, payload.
for i, a in enumerate(adapters):
    body = open(a, "rb").read()
    for j, sizes in enumerate([bytes([1] * 8), bytes([0, 3, 16, 255, 7, 1, 90, 40]), bytes(rnd.randrange(256) for _ in range(8))]):
        put("stream", f"seed-{i}-{j}", bytes([0, 0]) + sizes + body)
# peft: options, u16 config length, config, safetensors.
for i, d in enumerate(sorted(glob.glob(os.path.join(FX, "lora/tiny/*/adapter_config.json")))):
    cfg = open(d, "rb").read()
    st = open(os.path.join(os.path.dirname(d), "adapter_model.safetensors"), "rb").read()
    for opt in (1, 2, 4):
        put("peft", f"seed-{i}-{opt}", bytes([opt]) + struct.pack("<H", len(cfg)) + cfg + st)
# tokenizer: flags, split, small, text then ids; texts from the reference cases.
texts = []
for f in ("tiny_bpe_refs.json", "tiny_spm_refs.json"):
    texts += [c["text"] for c in json.load(open(os.path.join(FX, "tokenizer", f)))["cases"] if c["text"]]
pre_texts = [c["text"] for c in json.load(open(os.path.join(FX, "tokenizer", "bpe_pre_refs.json")))["llama3"]["cases"] if c["text"]]
for i, t in enumerate(texts[:120]):
    b = t.encode()
    ids = b"".join(struct.pack("<I", rnd.randrange(300)) for _ in range(4))
    split = min(255, 256 * len(b) // max(1, len(b) + len(ids)) + 1)
    put("tokenizer", f"seed-{i}", bytes([i % 32, split, rnd.randrange(64)]) + b + ids)
# The Llama 3 / Qwen2 vocabularies (flag bit 5, bit 0 picks which) on their own strings.
for i, t in enumerate(pre_texts[:120]):
    b = t.encode()
    ids = b"".join(struct.pack("<I", rnd.randrange(2100)) for _ in range(4))
    split = min(255, 256 * len(b) // max(1, len(b) + len(ids)) + 1)
    put("tokenizer", f"seed-pre-{i}", bytes([0x20 | (i % 32 & 0x1d), split, rnd.randrange(64)]) + b + ids)
# forward: head, ctx, ops.
for i in range(24):
    ops = bytearray([i % 32, rnd.randrange(40)])
    for _ in range(rnd.randrange(4, 20)):
        op = rnd.choice([5, 5, 5, 0, 1, 2, 3, 4, 6])
        ops.append(op)
        if op in (0, 5):
            ops += struct.pack("<H", rnd.randrange(300))
        if op == 0:
            ops.append(rnd.randrange(40))
        if op == 1:
            n = rnd.randrange(1, 9); ops.append(n)
            for _ in range(n): ops += struct.pack("<H", rnd.randrange(300))
            ops.append(rnd.randrange(8))
        if op == 3:
            ops.append(rnd.randrange(20))
        if op == 6:
            ops += struct.pack("<f", rnd.choice([0.0, 0.7, 1.0])) + bytes([rnd.randrange(50)])
            ops += struct.pack("<f", rnd.choice([0.9, 1.0])) + struct.pack("<f", rnd.choice([1.0, 1.1]))
            ops += bytes([16]) + struct.pack("<I", rnd.randrange(1 << 32))
    put("forward", f"seed-{i}", bytes(ops))
PY
# Committed crash inputs go back in, so the fuzzer starts from what once broke.
for t in "${targets[@]}"; do
  [ -d tests/fuzz-regressions/$t ] && cp -n tests/fuzz-regressions/$t/* "$C/$t/" 2>/dev/null || true
done

# ---- run ----------------------------------------------------------------------------------
nice -n 10 cargo +nightly fuzz build >/dev/null
summary=fuzz/target/logs/summary.txt
: > "$summary"
for t in "${targets[@]}"; do
  log=fuzz/target/logs/$t.log
  # max_len: the largest seed (libFuzzer's default) would be 560 KB for the f32 model; the
  # targets' interesting structure is in the first few tens of KB. No -jobs/-workers: without
  # them libFuzzer is one process on one thread (with them it also writes fuzz-N.log files
  # into the repository root).
  case $t in
    gguf|adapter) maxlen=200000 ;;
    peft) maxlen=131072 ;;
    stream) maxlen=65536 ;;
    *) maxlen=4096 ;;
  esac
  echo "== $t: ${secs}s"
  start=$(date +%s)
  set +e
  nice -n 10 cargo +nightly fuzz run "$t" "$C/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -max_len=$maxlen \
    -timeout=20 -rss_limit_mb=4096 >"$log" 2>&1
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]* ft: [0-9]*' | tail -1 || echo '?')
  corp=$(ls "$C/$t" | wc -l)
  crash=$(ls fuzz/artifacts/$t 2>/dev/null | wc -l)
  line="$t: ${took}s, rc $rc, executions $execs, $cov, corpus $corp, artifacts $crash"
  echo "$line" | tee -a "$summary"
done
echo "summary: $summary"
