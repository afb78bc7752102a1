#!/usr/bin/env python3
"""Re-quantise a GGUF with llama.cpp's own quantizer, for benchmarking other weight types.

    .venv/bin/python bench/requantize.py [--src models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--types Q4_K_M Q5_K_M Q6_K] [--out-dir models]

Writes `<stem>.<TYPE>.gguf` next to the source's stem (the source's own type suffix dropped),
e.g. `models/SmolLM2-135M-Instruct.Q4_K_M.gguf`. The source is already quantised, so this
needs `allow_requantize` (the weights pass through Q4_1 first: fine for speed measurements,
not for quality ones). llama.cpp picks per-tensor types itself: tensors whose row length is
not a multiple of 256 (SmolLM2's 576-wide ones) fall back to Q5_0/Q5_1/Q8_0, which is why a
"Q4_K_M" SmolLM2 is mostly Q5_0 with Q4_K/Q6_K only in ffn_down.
"""
import argparse
from pathlib import Path

import llama_cpp

FTYPES = {
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    "Q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
    "IQ4_NL": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL,
    "IQ4_XS": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_XS,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q5_K_M", "Q6_K"])
    ap.add_argument("--out-dir", default=None, help="default: the source's folder")
    ap.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default")
    a = ap.parse_args()
    src = Path(a.src)
    if not src.exists():
        raise SystemExit(f"{src} not found")
    out_dir = Path(a.out_dir) if a.out_dir else src.parent
    stem = src.name.removesuffix(".gguf")
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    for t in a.types:
        if t not in FTYPES:
            raise SystemExit(f"unknown type {t}; known: {' '.join(FTYPES)}")
        dst = out_dir / f"{stem}.{t}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[t]
        params.allow_requantize = True
        params.nthread = a.threads
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed for {t} (rc {rc})")
        print(f"{dst} ({dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
