#!/usr/bin/env python3
"""Train the tiny default base model from scratch and export it as `models/tiny/tiny-base.gguf`.

A llama-architecture LM (transformers LlamaForCausalLM, random init) with its own small
SentencePiece vocabulary, pre-trained on the domain corpus of `tasks.py` (home-assistant
commands, device logs and replies as separate lines, spoken/written times and numbers in
prose, household sentences). It is sized for a microcontroller:

  weights  Q8_0 GGUF (embeddings Q8_0, norms F32, output head tied to the embedding) <= 1 MB
  state    f32 KV cache + activations for a 128-token context <= 256 KB, computed with the
           Rust core's formula (core/src/model/mod.rs, State::checked_len_for):
           dim*2 + q_dim*2 + ffn*2 + ctx + rope_dims + vocab + 2*n_layers*ctx*kv_dim
           -> two KV heads of 16 (grouped-query attention) keep the cache at 2*4*128*32 floats.
              (One KV head of 32 did not learn in-context copying in 1000 steps; two did.)

The base never sees a task prompt, so on its own it cannot do the tasks; a LoRA adapter per
task (train.py) has to teach it.

Run from the repository root (about 25 min on 2 CPU cores; minutes on a GPU):
    .venv/bin/python targets/trainer/train_tiny_base.py
Outputs: models/tiny/tiny-base.gguf, models/tiny/tiny-base.spm.model (the SentencePiece
model the GGUF's vocabulary came from), models/tiny/base.json
(config, sizes, loss curve, timing) and the float checkpoint in
targets/trainer/build/tiny-base-hf/ (not committed: 3.4 MB, rebuilt by this script).
Deterministic on CPU with the same thread count (seeded torch / numpy, single-threaded
sentencepiece training).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from gguf.constants import GGMLQuantizationType as QT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tasks  # noqa: E402
from ggufio import write_llama_gguf  # noqa: E402

ROOT = HERE.parent.parent
OUT_DIR = ROOT / "models" / "tiny"
HF_DIR = HERE / "build" / "tiny-base-hf"

# --- model: every number below is checked against the budgets in check_budget() -------------
VOCAB = 1024           # 768 split room names inside JSON ("b","at","hroom"); 1024 keeps them whole
DIM = 128
N_LAYERS = 4
N_HEADS = 8            # head_dim 16
N_KV_HEADS = 2         # grouped-query attention: kv_dim 32, KV cache 4x smaller than 8 KV heads
FFN = 384              # 12 blocks of 32: ffn_down rows quantise without padding
CTX = 128
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
BOS, EOS, UNK = 1, 2, 0

WEIGHT_BUDGET = 1_000_000   # bytes of the whole GGUF file (metadata included)
STATE_BUDGET = 256 * 1024   # bytes of f32 state for a CTX-token context


def state_floats(ctx: int = CTX) -> int:
    head_dim = DIM // N_HEADS
    q_dim, kv_dim = N_HEADS * head_dim, N_KV_HEADS * head_dim
    return DIM * 2 + q_dim * 2 + FFN * 2 + ctx + head_dim + VOCAB + 2 * N_LAYERS * ctx * kv_dim


def make_config():
    from transformers import LlamaConfig
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=FFN, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, head_dim=DIM // N_HEADS,
        max_position_embeddings=CTX, rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None,
        hidden_act="silu", attention_bias=False, mlp_bias=False, initializer_range=0.02,
    )
    return cfg


# --- tokenizer --------------------------------------------------------------------------------

def train_tokenizer(lines: list[str]) -> spm.SentencePieceProcessor:
    """SentencePiece BPE with byte fallback and llama's normaliser settings. Trained on single
    lines, so no piece contains a newline: '\\n' is always the byte token <0x0A> and a task
    prompt's tokens are a prefix of the prompt+answer tokens."""
    buf = io.BytesIO()
    segments = [seg for line in lines for seg in line.split("\n")]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(segments), model_writer=buf, model_type="bpe", vocab_size=VOCAB,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, unk_id=UNK, bos_id=BOS, eos_id=EOS, pad_id=-1,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
        max_sentence_length=4096,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    assert sp.get_piece_size() == VOCAB
    return sp


# --- data -------------------------------------------------------------------------------------

def token_stream(sp: spm.SentencePieceProcessor, lines: list[str], seed: int) -> np.ndarray:
    """Documents of 1-4 corpus lines joined by '\\n' (so the newline token is learned), each
    [BOS] text [EOS], concatenated into one stream."""
    rng = np.random.default_rng(seed)
    docs, i = [], 0
    while i < len(lines):
        k = int(rng.integers(1, 5))
        docs.append("\n".join(lines[i:i + k]))
        i += k
    ids: list[int] = []
    for ids_doc in sp.encode(docs):
        ids.append(BOS)
        ids.extend(ids_doc)
        ids.append(EOS)
    return np.asarray(ids, dtype=np.int64)


def batches(stream: np.ndarray, batch: int, seq: int, seed: int):
    """Endless random windows of seq+1 tokens (inputs and shifted targets)."""
    rng = np.random.default_rng(seed)
    hi = len(stream) - seq - 1
    while True:
        starts = rng.integers(0, hi, size=batch)
        win = np.stack([stream[s:s + seq + 1] for s in starts])
        yield torch.from_numpy(win)


# --- training ---------------------------------------------------------------------------------

def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(args, sp, stream, val_stream, device):
    from transformers import LlamaForCausalLM
    torch.manual_seed(args.seed)
    cfg = make_config()
    model = LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters ({n_params - VOCAB * DIM} without the tied embedding)")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    it = batches(stream, args.batch, CTX, args.seed + 1)
    log, t0, last = [], time.time(), time.time()
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        win = next(it).to(device)
        out = model(input_ids=win[:, :-1], labels=win[:, :-1].clone(), use_cache=False)
        # HF shifts labels itself: labels == input_ids trains next-token prediction; the last
        # target of each window (win[:, -1]) is simply not used.
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            now = time.time()
            sps = (args.log_every if step else 1) / max(1e-9, now - last)
            last = now
            val = evaluate(model, val_stream, device) if step % (args.log_every * 5) == 0 or step == args.steps - 1 else None
            log.append({"step": step, "loss": round(out.loss.item(), 4), "val_loss": val})
            print(f"step {step:5d}  loss {out.loss.item():.4f}" + (f"  val {val:.4f}" if val else "")
                  + f"  lr {opt.param_groups[0]['lr']:.2e}  {sps:.2f} steps/s  {now - t0:.0f} s", flush=True)
    return model, log, time.time() - t0


@torch.no_grad()
def evaluate(model, stream: np.ndarray, device, n: int = 32) -> float:
    model.eval()
    starts = np.linspace(0, len(stream) - CTX - 1, n).astype(np.int64)
    win = torch.from_numpy(np.stack([stream[s:s + CTX] for s in starts])).to(device)
    loss = model(input_ids=win, labels=win, use_cache=False).loss.item()
    model.train()
    return round(loss, 4)


# --- export and checks ------------------------------------------------------------------------

def check_budget(gguf_path: Path) -> dict:
    size = gguf_path.stat().st_size
    sf = state_floats()
    print(f"GGUF {size} bytes (budget {WEIGHT_BUDGET}); state for ctx {CTX}: {sf} f32 = {sf * 4} bytes "
          f"(budget {STATE_BUDGET})")
    assert size <= WEIGHT_BUDGET, "GGUF over budget"
    assert sf * 4 <= STATE_BUDGET, "state over budget"
    return {"gguf_bytes": size, "state_f32": sf, "state_bytes": sf * 4}


@torch.no_grad()
def check_with_transformers(gguf_path: Path, stored: dict, sp, device) -> dict:
    """Load the GGUF through transformers' own GGUF support (what train.py does) and compare
    logits with a model built from the weights we meant to store; also the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    ref = LlamaForCausalLM(make_config())
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in stored.items()}, strict=True)
    ref.eval()
    with tempfile.TemporaryDirectory() as td:
        shutil.copy(gguf_path, Path(td) / gguf_path.name)
        m = AutoModelForCausalLM.from_pretrained(td, gguf_file=gguf_path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf_path.name)
    m.eval()
    text = "intent: turn on the kitchen light\n" + "half past seven in the evening is 19:30."
    ids = [BOS] + sp.encode(text)
    hf_ids = tok(text)["input_ids"]
    x = torch.tensor([ids])
    diff = (m(input_ids=x).logits - ref(input_ids=x).logits).abs().max().item()
    print(f"transformers GGUF load: max |logit diff| {diff:.2e}; tokenizer ids equal: {hf_ids == ids}")
    assert diff < 1e-4, diff
    assert hf_ids == ids, (hf_ids, ids)
    return {"max_abs_logit_diff": diff, "tokenizer_matches_sentencepiece": hf_ids == ids}


@torch.no_grad()
def samples(model, sp, device, prompts: list[str], n: int = 24) -> list[str]:
    out = []
    model.eval()
    for p in prompts:
        ids = torch.tensor([[BOS] + sp.encode(p)], device=device)
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           do_sample=False, pad_token_id=EOS, eos_token_id=EOS)
        out.append(sp.decode(g[0, ids.shape[1]:].tolist()))
        print(f"  {p!r} -> {out[-1]!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lines", type=int, default=120_000, help="corpus lines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}" + ("" if device.type == "cuda" else f" ({args.threads} threads)"))
    t_start = time.time()
    lines = tasks.corpus_lines(args.lines)
    sp = train_tokenizer(lines)
    n_val = len(lines) // 50
    stream = token_stream(sp, lines[n_val:], args.seed)
    val_stream = token_stream(sp, lines[:n_val], args.seed)
    print(f"corpus: {len(lines)} lines, {len(stream)} train tokens, {len(val_stream)} val tokens "
          f"(tokenizer: {time.time() - t_start:.0f} s)")
    assert state_floats() * 4 <= STATE_BUDGET

    model, log, train_s = train(args, sp, stream, val_stream, device)
    model = model.float().cpu().eval()

    args.out.mkdir(parents=True, exist_ok=True)
    # not named tokenizer.model: transformers would load that instead of the GGUF's own tokenizer
    (args.out / "tiny-base.spm.model").write_bytes(sp.serialized_model_proto())
    HF_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(HF_DIR)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    gguf_path = args.out / "tiny-base.gguf"
    stored = write_llama_gguf(gguf_path, model.config, sd, sp, QT.Q8_0, name="edgelora-tiny-base",
                              description="edgelora tiny home-assistant base (trained from scratch)")
    info = {"config": {"vocab": VOCAB, "dim": DIM, "n_layers": N_LAYERS, "n_heads": N_HEADS,
                       "n_kv_heads": N_KV_HEADS, "head_dim": DIM // N_HEADS, "ffn": FFN, "ctx": CTX,
                       "rope_theta": ROPE_THETA, "rms_eps": RMS_EPS, "tied_embeddings": True,
                       "parameters": sum(p.numel() for p in model.parameters())},
            **check_budget(gguf_path),
            "transformers_check": check_with_transformers(gguf_path, stored, sp, device),
            "train": {"steps": args.steps, "batch": args.batch, "seq": CTX, "lr": args.lr,
                      "seed": args.seed, "device": str(device), "threads": args.threads,
                      "train_seconds": round(train_s, 1), "steps_per_s": round(args.steps / train_s, 3),
                      "corpus_lines": len(lines), "train_tokens": int(len(stream)),
                      "final_val_loss": log[-1]["val_loss"]},
            "log": log}
    print("samples (greedy, base alone):")
    info["samples"] = samples(model, sp, device, [
        "turn on the", "log {\"action\":", "The bus comes at half past seven in the evening, which is",
        "intent: turn on the kitchen light\n", "normalize: quarter to nine in the morning\n"])
    (args.out / "base.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size} bytes) in {time.time() - t_start:.0f} s total")


if __name__ == "__main__":
    main()
