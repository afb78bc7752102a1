#!/usr/bin/env python3
"""edgelora against llama.cpp on the same K-quant (or any) GGUF, teacher-forced.

    .venv/bin/python bench/requantize.py                       # makes models/SmolLM2-135M-Instruct.Q4_K_M.gguf etc.
    cargo build --release -p edgelora-cli
    .venv/bin/python bench/kquant_agreement.py --model models/SmolLM2-135M-Instruct.Q4_K_M.gguf

Runs the token ids of `tests/fixtures/smollm2/hf_top5.json` (six prompts and their greedy
continuations, 251 positions) through llama.cpp (llama-cpp-python, CPU, one thread, logits for
every position) and through `edgelora logits --json` (fast path, and `--reference` with
`--reference`), and prints for each edgelora path: top-1 agreement with llama.cpp, |dlogit| on
llama.cpp's top-5, and the PEFT-style noise figures (sigma of the top-2 gap error, flips expected
from it: see `tests/tests/kernels_model.rs`). Both runtimes quantise activations to 8 bits on the
fast path (llama.cpp: Q8_K for K-quants, Q8_0/Q8_1 otherwise), so near-ties flip either way; the
reference path keeps f32 activations, so its differences from llama.cpp are llama.cpp's own
8-bit noise. For scale it also prints each runtime's agreement with HF's top-1 (HF ran the Q4_1
file dequantised: a different quantisation of the same model).
"""
import argparse
import json
import math
import subprocess

import numpy as np
from llama_cpp import Llama


def q_tail(z):
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def llamacpp_top5(model, cases):
    n_ctx = max(len(c["tokens"]) for c in cases) + 8
    # F32 KV cache: llama.cpp defaults to F16, whose rounding alone moves Gemma 3 logits by up
    # to 7 (median 0.8 of the per-position max) on a 710-token text; edgelora keeps f32.
    llm = Llama(model_path=model, n_ctx=max(n_ctx, 512), n_batch=max(n_ctx, 512), n_ubatch=max(n_ctx, 512),
                n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
    out = []
    for case in cases:
        ids = case["tokens"]
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)])
        top = np.argsort(-scores, axis=1)[:, :5]
        out.append([(list(map(int, t)), [float(s[i]) for i in t]) for t, s in zip(top, scores)])
    return out


def edgelora_logits(exe, model, ids, reference):
    cmd = [exe, "logits", "--model", model, "--tokens", ",".join(map(str, ids)), "--top", "5", "--json"]
    if reference:
        cmd.append("--reference")
    js = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return js["positions"]


def compare(cases, lc, exe, model, reference):
    n = agree = agree_hf = 0
    sq = 0.0
    margins = []
    max_d = 0.0
    for case, lcp in zip(cases, lc):
        ours = edgelora_logits(exe, model, case["tokens"], reference)
        for p, (pos, (lc_ids, lc_l)) in enumerate(zip(ours, lcp)):
            n += 1
            agree += pos["top_ids"][0] == lc_ids[0]
            agree_hf += pos["top_ids"][0] == case["top_ids"][p][0]
            # our logits on llama.cpp's top-2: only known if in our top-5
            got = dict(zip(pos["top_ids"], pos["top_logits"]))
            margins.append(lc_l[0] - lc_l[1])
            if lc_ids[0] in got and lc_ids[1] in got:
                e1 = got[lc_ids[0]] - lc_l[0]
                e2 = got[lc_ids[1]] - lc_l[1]
                sq += (e1 - e2) ** 2
                max_d = max(max_d, abs(e1), abs(e2))
    sigma = math.sqrt(sq / n)
    expected = sum(q_tail(m / sigma) for m in margins) if sigma > 0 else 0.0
    return n, agree, agree_hf, sigma, expected, max_d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--edgelora", default="target/release/edgelora")
    ap.add_argument("--reference", action="store_true", help="also run edgelora's f32 reference path (slow)")
    ap.add_argument("--text", action="append", default=[],
                    help="teacher-force this text (tokenised by llama.cpp, BOS as the model says) instead of "
                         "the SmolLM2 fixture's ids; repeat for several (HF figures then compare nothing)")
    a = ap.parse_args()
    if a.text:
        voc = Llama(model_path=a.model, vocab_only=True, verbose=False)
        cases = []
        for t in a.text:
            ids = voc.tokenize(t.encode(), add_bos=True, special=True)
            cases.append({"tokens": ids, "top_ids": [[-1]] * len(ids)})
    else:
        cases = json.load(open("tests/fixtures/smollm2/hf_top5.json"))["cases"]
    lc = llamacpp_top5(a.model, cases)
    lc_hf = sum(p[0][0] == c["top_ids"][i][0] for c, lp in zip(cases, lc) for i, p in enumerate(lp))
    total = sum(len(c["tokens"]) for c in cases)
    print(f"# {a.model}: llama.cpp top-1 vs HF (Q4_1 dequantised) {lc_hf}/{total}")
    for ref in ([False, True] if a.reference else [False]):
        n, agree, agree_hf, sigma, expected, max_d = compare(cases, lc, a.edgelora, a.model, ref)
        path = "reference" if ref else "fast"
        print(
            f"edgelora {path:<9}: top-1 vs llama.cpp {agree}/{n} ({100 * agree / n:.1f}%), "
            f"max |dlogit| on llama.cpp's top-2 {max_d:.3f}, sigma(e1-e2) {sigma:.3f}, "
            f"flips expected from that noise {expected:.1f}; top-1 vs HF {agree_hf}/{n}"
        )


if __name__ == "__main__":
    main()
