#!/usr/bin/env python3
"""Write a random LoRA adapter in llama.cpp's GGUF layout for a llama GGUF base, for speed
benchmarks (the values only need to be finite and non-zero).

    .venv/bin/python bench/make_random_lora.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --rank 8 --targets all -o models/bench-lora-r8.gguf

Tensors: blk.N.<linear>.weight.lora_a with ggml dims [in, r] and .lora_b with [r, out],
F16 (as llama.cpp's converter writes by default; --dtype q8_0 for Q8_0), alpha = rank.
"""
import argparse

import gguf
import numpy as np

LINEARS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", choices=["all", "qv"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["f16", "q8_0"], default="f16",
                    help="q8_0 quantises A and B with gguf.quants (rank must be a multiple of 32 for B)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.base)
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}  # ggml order: [in, out]
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(a.out, arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(a.rank))
    rng = np.random.default_rng(a.seed)
    targets = LINEARS if a.targets == "all" else ["attn_q", "attn_v"]
    n = 0
    for name, shape in sorted(shapes.items()):
        if len(shape) != 2:
            continue
        n_in, n_out = shape
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets:
            continue
        lora_a = (rng.standard_normal((a.rank, n_in)) * 0.01).astype(np.float16)  # (r, in)
        lora_b = (rng.standard_normal((n_out, a.rank)) * 0.01).astype(np.float16)  # (out, r)
        if a.dtype == "q8_0":
            q8 = gguf.GGMLQuantizationType.Q8_0
            for suffix, m in ((".lora_a", lora_a), (".lora_b", lora_b)):
                w.add_tensor(name + suffix, gguf.quants.quantize(m.astype(np.float32), q8), raw_dtype=q8)
        else:
            w.add_tensor(name + ".lora_a", lora_a)
            w.add_tensor(name + ".lora_b", lora_b)
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {n} pairs, rank {a.rank}")


if __name__ == "__main__":
    main()
