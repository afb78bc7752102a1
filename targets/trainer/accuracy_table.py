#!/usr/bin/env python3
"""Accuracy parity of the task adapters: PyTorch PEFT vs edgelora, on each task's test split.

    python targets/trainer/accuracy_table.py [--model tiny|smollm2|gemma3-270m ...] [--reference]

For each model and task it reads PEFT's figures from models/<dir>/<task>/metrics.json
(<dir>: tiny, smollm2, gemma3)
(written by train.py: float32 model, the adapter as trained, greedy decoding) and runs the
edgelora on the same split, through the Python bindings (`import edgelora`, targets/python) when
they are importable, else through the CLI's `edgelora eval` (target/release/edgelora, built if
missing; `--cli` forces it); both give the same answers:
  - unmerged: base as shipped (Q8_0 tiny / Q4_1 SmolLM2 / Q4_K_M Gemma 3) + adapter applied
    unmerged, SIMD path;
  - unmerged, reference kernels (f32 activations; --reference, slow on SmolLM2);
  - merged into the weights as Q8_0 (`edgelora merge --type q8_0`);
  - merged and re-quantised to each tensor's own type (`--type base`).
Prints a Markdown table and writes models/<dir>/accuracy.json. Needs no Python packages (the
bindings are optional).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TASKS = ("intent", "reply", "normalize")
# model -> (base GGUF, directory with <task>/adapter.gguf)
BASES = {
    "tiny": (ROOT / "models/tiny/tiny-base.gguf", ROOT / "models/tiny"),
    "smollm2": (ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf", ROOT / "models/smollm2"),
    # adapters not committed (Gemma Terms of Use): bash targets/trainer/train_gemma3.sh
    "gemma3-270m": (ROOT / "models/gemma-3-270m-q4_k_m.gguf", ROOT / "models/gemma3"),
}


def binary() -> str:
    b = ROOT / "target/release/edgelora"
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "edgelora-cli"], cwd=ROOT, check=True)
    return str(b)


def run_eval(bin_: str, args: list[str]) -> dict:
    r = subprocess.run([bin_, "eval", "--json", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgelora eval {' '.join(args)} failed:\n{r.stderr}")
    return json.loads(r.stdout)


class Evaluator:
    """Exact match of greedy answers on a task's test split, as `edgelora eval` computes it (prompt
    `"{task}: {input}\n"`, the answer is the first line, trimmed, at most 48 new tokens): in process
    with the Python bindings when `edgelora` is importable, else by running the CLI."""

    def __init__(self, force_cli: bool):
        self.edgelora = None
        if not force_cli:
            try:
                import edgelora  # targets/python; optional
                self.edgelora = edgelora
            except ImportError:
                pass
        self.bin_ = binary() if self.edgelora is None else None
        self.models: dict[str, object] = {}
        self.adapters: dict[str, object] = {}

    def how(self) -> str:
        return "Python bindings (import edgelora)" if self.edgelora else f"CLI {self.bin_}"

    def exact_match(self, task: str, model: Path, adapter: Path | None = None, reference: bool = False,
                    limit: int | None = None) -> float:
        if self.edgelora is None:
            args = ["--task", task, "-m", str(model), *(["--limit", str(limit)] if limit else []),
                    *(["--adapter", str(adapter)] if adapter else []), *(["--reference"] if reference else [])]
            return run_eval(self.bin_, args)["exact_match"]
        el = self.edgelora
        m = self.models.get(str(model)) or self.models.setdefault(str(model), el.Model.open(str(model)))
        ads = []
        if adapter:
            a = self.adapters.get(str(adapter)) or self.adapters.setdefault(str(adapter), el.Adapter.open(str(adapter)))
            ads = [(a, 1.0)]
        lines = (ROOT / "targets/trainer/data" / task / "test.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines if x.strip()][:limit]
        hits = sum(m.generate(f"{task}: {r['input']}\n", adapters=ads, max_tokens=48, stop=["\n"],
                              reference=reference).strip() == r["output"] for r in rows)
        return hits / max(len(rows), 1)

    def forget(self, model: Path) -> None:
        """Drop a model file's mapping (a merged file about to be deleted)."""
        self.models.pop(str(model), None)


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=tuple(BASES), help="default: every model with adapters")
    ap.add_argument("--reference", action="store_true", help="also run the scalar reference kernels")
    ap.add_argument("--limit", type=int, default=None, help="first N test rows only")
    ap.add_argument("--task", action="append", choices=TASKS, help="default: all three")
    ap.add_argument("--cli", action="store_true", help="evaluate with the CLI even if `import edgelora` works")
    args = ap.parse_args()
    ev = Evaluator(args.cli)
    print(f"evaluating with the {ev.how()}", file=sys.stderr)
    models = args.model or [m for m in BASES if (BASES[m][1] / "intent" / "adapter.gguf").exists()]
    rows = []
    for m in models:
        base, adir = BASES[m]
        if not base.exists():
            print(f"SKIPPED {m}: {base} not found (edgelora fetch {m})")
            continue
        acc_path = adir / "accuracy.json"
        out = json.loads(acc_path.read_text()) if acc_path.exists() and args.task else {}
        for t in args.task or TASKS:
            d = adir / t
            ad = d / "adapter.gguf"
            if not ad.exists():
                print(f"SKIPPED {m}/{t}: no {ad.relative_to(ROOT)}")
                continue
            met = json.loads((d / "metrics.json").read_text())
            t0 = time.time()
            r = {"peft": met["exact_match_adapter"], "peft_base_alone": met["exact_match_base_alone"],
                 "rank": met["rank"], "targets": met["targets"], "steps": met["steps"],
                 "adapter_bytes": ad.stat().st_size}
            r["base_alone"] = ev.exact_match(t, base, limit=args.limit)
            r["unmerged"] = ev.exact_match(t, base, ad, limit=args.limit)
            if args.reference:
                r["unmerged_reference"] = ev.exact_match(t, base, ad, reference=True, limit=args.limit)
            with tempfile.TemporaryDirectory() as td:
                for ty in ("q8_0", "base"):
                    mp = Path(td) / f"merged-{ty}.gguf"
                    subprocess.run([binary(), "merge", "--model", str(base), "--adapter", str(ad), "-o", str(mp),
                                    "--type", ty], cwd=ROOT, check=True, capture_output=True)
                    r[f"merged_{ty}"] = ev.exact_match(t, mp, limit=args.limit)
                    ev.forget(mp)
                    mp.unlink()
            r["seconds"] = round(time.time() - t0, 1)
            out[t] = r
            rows.append((m, t, r))
            print(f"{m}/{t}: {json.dumps(r)}", file=sys.stderr)
        if out and not args.limit:
            acc_path.write_text(json.dumps(out, indent=1) + "\n")
    print("| model | task | adapter | PEFT (f32) | edgelora unmerged | unmerged, reference | merged Q8_0 "
          "| merged, base type | base alone (edgelora / PEFT) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, t, r in rows:
        print(f"| {m} | {t} | r={r['rank']} {r['targets']}, {r['adapter_bytes'] / 1024:.0f} KiB | {pct(r['peft'])} "
              f"| {pct(r['unmerged'])} | {pct(r.get('unmerged_reference'))} | {pct(r['merged_q8_0'])} "
              f"| {pct(r['merged_base'])} | {pct(r['base_alone'])} / {pct(r['peft_base_alone'])} |")


if __name__ == "__main__":
    main()
