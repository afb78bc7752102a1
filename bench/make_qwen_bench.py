#!/usr/bin/env python3
"""A Qwen2-architecture benchmark GGUF at Qwen2.5-0.5B's shapes, with random weights.

    /work/main/.venv/bin/python bench/make_qwen_bench.py \
        [--llamacpp /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp] \
        [--out models/qwen2.5-0.5b-shapes-random.Q4_K_M.gguf] [--type Q4_K_M]

No real Qwen GGUF is available offline, so this builds one whose *speed* matches the real
file's: same tensor shapes, same converter, same quantizer, hence the same per-tensor types
and bytes to stream. The weights are random (transformers' own init, N(0, 0.02^2), seeded),
so the text it generates is meaningless: use it for tokens/s only, never for quality.

1. `transformers.Qwen2ForCausalLM(Qwen2Config(...))` with Qwen/Qwen2.5-0.5B's config.json facts:
   hidden 896, 24 layers, 14 query heads / 2 KV heads of 64, ffn 4864, vocab 151936, rope base
   1e6, RMSNorm eps 1e-6, q/k/v biases (always on in Qwen2), tied embeddings. The vocabulary
   size is the real one because the tied head (151936 x 896) is the largest single read of a
   decode step. Saved in bfloat16 (as Qwen ships it).
2. llama.cpp's own `convert_hf_to_gguf.py --outtype f16`. The tokenizer is a tiny SentencePiece
   model trained here on a few sentences; the converter pads the vocabulary to 151936 with
   `[PAD{i}]` entries. Speed does not depend on the tokenizer, only on the vocabulary size.
3. llama.cpp's quantizer (`llama_model_quantize`, as `bench/requantize.py`; `edgelora
   quantize` writes byte-identical files) to `--type`. At Q4_K_M the 896-wide rows are not a
   multiple of 256, so llama.cpp falls back to Q5_0 (q/k/v/o, gate, up) and Q8_0 (attn_v,
   token_embd), with Q4_K/Q6_K only in ffn_down (4864 columns), as in Qwen's own Q4_K_M file.

Temporary files (~1 GB safetensors, ~1 GB F16 GGUF) go to a temporary directory; only the
quantised file is kept (`--keep-f16 PATH` keeps the F16 one too).
"""
import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp
import sentencepiece as spm
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# Qwen/Qwen2.5-0.5B config.json.
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
    use_sliding_window=False, max_window_layers=24, bos_token_id=151643, eos_token_id=151643,
)

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A benchmark model with random weights measures speed, not quality.",
    "Quantised weights stream from memory once per decoded token.",
    "Prefill runs the prompt through every layer in blocks of tokens.",
]

FTYPES = {
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
}


def default_llamacpp() -> str:
    for p in [Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp"),
              *sorted(Path("/tmp").glob("pip-download-*/llama-cpp-python_*/vendor/llama.cpp"))]:
        if (p / "convert_hf_to_gguf.py").exists():
            return str(p)
    return ""


def tokenizer_model(path: Path) -> None:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT * 8), model_writer=buf, vocab_size=64, model_type="bpe",
        character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=True,
        bos_id=1, eos_id=2, unk_id=3, pad_id=0)
    path.write_bytes(buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamacpp", default=default_llamacpp(), help="llama.cpp source tree (its convert_hf_to_gguf.py)")
    ap.add_argument("--out", default="models/qwen2.5-0.5b-shapes-random.Q4_K_M.gguf")
    ap.add_argument("--type", default="Q4_K_M", choices=sorted(FTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-f16", default=None, help="also keep the F16 GGUF at this path")
    a = ap.parse_args()
    conv = Path(a.llamacpp) / "convert_hf_to_gguf.py"
    if not conv.exists():
        raise SystemExit(f"no convert_hf_to_gguf.py under --llamacpp {a.llamacpp!r}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    cfg = Qwen2Config(**QWEN25_05B)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"Qwen2ForCausalLM, random weights: {n / 1e6:.1f} M parameters (tied head counted once)")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        # A fixed directory name: the converter writes it as `general.name`.
        d = Path(tmp) / "qwen2.5-0.5b-shapes-random"
        model.save_pretrained(d)
        del model
        tokenizer_model(d / "tokenizer.model")
        f16 = Path(a.keep_f16) if a.keep_f16 else Path(tmp) / "f16.gguf"
        subprocess.run([sys.executable, str(conv), str(d), "--outtype", "f16", "--outfile", str(f16)],
                       check=True, stdout=subprocess.DEVNULL)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[a.type]
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed (rc {rc})")
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
