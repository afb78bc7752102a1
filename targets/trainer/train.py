#!/usr/bin/env python3
"""Train a PEFT LoRA adapter for one task on a GGUF base, evaluate it, export it.

    python targets/trainer/train.py --base tiny --task intent --steps 600 --out models/tiny/intent
    python targets/trainer/train.py --base smollm2 --task intent --steps 300 --out build/smollm2-intent
    python targets/trainer/train.py --base gemma3-270m --task intent --steps 100 --threads 1 --out models/gemma3/intent
    accelerate launch targets/trainer/train.py ...      # or: torchrun --nproc-per-node 4 train.py ...

--base is `tiny` (models/tiny/tiny-base.gguf), `smollm2` (SmolLM2-135M-Instruct.Q4_1.gguf in
models/, $EDGELORA_MODELS or the repository's models/), `gemma3-270m` (gemma-3-270m-q4_k_m.gguf,
same places), a .gguf path, or a Hugging Face checkpoint directory. A GGUF base is loaded by transformers' GGUF support, which dequantises
it to float32: the adapter is trained on exactly the weights the device runs (up to the
runtime's own rounding), not on a different float original.

What it does, in order:
 1. loads the base and its tokenizer, builds prompt/answer examples from
    targets/trainer/data/<task>/train.jsonl (`tasks.prompt`, loss on the answer, its newline
    and EOS only);
 2. trains LoRA (PEFT) with AdamW, warmup + cosine schedule, seeded; uses CUDA when present,
    else the CPU (--threads, default: torch's own choice); all device placement and data sharding go through
    `accelerate`, so `accelerate launch` / `torchrun` on several GPUs runs it unchanged.
    The loss applies the output head only at the answer positions (`AnswerLoss`): a 262,144 x
    640 head (Gemma 3) over every position of a batch is most of the step's work and memory;
    the loss is the same mean cross-entropy as transformers' (checked on SmolLM2: equal to
    float rounding, `--check-loss`);
 3. evaluates exact match on the test split with greedy decoding (base alone, then with the
    adapter; prompt -> text up to the first newline);
 4. writes OUT/adapter_model.safetensors + adapter_config.json (PEFT; the task
    name is recorded as "task_name", which `adapter convert` copies), OUT/metrics.json and
    OUT/predictions.jsonl;
 5. if an `edgelora` binary with `adapter convert` is found (target/release, target/debug,
    PATH or --edgelora), runs `edgelora adapter convert OUT --base BASE.gguf -o OUT/adapter.gguf`.

Reproducible on CPU: same seed, same thread count -> same adapter bytes and metrics (timing
fields aside).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import tasks  # noqa: E402

TARGETS = {
    "all-linear": "all-linear",  # PEFT: every nn.Linear except the output head
    "qv": ["q_proj", "v_proj"],
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
# default learning rate per base (tuned on these tasks; a 135M pretrained model needs a
# smaller step than the 0.85M tiny base)
DEFAULT_LR = {"tiny": 6e-3, "smollm2": 1e-3}
# GGUF file of each named pretrained base, looked up in model_dirs(); `edgelora fetch NAME` gets it
NAMED_BASES = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3-270m": "gemma-3-270m-q4_k_m.gguf"}


# ---------------------------------------------------------------------------------------------
# base model
# ---------------------------------------------------------------------------------------------

def model_dirs() -> list[Path]:
    dirs = [Path.cwd() / "models"]
    if os.environ.get("EDGELORA_MODELS"):
        dirs.append(Path(os.environ["EDGELORA_MODELS"]))
    dirs.append(ROOT / "models")
    return dirs


def resolve_base(base: str) -> Path:
    if base == "tiny":
        return ROOT / "models" / "tiny" / "tiny-base.gguf"
    if base in NAMED_BASES:
        name = NAMED_BASES[base]
        for d in model_dirs():
            p = d / name
            if p.exists():
                return p
        raise SystemExit(f"{name} not found in ./models, $EDGELORA_MODELS or the repository's models/: "
                         f"run `cargo run --release -p edgelora-cli -- fetch {base}`")
    p = Path(base)
    if not p.exists():
        raise SystemExit(f"--base {base}: no such file or directory (or use tiny / {' / '.join(NAMED_BASES)})")
    return p


def gguf_add_bos(path: Path) -> bool | None:
    """`tokenizer.ggml.add_bos_token` of a GGUF (None if absent)."""
    from gguf import GGUFReader
    f = GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return None if f is None else bool(f.contents())


def load_base(path: Path):
    """Model (float32) and tokenizer. A GGUF is loaded from a private directory holding only
    a link to it: transformers also reads tokenizer files it finds beside the GGUF (a
    `tokenizer.model` there silently replaces the GGUF's tokenizer and drops its BOS rule)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if path.suffix != ".gguf":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / path.name).symlink_to(path.resolve())
        tok = AutoTokenizer.from_pretrained(td, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=path.name, dtype=torch.float32)
    # the runtime tokenises prompts by the GGUF's rule: training and evaluation must see the same ids
    want_bos = gguf_add_bos(path)
    has_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id] and tok.bos_token_id is not None
    if want_bos is not None and want_bos != has_bos:
        raise SystemExit(f"{path}: add_bos_token={want_bos} but the transformers tokenizer "
                         f"{'adds' if has_bos else 'does not add'} BOS")
    model.config.use_cache = False
    return model, tok


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def encode_example(tok, task: str, inp: str, out: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): [BOS?] prompt answer '\\n' EOS, labels -100 on the prompt.

    The prompt is tokenised exactly as the runtime does at inference (the tokenizer's own
    BOS rule), and its ids must be a prefix of the ids of prompt+answer, so training sees the
    same prompt tokens as generation."""
    p_ids = tok(tasks.prompt(task, inp))["input_ids"]
    full = tok(tasks.prompt(task, inp) + tasks.completion(out))["input_ids"]
    if full[: len(p_ids)] != p_ids:
        raise ValueError(f"prompt tokens are not a prefix of prompt+answer tokens for {inp!r}")
    full = full + [tok.eos_token_id]
    labels = [-100] * len(p_ids) + full[len(p_ids):]
    return full, labels


class Examples(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(pad_id: int):
    def f(batch):
        n = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            lab[i, : len(y)] = torch.tensor(y)
            att[i, : len(x)] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}
    return f


class AnswerLoss(torch.nn.Module):
    """Causal-LM loss with the output head applied only where there is a label.

    Same value as transformers' `ForCausalLMLoss` (mean cross-entropy over the positions whose
    next-token label is not -100), but the head runs on those positions only: with labels on
    the answer alone that is ~1/3 of the positions, and for Gemma 3's 262,144-row head the
    logits of a full batch (16 x 40 x 262,144 floats, 0.67 GB, and as much again for their
    gradient) were most of a step. It is a module wrapping the PEFT model so that
    `accelerate.prepare` (DDP on several processes) wraps the whole loss computation."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft = peft_model

    def forward(self, input_ids, attention_mask, labels):
        causal = self.peft.get_base_model()  # the *ForCausalLM, with the LoRA layers injected
        hidden = causal.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        target = labels[:, 1:]  # position t predicts token t+1
        keep = target != -100
        logits = causal.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer_tokens, vocab)
        cap = getattr(causal.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def check_loss(head_only: AnswerLoss, dl, steps: int, say) -> None:
    """AnswerLoss against transformers' full-head loss on the first batches (no training)."""
    worst = 0.0
    with torch.no_grad():
        for i, batch in enumerate(dl):
            if i >= steps:
                break
            full = head_only.peft(**batch).loss.item()
            ours = head_only(**batch).item()
            worst = max(worst, abs(full - ours) / max(1e-12, abs(full)))
            say(f"check-loss batch {i}: transformers {full:.7f}  answer-only head {ours:.7f}  "
                f"rel diff {abs(full - ours) / max(1e-12, abs(full)):.2e}")
    if worst > 1e-5:
        raise SystemExit(f"--check-loss: answer-only loss differs from transformers' by {worst:.2e} (relative)")
    say(f"check-loss: equal within {worst:.1e} (relative) on {steps} batches")


# ---------------------------------------------------------------------------------------------
# evaluation: greedy decoding, answer = text before the first newline
# ---------------------------------------------------------------------------------------------

def stop_ids(tok) -> list[int]:
    """EOS and every token whose text contains a newline: generation can stop there."""
    ids = {tok.eos_token_id}
    for i in range(len(tok)):
        if "\n" in tok.decode([i]):
            ids.add(i)
    return sorted(ids)


@torch.no_grad()
def generate_answers(model, tok, task: str, inputs: list[str], max_new: int, batch: int,
                     device) -> list[str]:
    """Greedy continuation of each prompt (left-padded batches), decoded."""
    model.eval()
    stops = stop_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for s in range(0, len(inputs), batch):
        enc = [tok(tasks.prompt(task, x))["input_ids"] for x in inputs[s:s + batch]]
        n = max(map(len, enc))
        ids = torch.full((len(enc), n), pad, dtype=torch.long)
        att = torch.zeros((len(enc), n), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, n - len(e):] = torch.tensor(e)
            att[i, n - len(e):] = 1
        g = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=max_new,
                           do_sample=False, eos_token_id=stops, pad_token_id=pad, use_cache=True)
        for row in g[:, n:].tolist():
            out.append(tok.decode(row, skip_special_tokens=True))
    return out


def evaluate(model, tok, task: str, rows: list[dict], max_new: int, batch: int, device) -> dict:
    t0 = time.time()
    gens = generate_answers(model, tok, task, [r["input"] for r in rows], max_new, batch, device)
    preds = [tasks.extract_answer(g) for g in gens]
    ok = [p == r["output"] for p, r in zip(preds, rows)]
    return {"exact_match": sum(ok) / max(1, len(rows)), "correct": sum(ok), "n": len(rows),
            "preds": preds, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

def find_edgelora(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for p in (ROOT / "target" / "release" / "edgelora", ROOT / "target" / "debug" / "edgelora"):
        if p.exists():
            return str(p)
    return shutil.which("edgelora")


def convert(out: Path, base: Path, task: str, binary: str | None) -> dict:
    """Run `edgelora adapter convert` if it exists; otherwise say why not."""
    if base.suffix != ".gguf":
        return {"skipped": "base is not a GGUF file"}
    if binary is None:
        msg = "no edgelora binary (build: cargo build --release -p edgelora-cli)"
        print(f"NOTE: {msg}; skipped the device export")
        return {"skipped": msg}
    probe = subprocess.run([binary, "adapter", "convert", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        msg = f"{binary} has no `adapter convert` yet"
        print(f"NOTE: {msg}; skipped the device export")
        return {"skipped": msg}
    cmd = [binary, "adapter", "convert", str(out), "--base", str(base), "-o", str(out / "adapter.gguf"),
           "--task", task]
    print("+", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        print(f"NOTE: adapter convert failed (exit {r.returncode}); the PEFT files are still in {out}")
        return {"failed": r.returncode, "command": cmd}
    return {"gguf": "adapter.gguf", "bytes": (out / "adapter.gguf").stat().st_size}


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True,
                    help="tiny | smollm2 | gemma3-270m | path to a .gguf or HF checkpoint dir")
    ap.add_argument("--task", required=True, choices=(*tasks.TASKS, "all"),
                    help="one task, or `all`: one jointly trained adapter on the union of every "
                         "task's train split (the multi-task upper bound; give it the three "
                         "single-task ranks and steps summed), evaluated on each task's test split")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--targets", default="all-linear",
                    help="all-linear | qv | attn | mlp | comma-separated module names (q_proj,v_proj,...)")
    ap.add_argument("--save-dtype", choices=("f32", "f16"), default="f32",
                    help="dtype of A and B in adapter_model.safetensors (f16 halves the file; the "
                         "adapter is then evaluated with f16-rounded weights)")
    ap.add_argument("--lr", type=float, default=None, help="default: 6e-3 for tiny, 1e-3 otherwise")
    ap.add_argument("--batch", type=int, default=16, help="examples per step (per process)")
    ap.add_argument("--warmup", type=int, default=None, help="default: steps/10, at most 50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads when there is no GPU (default: torch's own, the core count)")
    ap.add_argument("--eval-n", type=int, default=None, help="test rows to evaluate (default: all)")
    ap.add_argument("--eval-batch", type=int, default=50)
    ap.add_argument("--skip-base-eval", action="store_true", help="do not evaluate the base alone")
    ap.add_argument("--edgelora", default=None, help="path of the edgelora binary for `adapter convert`")
    ap.add_argument("--no-convert", action="store_true")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--check-loss", type=int, default=0, metavar="N",
                    help="only compare the answer-only-head loss with transformers' full loss on N "
                         "batches of the untrained adapter, fail if they differ (relative > 1e-5), exit")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    # cpu=True without a GPU: that is also what turns on gloo data parallelism when torchrun /
    # accelerate launch start several CPU processes (accelerate only does so when told "cpu")
    accel = Accelerator(cpu=not torch.cuda.is_available())
    device = accel.device
    if device.type == "cpu":
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(args.seed)
    main_proc = accel.is_main_process
    say = accel.print

    base_path = resolve_base(args.base)
    base_kind = args.base if args.base == "tiny" or args.base in NAMED_BASES else "path"
    lr = args.lr if args.lr is not None else DEFAULT_LR.get(args.base, 1e-3)
    warmup = args.warmup if args.warmup is not None else min(50, max(1, args.steps // 10))
    say(f"device: {device} ({accel.num_processes} process(es)"
        + (f", {torch.get_num_threads()} CPU threads)" if device.type == "cpu" else ")"))
    t_load = time.time()
    model, tok = load_base(base_path)
    say(f"base: {rel(base_path)} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"loaded in {time.time() - t_load:.1f} s)")

    # `--task all` trains on the union of the tasks' train splits (each example keeps its own
    # task prompt) and evaluates every task's test split; one task is the same as before
    task_list = list(tasks.TASKS) if args.task == "all" else [args.task]
    test_sets, max_new, enc = {}, {}, []
    for task in task_list:
        train_rows = tasks.load_split(task, "train")
        test_sets[task] = tasks.load_split(task, "test")[: args.eval_n]
        task_enc = [encode_example(tok, task, r["input"], r["output"]) for r in train_rows]
        ans_len = max(len(y) - sum(1 for v in y if v == -100) for _, y in task_enc)
        max_new[task] = ans_len + 8
        enc += task_enc
        say(f"task {task}: {len(train_rows)} train / {len(test_sets[task])} test rows; longest answer "
            f"{ans_len} tokens (incl. newline, EOS); first prompt ids {task_enc[0][0][:12]}...")

    def evaluate_tasks(m) -> dict:
        """Per-task evaluation; for `--task all` also the mean exact match under "mean"."""
        res = {t: evaluate(m, tok, t, test_sets[t], max_new[t], args.eval_batch, device) for t in task_list}
        return res

    targets = TARGETS.get(args.targets, [t.strip() for t in args.targets.split(",") if t.strip()])
    lcfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
                      target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"LoRA r={args.rank} alpha={args.alpha} targets={args.targets}: {n_train} trainable parameters "
        f"({n_train * 4} bytes as f32)")

    dl = torch.utils.data.DataLoader(Examples(enc), batch_size=args.batch, shuffle=True, drop_last=True,
                                     collate_fn=collate(tok.pad_token_id if tok.pad_token_id is not None
                                                        else tok.eos_token_id),
                                     generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_model = AnswerLoss(model)
    # the scheduler is not handed to accelerate: it would step it once per process, and here
    # --steps counts optimizer steps whatever the number of processes
    loss_model, opt, dl = accel.prepare(loss_model, opt, dl)
    if args.check_loss:
        check_loss(accel.unwrap_model(loss_model), dl, args.check_loss, say)
        return

    # --- base alone (LoRA off) --------------------------------------------------------------
    unwrapped = accel.unwrap_model(loss_model).peft
    base_evals = None
    if main_proc and not args.skip_base_eval:
        with unwrapped.disable_adapter():
            base_evals = evaluate_tasks(unwrapped)
        for t, e in base_evals.items():
            say(f"base alone{'' if args.task != 'all' else ' (' + t + ')'}: exact match {e['exact_match']:.3f} "
                f"({e['correct']}/{e['n']}, {e['seconds']} s); e.g. {e['preds'][:3]}")
    accel.wait_for_everyone()

    # --- training ---------------------------------------------------------------------------
    loss_model.train()
    step, t0, t_last, losses, tokens = 0, time.time(), time.time(), [], 0
    while step < args.steps:
        for batch in dl:
            loss = loss_model(**batch)
            accel.backward(loss)
            accel.clip_grad_norm_(loss_model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum()) * accel.num_processes
            step += 1
            if step % args.log_every == 0 or step == args.steps or step == 1:
                now = time.time()
                n = args.log_every if step % args.log_every == 0 else 1
                say(f"step {step:5d}/{args.steps}  loss {sum(losses[-n:]) / len(losses[-n:]):.4f}  "
                    f"lr {sched.get_last_lr()[0]:.2e}  {n / max(1e-9, now - t_last):.2f} steps/s  "
                    f"{now - t0:.0f} s", flush=True)
                t_last = now
            if step >= args.steps:
                break
    train_s = time.time() - t0
    accel.wait_for_everyone()

    # --- adapter evaluation, save, export (main process) -------------------------------------
    if main_proc:
        unwrapped = accel.unwrap_model(loss_model).peft
        if args.save_dtype == "f16":
            # evaluate exactly the weights that are saved: round A and B to f16 first
            with torch.no_grad():
                for p in unwrapped.parameters():
                    if p.requires_grad:
                        p.copy_(p.half().float())
        lora_evals = evaluate_tasks(unwrapped)
        for t, e in lora_evals.items():
            say(f"with adapter{'' if args.task != 'all' else ' (' + t + ')'}: exact match {e['exact_match']:.3f} "
                f"({e['correct']}/{e['n']}, {e['seconds']} s)")
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(out, safe_serialization=True)
        if args.save_dtype == "f16":
            from safetensors.torch import load_file, save_file
            st = out / "adapter_model.safetensors"
            save_file({k: v.half() for k, v in load_file(st).items()}, st, metadata={"format": "pt"})
        (out / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template
        cfg_path = out / "adapter_config.json"
        acfg = json.loads(cfg_path.read_text())
        acfg["base_model_name_or_path"] = rel(base_path)
        # `task_name` is what `edgelora adapter convert` records as adapter.edgelora.task
        # (PEFT ignores the key, with a warning, when it loads the directory)
        acfg["task_name"] = args.task
        if isinstance(acfg.get("target_modules"), list):
            acfg["target_modules"] = sorted(acfg["target_modules"])  # PEFT writes a set: fix the order
        cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for t in task_list:
                for i, r in enumerate(test_sets[t]):
                    row = {"task": t} if args.task == "all" else {}
                    row.update({"input": r["input"], "gold": r["output"], "adapter": lora_evals[t]["preds"][i]})
                    if base_evals:
                        row["base"] = base_evals[t]["preds"][i]
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        # evaluate what ships: the saved files on a freshly loaded base must give the same answers
        # as the in-memory model (catches a save/load mismatch or a file overwritten by another run)
        from peft import PeftModel
        fresh, _ = load_base(base_path)
        reloaded = PeftModel.from_pretrained(fresh, out).to(device)
        reload_evals = evaluate_tasks(reloaded)
        same = all(reload_evals[t]["preds"] == lora_evals[t]["preds"] for t in task_list)
        say(f"reloaded from {rel(out)}: exact match "
            + ", ".join(f"{reload_evals[t]['exact_match']:.3f}" for t in task_list)
            + ("" if same else " -- DIFFERS from the in-memory model"))
        if not same:
            raise SystemExit(f"{out}: the saved adapter does not reproduce the trained model's answers")
        del fresh, reloaded
        export = {"skipped": "--no-convert"} if args.no_convert else convert(out, base_path, args.task,
                                                                              find_edgelora(args.edgelora))
        def mean_em(evals):
            return sum(e["exact_match"] for e in evals.values()) / len(evals)

        lora_eval = {"exact_match": mean_em(lora_evals),
                     "seconds": round(sum(e["seconds"] for e in lora_evals.values()), 1)}
        base_eval = None if not base_evals else {
            "exact_match": mean_em(base_evals),
            "seconds": round(sum(e["seconds"] for e in base_evals.values()), 1)}
        test_n = sum(len(v) for v in test_sets.values())
        metrics = {
            "task": args.task, "base": base_kind, "base_path": rel(base_path),
            "base_sha256": sha256(base_path) if base_path.is_file() else None,
            "prompt": "{task}: {input}\\n", "answer": "generated text before the first newline",
            "steps": args.steps, "rank": args.rank, "alpha": args.alpha, "targets": args.targets,
            "dropout": args.dropout, "lr": lr, "warmup": warmup, "batch": args.batch,
            "processes": accel.num_processes, "seed": args.seed,
            "trainable_params": n_train, "save_dtype": args.save_dtype, "adapter_bytes": (out / "adapter_model.safetensors").stat().st_size,
            "test_n": test_n,
            "exact_match_base_alone": base_eval["exact_match"] if base_eval else None,
            "exact_match_adapter": lora_eval["exact_match"],
            "reloaded_matches": True,
            "note": "exact match of PyTorch PEFT (float32, the dequantised base the adapter was trained on), "
                    "greedy decoding, answer = text before the first newline",
            "final_loss": round(sum(losses[-args.log_every:]) / len(losses[-args.log_every:]), 4),
            "train_seconds": round(train_s, 1), "steps_per_s": round(args.steps / train_s, 3),
            "train_tokens_per_s": round(tokens / train_s, 1),
            "eval_seconds": {"base": base_eval["seconds"] if base_eval else None, "adapter": lora_eval["seconds"]},
            "device": str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "export": export,
        }
        if args.task == "all":
            # exact_match_* above are then the mean over the tasks; these are the tasks' own
            metrics["per_task"] = {t: {"test_n": len(test_sets[t]),
                                       "exact_match_base_alone": base_evals[t]["exact_match"] if base_evals else None,
                                       "exact_match_adapter": lora_evals[t]["exact_match"]} for t in task_list}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        say(json.dumps({k: metrics[k] for k in ("task", "base", "exact_match_base_alone", "exact_match_adapter",
                                                "adapter_bytes", "steps_per_s", "train_seconds", "device")}))
    accel.wait_for_everyone()
    accel.end_training()


if __name__ == "__main__":
    main()
