#!/usr/bin/env python3
"""llama.cpp's top-1 agreement with Hugging Face on the SmolLM2 parity fixture.

    .venv/bin/python bench/llamacpp_agreement.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]

Runs the same teacher-forced token ids as `tests/tests/kernels_model.rs` (from
`tests/fixtures/smollm2/hf_top5.json`) through llama.cpp (llama-cpp-python, CPU, one thread,
logits for every position) and prints the share of positions whose argmax equals HF's top-1,
the figure the fast path's agreement is compared with.
"""
import argparse
import json

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--fixture", default="tests/fixtures/smollm2/hf_top5.json")
a = ap.parse_args()
refs = json.load(open(a.fixture))
llm = Llama(model_path=a.model, n_ctx=128, n_threads=1, logits_all=True, verbose=False)
n = agree = overlap = 0
for case in refs["cases"]:
    ids = case["tokens"]
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)])
    for pos in range(len(ids)):
        top = case["top_ids"][pos]
        ours = np.argsort(-scores[pos])[:5]
        n += 1
        agree += int(ours[0] == top[0])
        overlap += len(set(ours.tolist()) & set(top))
print(f"llama.cpp vs transformers: top-1 agreement {agree}/{n} ({100 * agree / n:.1f}%), "
      f"top-5 overlap {100 * overlap / (5 * n):.1f}%")
