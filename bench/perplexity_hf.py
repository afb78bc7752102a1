#!/usr/bin/env python3
"""The exact perplexity of a GGUF model (dequantised by transformers, f32 everywhere) with
llama-perplexity's method, as the reference both runtimes' 8-bit activation paths are judged by.

    .venv/bin/python bench/perplexity_hf.py --model models/SmolLM2-135M-Instruct.Q6_K.gguf \
        [--file tests/fixtures/text/kjv-genesis-1-20.txt] [--ctx 512] [--chunks 8] [--tokens-from-edgelora]

Windows of --ctx tokens, BOS first in each window when the model adds one, the logits at
positions ctx/2 .. ctx-2 scored against the next token. The tokens are edgelora's (`edgelora
tokenize`-equivalent via `edgelora perplexity --dump-tokens`) with --tokens-from-edgelora, so
the two runs score the very same ids; otherwise transformers' own tokenizer from the GGUF.
"""

import argparse
import json
import math
import os
import subprocess

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", default=os.path.join(ROOT, "tests/fixtures/text/kjv-genesis-1-20.txt"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--tokens-from-edgelora", action="store_true")
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    if args.tokens_from_edgelora:
        out = subprocess.run(
            [os.path.join(ROOT, "target/release/edgelora"), "perplexity", "-m", args.model,
             "-f", args.file, "--dump-tokens"], capture_output=True, text=True, check=True)
        ids = json.loads(out.stdout)
    else:
        with open(args.file, encoding="utf-8") as fh:
            ids = tok(fh.read(), add_special_tokens=True)["input_ids"]
    bos = tok.bos_token_id if getattr(tok, "add_bos_token", False) else None
    n = min(args.chunks, len(ids) // args.ctx)
    first = args.ctx // 2
    nll, count = 0.0, 0
    with torch.no_grad():
        for c in range(n):
            win = list(ids[c * args.ctx:(c + 1) * args.ctx])
            if bos is not None:
                win[0] = bos
            logits = model(torch.tensor([win])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            for p in range(first, args.ctx - 1):
                nll -= lp[p, win[p + 1]].item()
                count += 1
            print(f"[{c + 1}]{math.exp(nll / count):.4f}", end=",", flush=True)
    print()
    print(json.dumps({"model": os.path.basename(args.model), "tokens": len(ids), "ctx": args.ctx,
                      "chunks": n, "scored": count, "ppl": math.exp(nll / count)}))


if __name__ == "__main__":
    main()
