#!/usr/bin/env python3
"""Retention table: how much of each task one model keeps under each way of serving three
task adapters at once.

    python bench/retention.py --model tiny [--out bench/retention-tiny.md] [--limit N]
    python bench/retention.py --model smollm2 --out bench/retention-smollm2.md

Rows (exact match on each task's held-out split, `edgelora eval --task all --json`, and the
mean of the three):
  - each task's own adapter (the column's task with its own adapter: the reference);
  - the base alone;
  - the run-time mix of all three adapters at scale 1 and at scale 1/3
    (`--adapter A:s --adapter B:s --adapter C:s`, unmerged);
  - the jointly trained multi-task adapter (`train.py --task all`, models/<model>/multi), the
    upper bound for one adapter of the three adapters' total size;
  - each `edgelora adapter combine` method, unmerged, and merged into the base with
    `edgelora merge --type q8_0`.

A row whose command fails (no multi adapter trained, a combine method this build does not
have) is kept in the table with the reason instead of numbers, so the script runs on any
checkout. Writes markdown to --out (stdout without it) and the same data as JSON beside it
(--out with .json, or --json PATH).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("intent", "reply", "normalize")
# --model NAME -> (base argument for edgelora, adapters directory)
MODELS = {
    "tiny": ("models/tiny/tiny-base.gguf", "models/tiny"),
    "smollm2": ("smollm2", "models/smollm2"),
}
DEFAULT_METHODS = "linear,cat,svd,ties,ties_svd,dare_linear,dare_ties,magnitude_prune"


def find_edgelora(explicit: str | None) -> str:
    if explicit:
        return explicit
    for p in (ROOT / "target" / "release" / "edgelora", ROOT / "target" / "debug" / "edgelora"):
        if p.exists():
            return str(p)
    found = shutil.which("edgelora")
    if not found:
        raise SystemExit("no edgelora binary: cargo build --release -p edgelora-cli (or --edgelora PATH)")
    return found


class Runner:
    def __init__(self, binary: str, base: str, limit: int | None, verbose: bool):
        self.binary, self.base, self.limit, self.verbose = binary, base, limit, verbose

    def run(self, args: list[str]) -> subprocess.CompletedProcess:
        cmd = [self.binary, *args]
        if self.verbose:
            print("+", " ".join(cmd), file=sys.stderr)
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    def eval_all(self, adapters: list[str], model: str | None = None) -> dict:
        """{task: exact match} and "mean", or {"error": why}."""
        args = ["eval", "--task", "all", "--json", "-m", model or self.base]
        for a in adapters:
            args += ["--adapter", a]
        if self.limit:
            args += ["--limit", str(self.limit)]
        r = self.run(args)
        if r.returncode != 0:
            return {"error": first_error(r)}
        v = json.loads(r.stdout)
        out = {t: v["tasks"][t]["exact_match"] for t in TASKS}
        out["mean"] = v["mean_exact_match"]
        out["n"] = {t: v["tasks"][t]["n"] for t in TASKS}
        return out

    def eval_task(self, task: str, adapter: str) -> float | str:
        args = ["eval", "--task", task, "--json", "-m", self.base, "--adapter", adapter]
        if self.limit:
            args += ["--limit", str(self.limit)]
        r = self.run(args)
        if r.returncode != 0:
            return first_error(r)
        return json.loads(r.stdout)["exact_match"]


def first_error(r: subprocess.CompletedProcess) -> str:
    """The error line of a failed edgelora run (anyhow's `Error: ...`), else the last line."""
    lines = [l.strip() for l in (r.stderr or r.stdout).splitlines() if l.strip()]
    for l in lines:
        if l.startswith("Error:") or l.startswith("error:"):
            return l
    return lines[-1] if lines else f"exit status {r.returncode}"


def build_rows(args) -> list[dict]:
    base, adir = MODELS[args.model]
    run = Runner(find_edgelora(args.edgelora), base, args.limit, args.verbose)
    ads = {t: f"{adir}/{t}/adapter.gguf" for t in TASKS}
    for t, p in ads.items():
        if not (ROOT / p).exists():
            raise SystemExit(f"{p} is absent: train the task adapters first (targets/trainer/README.md)")
    rows = []

    def add(label: str, res: dict, command: str):
        rows.append({"row": label, **res, "command": command})
        what = res.get("error") or "  ".join(f"{t} {res[t]:.3f}" for t in (*TASKS, "mean"))
        print(f"{label}: {what}", file=sys.stderr)

    own = {t: run.eval_task(t, ads[t]) for t in TASKS}
    bad = [v for v in own.values() if isinstance(v, str)]
    add("own task adapter", {"error": bad[0]} if bad else {**own, "mean": sum(own.values()) / 3},
        "eval --task T --adapter models/<model>/T/adapter.gguf")
    add("base alone", run.eval_all([]), "eval --task all")
    for label, s in (("run-time mix, scale 1", "1"), ("run-time mix, scale 1/3", "0.333333")):
        add(label, run.eval_all([f"{ads[t]}:{s}" for t in TASKS]),
            "eval --task all " + " ".join(f"--adapter {t}:{s}" for t in TASKS))
    multi = f"{adir}/multi/adapter.gguf"
    if (ROOT / multi).exists():
        add("joint multi-task adapter", run.eval_all([multi]), f"eval --task all --adapter {multi}")
    else:
        add("joint multi-task adapter",
            {"error": f"{multi} is absent (train it: targets/trainer/train.py --task all, see train_smollm2.sh / rebuild_tiny.sh)"},
            "")

    with tempfile.TemporaryDirectory(prefix="edgelora-retention-") as td:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            out = Path(td) / f"combined-{method}.gguf"
            cmd = ["adapter", "combine", *[f"{ads[t]}:{args.weight}" for t in TASKS], "--method", method]
            if method not in ("linear", "cat", "svd"):
                cmd += ["--density", str(args.density)]
            if method == "svd" and args.rank:
                cmd += ["--rank", str(args.rank)]
            cmd += ["--seed", "0", "-o", str(out)]
            shown = "edgelora " + " ".join(cmd[:-1] + ["combined.gguf"])
            r = run.run(cmd)
            if r.returncode != 0:
                note = {"error": f"skipped: `adapter combine --method {method}` failed: {first_error(r)}"}
                add(f"combine {method}", note, shown)
                add(f"combine {method}, merged q8_0", {"error": "skipped: no combined adapter (above)"}, shown)
                continue
            add(f"combine {method}", run.eval_all([str(out)]), shown)
            merged = Path(td) / f"merged-{method}.gguf"
            r = run.run(["merge", "-m", base, "--adapter", str(out), "-o", str(merged), "--type", "q8_0"])
            if r.returncode != 0:
                add(f"combine {method}, merged q8_0", {"error": f"merge failed: {first_error(r)}"}, shown)
            else:
                add(f"combine {method}, merged q8_0", run.eval_all([], model=str(merged)),
                    shown + " && edgelora merge --type q8_0")
    return rows


def markdown(rows: list[dict], args) -> str:
    n = next((r["n"] for r in rows if "n" in r), None)
    lines = [
        f"Retention on `{args.model}`: exact match on each task's held-out split"
        + (f" (first {args.limit} examples)" if args.limit else "")
        + (f" ({', '.join(f'{t} n={n[t]}' for t in TASKS)})" if n else "")
        + ", `edgelora eval`, unmerged unless noted.",
        "",
        "| row | " + " | ".join(TASKS) + " | mean |",
        "| --- | " + " | ".join("---:" for _ in TASKS) + " | ---: |",
    ]
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"- {r['row']}: {r['error']}")
            lines.append(f"| {r['row']} | " + " | ".join("—" for _ in TASKS) + " | — |")
        else:
            lines.append(f"| {r['row']} | " + " | ".join(f"{100 * r[t]:.1f}%" for t in TASKS)
                         + f" | {100 * r['mean']:.1f}% |")
    if notes:
        lines += ["", "Rows without numbers:", *notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--out", type=Path, help="markdown output (default: stdout); JSON goes beside it")
    ap.add_argument("--json", type=Path, help="JSON output (default: --out with .json)")
    ap.add_argument("--limit", type=int, help="first N examples per task (default: the whole split)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"combine methods (default: {DEFAULT_METHODS})")
    ap.add_argument("--weight", default="1", help="weight of each adapter in `adapter combine` (default 1)")
    ap.add_argument("--density", type=float, default=0.5, help="--density for ties*, dare_*, magnitude_prune* (default 0.5)")
    ap.add_argument("--rank", type=int, help="--rank for svd (default: the tool's)")
    ap.add_argument("--edgelora", help="edgelora binary (default: target/release/edgelora)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every command")
    args = ap.parse_args(argv)
    rows = build_rows(args)
    md = markdown(rows, args)
    data = {"model": args.model, "limit": args.limit, "tasks": list(TASKS), "rows": rows}
    if args.out:
        args.out.write_text(md, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(md)
    jpath = args.json or (args.out.with_suffix(".json") if args.out else None)
    if jpath:
        jpath.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {jpath}", file=sys.stderr)


if __name__ == "__main__":
    main()
