#!/usr/bin/env python3
"""`edgelora quantize` beside llama.cpp's own quantizer, per tensor.

    .venv/bin/python bench/quantize_vs_llamacpp.py [--src models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--types Q4_K_M Q8_0] [--bin target/release/edgelora] [--out-dir /tmp/edgelora-quant]

For each type: llama.cpp writes `<stem>.<TYPE>.gguf` through `llama_model_quantize` (as
`bench/requantize.py` does, `allow_requantize`, no importance matrix) and edgelora writes
`<stem>.<TYPE>.edgelora.gguf`. All three files are dequantised with gguf-py; each output tensor's
error is `rms(out - in) / rms(in)` against the dequantised input. Printed per tensor: both types,
both errors, and whether the bytes are identical (they should be wherever both chose the same
type: our quantisers are byte-identical to ggml's `ggml_quantize_chunk`).
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import requantize  # noqa: E402  (its FTYPES table)

import llama_cpp  # noqa: E402


def tensors(path):
    r = GGUFReader(str(path))
    return {t.name: t for t in r.tensors}


def deq(t):
    return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)


def rel(x, y):
    n = np.sqrt(np.sum(x * x))
    return float(np.sqrt(np.sum((y - x) ** 2)) / n) if n > 0 else 0.0


def llamacpp_quantize(src, dst, ftype_name):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = requantize.FTYPES[ftype_name]
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for {ftype_name} (rc {rc})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q8_0"])
    ap.add_argument("--bin", default="target/release/edgelora")
    ap.add_argument("--out-dir", default="/tmp/edgelora-quant")
    ap.add_argument("--quiet", action="store_true", help="summary lines only")
    a = ap.parse_args()
    src = Path(a.src)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = src.name.removesuffix(".gguf").rsplit(".", 1)[0]
    inp = tensors(src)
    for ty in a.types:
        lc, ours = out / f"{stem}.{ty}.gguf", out / f"{stem}.{ty}.edgelora.gguf"
        llamacpp_quantize(src, lc, ty)
        subprocess.run([a.bin, "quantize", str(src), "-o", str(ours), "--type", ty.lower()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tl, to = tensors(lc), tensors(ours)
        print(f"\n== {ty}: {src.name} -> llama.cpp {lc.stat().st_size / 2**20:.1f} MiB, "
              f"edgelora {ours.stat().st_size / 2**20:.1f} MiB")
        if not a.quiet:
            print(f"{'tensor':<30} {'llama.cpp':>9} {'err %':>7}   {'edgelora':>8} {'err %':>7}  same bytes")
        rows, same, same_type = [], 0, 0
        for name, ti in inp.items():
            if len(ti.shape) < 2:
                continue
            x = deq(ti)
            l, o = tl[name], to[name]
            el, eo = rel(x, deq(l)), rel(x, deq(o))
            st = l.tensor_type == o.tensor_type
            sb = st and bytes(l.data.tobytes()) == bytes(o.data.tobytes())
            same += sb
            same_type += st
            rows.append((l.tensor_type.name, el, o.tensor_type.name, eo))
            if not a.quiet:
                print(f"{name:<30} {l.tensor_type.name:>9} {el * 100:7.3f}   "
                      f"{o.tensor_type.name:>8} {eo * 100:7.3f}  {'yes' if sb else 'NO'}")
        el = np.array([r[1] for r in rows])
        eo = np.array([r[3] for r in rows])
        print(f"{ty}: {len(rows)} tensors, same type {same_type}, byte-identical {same}; "
              f"mean rel RMS error llama.cpp {el.mean() * 100:.3f}% edgelora {eo.mean() * 100:.3f}%, "
              f"worst {el.max() * 100:.3f}% / {eo.max() * 100:.3f}%, "
              f"largest per-tensor difference {np.abs(el - eo).max() * 100:.4f} points")


if __name__ == "__main__":
    main()
