#!/usr/bin/env python3
"""`edgelora perplexity` against llama.cpp's `llama-perplexity` on the same file and settings.

    .venv/bin/python bench/perplexity_vs_llamacpp.py [--models M ...] [--ctx 512] [--chunks K]
        [--llama-perplexity /tmp/lcp/build-server/bin/llama-perplexity] [--threads 2]
        [--write-fixture]

Prints one row per model: the exact figure (transformers on the dequantised weights, f32
activations, the same token ids: bench/perplexity_hf.py), llama-perplexity with flash
attention on (its default here) and off, edgelora's, the ratio and the seconds each took.
Both runtimes quantise activations to 8 bits in their fast paths; on a 135M model that moves
the figure by about 1%, and llama.cpp's two attention paths differ from each other by as much. With
`--write-fixture`, llama-perplexity's figures go to tests/fixtures/text/llamacpp_ppl.json,
which `targets/host/tests/perplexity.rs` checks edgelora against (within 0.5%).

llama-perplexity is built from the llama-cpp-python sdist's llama.cpp sources (cmake, see the
README's "Side by side with llama.cpp"); the default text is the committed public-domain
tests/fixtures/text/kjv-genesis-1-20.txt.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests/fixtures/text/llamacpp_ppl.json")
TEXT = os.path.join(ROOT, "tests/fixtures/text/kjv-genesis-1-20.txt")
DEFAULT_MODELS = [
    "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "models/SmolLM2-135M-Instruct.Q4_K_M.gguf",
    "models/SmolLM2-135M-Instruct.Q6_K.gguf",
    "models/gemma-3-270m-q4_k_m.gguf",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def llama(args, model, fa="auto"):
    cmd = [args.llama_perplexity, "-m", model, "-f", args.file, "-c", str(args.ctx),
           "-b", str(args.ctx), "-t", str(args.threads), "--chunks", str(args.chunks), "-fa", fa]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    text = out.stdout + out.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    if out.returncode != 0 or not m:
        raise SystemExit(f"llama-perplexity failed on {model}:\n{text[-2000:]}")
    return float(m.group(1)), float(m.group(2)), secs


def edgelora(args, model):
    cmd = [os.path.join(ROOT, "target/release/edgelora"), "perplexity", "-m", model, "-f",
           args.file, "--ctx", str(args.ctx), "--chunks", str(args.chunks), "--threads",
           str(args.threads), "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"edgelora perplexity failed on {model}:\n{out.stderr[-2000:]}")
    j = json.loads(out.stdout)
    return j["ppl"], j["ppl_stderr"], secs


def exact(args, model):
    """transformers on the dequantised weights, f32, the same token ids (bench/perplexity_hf.py)."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench/perplexity_hf.py"), "--model", model,
         "--file", args.file, "--ctx", str(args.ctx), "--chunks", str(args.chunks),
         "--tokens-from-edgelora"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"perplexity_hf.py failed on {model}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["ppl"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--file", default=TEXT)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-perplexity", default="/tmp/lcp/build-server/bin/llama-perplexity")
    ap.add_argument("--write-fixture", action="store_true")
    args = ap.parse_args()
    fixture = {}
    if os.path.exists(FIXTURE):
        with open(FIXTURE) as f:
            fixture = json.load(f)
    print(f"file {os.path.relpath(args.file, ROOT)}, ctx {args.ctx}, chunks {args.chunks}")
    print("| model | exact (transformers f32) | llama-perplexity (-fa on) | llama-perplexity (-fa off) "
          "| edgelora | edgelora / llama (on) | s llama.cpp / edgelora |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        path = os.path.join(ROOT, model) if not os.path.isabs(model) else model
        if not os.path.exists(path):
            print(f"| {model} | SKIPPED: not fetched | | | |")
            continue
        lp, le, ls = llama(args, path, "on")
        lo, _, _ = llama(args, path, "off")
        ep, ee, es = edgelora(args, path)
        hx = exact(args, path)
        print(f"| {os.path.basename(model)} | {hx:.4f} | {lp:.4f} +/- {le:.4f} | {lo:.4f} | "
              f"{ep:.4f} +/- {ee:.4f} | {ep / lp:.4f} | {ls:.1f} / {es:.1f} |", flush=True)
        if args.write_fixture:
            fixture[os.path.basename(model)] = {
                "sha256": sha256(path),
                "file": os.path.relpath(args.file, ROOT),
                "ctx": args.ctx,
                "chunks": args.chunks,
                "llama_perplexity_ppl": lp,
                "llama_perplexity_stderr": le,
                "llama_perplexity_fa_off_ppl": lo,
                "transformers_f32_ppl": hx,
            }
    if args.write_fixture:
        with open(FIXTURE, "w") as f:
            json.dump(fixture, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {os.path.relpath(FIXTURE, ROOT)}")


if __name__ == "__main__":
    main()
