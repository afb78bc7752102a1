#!/usr/bin/env python3
"""Accuracy parity of the task adapters: PyTorch PEFT vs edgelora, on each task's test split.

    python targets/trainer/accuracy_table.py [--model tiny|smollm2|gemma3-270m ...] [--reference]

For each model and task it reads PEFT's figures from models/<dir>/<task>/metrics.json
(<dir>: tiny, smollm2, gemma3)
(written by train.py: float32 model, the adapter as trained, greedy decoding) and runs the
edgelora CLI (target/release/edgelora, built if missing) on the same split:
  - unmerged: base as shipped (Q8_0 tiny / Q4_1 SmolLM2 / Q4_K_M Gemma 3) + adapter applied
    unmerged, SIMD path;
  - unmerged, reference kernels (f32 activations; --reference, slow on SmolLM2);
  - merged into the weights as Q8_0 (`edgelora merge --type q8_0`);
  - merged and re-quantised to each tensor's own type (`--type base`).
Prints a Markdown table and writes models/<dir>/accuracy.json. Needs no Python packages.
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


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=tuple(BASES), help="default: every model with adapters")
    ap.add_argument("--reference", action="store_true", help="also run the scalar reference kernels")
    ap.add_argument("--limit", type=int, default=None, help="first N test rows only")
    ap.add_argument("--task", action="append", choices=TASKS, help="default: all three")
    args = ap.parse_args()
    bin_ = binary()
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
            lim = ["--limit", str(args.limit)] if args.limit else []
            common = ["--task", t, "-m", str(base), *lim]
            t0 = time.time()
            r = {"peft": met["exact_match_adapter"], "peft_base_alone": met["exact_match_base_alone"],
                 "rank": met["rank"], "targets": met["targets"], "steps": met["steps"],
                 "adapter_bytes": ad.stat().st_size}
            r["base_alone"] = run_eval(bin_, common)["exact_match"]
            r["unmerged"] = run_eval(bin_, [*common, "--adapter", str(ad)])["exact_match"]
            if args.reference:
                r["unmerged_reference"] = run_eval(bin_, [*common, "--adapter", str(ad), "--reference"])[
                    "exact_match"]
            with tempfile.TemporaryDirectory() as td:
                for ty in ("q8_0", "base"):
                    mp = Path(td) / f"merged-{ty}.gguf"
                    subprocess.run([bin_, "merge", "--model", str(base), "--adapter", str(ad), "-o", str(mp),
                                    "--type", ty], cwd=ROOT, check=True, capture_output=True)
                    r[f"merged_{ty}"] = run_eval(bin_, ["--task", t, "-m", str(mp), *lim])["exact_match"]
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
