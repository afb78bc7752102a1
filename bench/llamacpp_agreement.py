#!/usr/bin/env python3
"""llama.cpp's top-1 agreement with Hugging Face (or PEFT) on the SmolLM2 parity fixtures.

    .venv/bin/python bench/llamacpp_agreement.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
    .venv/bin/python bench/llamacpp_agreement.py --lora plain [--lora rslora]

Without `--lora`: runs the same teacher-forced token ids as `tests/tests/kernels_model.rs`
(from `tests/fixtures/smollm2/hf_top5.json`) through llama.cpp (llama-cpp-python, CPU, one
thread, logits for every position) and prints the share of positions whose argmax equals HF's
top-1, the figure the fast path's agreement is compared with.

With `--lora NAME`: the same for the adapter fixtures of `tests/tests/lora_peft.rs`
(`tests/fixtures/lora/smollm2/refs.json`, PEFT's top-5 per position): llama.cpp runs the
adapter file its own converter made (`NAME.llamacpp.gguf`), unmerged, and is compared with
PEFT; the edgelora figures for the same positions are printed by that test.

With `--cases NAME [--lora-file F]`: llama.cpp runs `--model` (for example a GGUF written by
`edgelora merge`) with the adapter file `F` if given (for example one written by `edgelora
adapter convert`) on the cases of adapter NAME, against PEFT. This checks that edgelora's
output files load in llama.cpp and mean there what PEFT meant:

    target/release/edgelora adapter convert tests/fixtures/lora/smollm2/plain --base smollm2 -o /tmp/plain.gguf
    .venv/bin/python bench/llamacpp_agreement.py --cases plain --lora-file /tmp/plain.gguf
    target/release/edgelora merge -m smollm2 --adapter /tmp/plain.gguf --type q8_0 -o /tmp/merged.gguf
    .venv/bin/python bench/llamacpp_agreement.py --cases plain --model /tmp/merged.gguf
"""
import argparse
import json

import numpy as np
from llama_cpp import Llama


def agreement(llm, cases):
    n = agree = overlap = 0
    for case in cases:
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
    return n, agree, overlap


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--fixture", default=None, help="reference file (default: by mode, see above)")
ap.add_argument("--lora", action="append", default=[], help="adapter fixture name (plain, rslora)")
ap.add_argument("--cases", default=None, help="run --model [+ --lora-file] on this adapter's cases")
ap.add_argument("--lora-file", default=None, help="with --cases: adapter GGUF to apply (unmerged)")
ap.add_argument("--write", default=None,
                help="with --lora: also write the figures as JSON (the committed fixture is "
                     "tests/fixtures/lora/smollm2/llamacpp_top1.json, read by lora_peft.rs)")
a = ap.parse_args()
out = {"how": "bench/llamacpp_agreement.py --lora ... : llama.cpp (llama-cpp-python, CPU, 1 "
              "thread) running NAME.llamacpp.gguf unmerged on the Q4_1 base, teacher-forced, "
              "top-1 against PEFT's top-1 from refs.json", "adapters": {}}
if a.cases:
    refs = json.load(open(a.fixture or "tests/fixtures/lora/smollm2/refs.json"))
    cases = [c for c in refs["cases"] if c["adapter"] == a.cases and c["scale"] == 1.0]
    assert cases, f"no cases for adapter {a.cases!r}"
    llm = Llama(model_path=a.model, lora_path=a.lora_file, n_ctx=128, n_threads=1,
                logits_all=True, verbose=False)
    n, agree, overlap = agreement(llm, cases)
    what = a.model + (f" + {a.lora_file}" if a.lora_file else "")
    print(f"llama.cpp running {what} vs PEFT ({a.cases}): top-1 agreement {agree}/{n} "
          f"({100 * agree / n:.1f}%), top-5 overlap {100 * overlap / (5 * n):.1f}%")
elif not a.lora:
    refs = json.load(open(a.fixture or "tests/fixtures/smollm2/hf_top5.json"))
    llm = Llama(model_path=a.model, n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    n, agree, overlap = agreement(llm, refs["cases"])
    print(f"llama.cpp vs transformers: top-1 agreement {agree}/{n} ({100 * agree / n:.1f}%), "
          f"top-5 overlap {100 * overlap / (5 * n):.1f}%")
for name in a.lora:
    refs = json.load(open(a.fixture or "tests/fixtures/lora/smollm2/refs.json"))
    cases = [c for c in refs["cases"] if c["adapter"] == name and c["scale"] == 1.0]
    lora = f"tests/fixtures/lora/smollm2/{name}.llamacpp.gguf"
    llm = Llama(model_path=a.model, lora_path=lora, n_ctx=128, n_threads=1, logits_all=True,
                verbose=False)
    n, agree, overlap = agreement(llm, cases)
    print(f"llama.cpp + {lora} vs PEFT: top-1 agreement {agree}/{n} ({100 * agree / n:.1f}%), "
          f"top-5 overlap {100 * overlap / (5 * n):.1f}%")
    out["adapters"][name] = {"agree": agree, "total": n}
    del llm
if a.write and a.lora:
    import importlib.metadata
    out["llama_cpp_python"] = importlib.metadata.version("llama_cpp_python")
    with open(a.write, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", a.write)
