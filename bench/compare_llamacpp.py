#!/usr/bin/env python3
"""Side-by-side speed: edgelora vs llama.cpp on the same GGUF, same machine, same run.

    .venv/bin/pip install llama-cpp-python==0.3.36    # builds llama.cpp from source (minutes)
    cargo build --release -p edgelora-cli
    .venv/bin/python bench/compare_llamacpp.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--lora models/bench-lora-r8.gguf] [--threads 1 2] [--reps 3]

For each thread count, the two runtimes alternate (llama.cpp, edgelora, llama.cpp, ...), each
run doing a 64-token prefill and 64 decode steps; the best of --reps runs is kept for each.
llama.cpp is timed through llama-cpp-python's low-level API (`llama_decode` calls, timed in
Python around each call; the per-call Python overhead is ~10 us against ms-scale steps).
edgelora is timed by `edgelora bench --json` (its own clock around the same work).
Prints tokens/s and the ratios edgelora / llama.cpp. On a shared machine add `--cpu-time`
(one thread): both sides are then timed in the calling thread's CPU time, and the table also
gives the median of the per-round ratios.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ctypes

import llama_cpp


@llama_cpp.llama_log_callback
def _quiet(level, text, user_data):
    """Drop llama.cpp's log lines so the table stays readable."""



def bench_llamacpp(model, threads, n_prompt, n_gen, lora=None):
    params = llama_cpp.llama_model_default_params()
    m = llama_cpp.llama_model_load_from_file(model.encode(), params)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_prompt + n_gen + 8
    cp.n_batch = n_prompt
    cp.n_ubatch = n_prompt
    cp.n_threads = threads
    cp.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(m, cp)
    if lora:
        ad = llama_cpp.llama_adapter_lora_init(m, lora.encode())
        if not ad:
            raise SystemExit(f"llama.cpp could not load {lora}")
        llama_cpp.llama_set_adapter_lora(ctx, ad, 1.0)
    vocab = llama_cpp.llama_model_get_vocab(m)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    toks = [(i * 7919 + 13) % n_vocab for i in range(n_prompt)]
    batch = llama_cpp.llama_batch_init(n_prompt, 0, 1)

    def fill(tokens, pos0, all_logits=False):
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1

    fill(toks, 0)
    t0 = time.perf_counter()
    c0 = time.thread_time()
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")
    pp = n_prompt / (time.perf_counter() - t0)
    pp_cpu = n_prompt / (time.thread_time() - c0)
    tok = 1
    t0 = time.perf_counter()
    c0 = time.thread_time()
    for i in range(n_gen):
        fill([tok], n_prompt + i)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        logits = llama_cpp.llama_get_logits_ith(ctx, -1)
        tok = max(range(0, 64), key=lambda j: logits[j])  # cheap, deterministic pick
    tg = n_gen / (time.perf_counter() - t0)
    # This thread's CPU time (Python overhead included): at one thread llama.cpp computes on
    # the calling thread, so this excludes time slices taken by other processes on a busy host.
    tg_cpu = n_gen / (time.thread_time() - c0)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(m)
    return pp, tg, pp_cpu, tg_cpu


def bench_edgelora(exe, model, threads, n_prompt, n_gen, lora=None, cpu_time=False):
    cmd = [exe, "bench", "--model", model, "--prompt-len", str(n_prompt), "--gen", str(n_gen), "--reps", "1", "--json"]
    if threads != 1:
        cmd += ["--threads", str(threads)]
    if lora:
        cmd += ["--adapter", lora]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    if cpu_time:
        if j.get("prefill_cpu_tokens_per_s") is None:
            raise SystemExit(f"{exe} reports no CPU time (an older build, or not Linux)")
        return j["prefill_cpu_tokens_per_s"], j["decode_cpu_tokens_per_s"]
    return j["prefill_tokens_per_s"], j["decode_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--lora", default=None, help="also compare with this adapter applied (unmerged)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--exe", default="target/release/edgelora")
    ap.add_argument("--llamacpp-only", action="store_true",
                    help="time llama.cpp alone: decode tokens/s per rep, wall and thread-CPU time "
                         "(one thread; pair with `decode_tps`, which prints both for edgelora)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="compare thread CPU time instead of wall time (one thread only): on a "
                         "shared host it leaves out other processes' time slices. llama.cpp: "
                         "time.thread_time() around each llama_decode (at one thread ggml computes "
                         "on the calling thread); edgelora: `bench --json`'s *_cpu_tokens_per_s")
    a = ap.parse_args()
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    llama_cpp.llama_backend_init()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {platform.processor() or ''} "
          f"llama-cpp-python {llama_cpp.__version__}; model {a.model}; lora {a.lora}; "
          f"prefill {a.prompt} tokens, decode {a.gen} tokens, best of {a.reps}")
    if a.llamacpp_only:
        for th in a.threads:
            for r in range(a.reps):
                pp, tg, _, tg_cpu = bench_llamacpp(a.model, th, a.prompt, a.gen, a.lora)
                print(f"llama.cpp threads {th} rep {r}: prefill {pp:.1f} tok/s wall; "
                      f"decode {tg:.1f} tok/s wall, {tg_cpu:.1f} tok/s cpu-time", flush=True)
        return
    if a.cpu_time:
        if a.threads != [1]:
            raise SystemExit("--cpu-time measures the calling thread: use it with --threads 1")
        print("# tokens/s in thread CPU time; ratios: of the best runs, and the median of the "
              "per-round ratios (rounds alternate llama.cpp, edgelora)")
        print("| threads | lora | llama.cpp prefill | edgelora prefill | ratio | median | "
              "llama.cpp decode | edgelora decode | ratio | median |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| threads | lora | llama.cpp prefill | edgelora prefill | ratio | llama.cpp decode | edgelora decode | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    loras = [None] + ([a.lora] if a.lora else [])
    for th in a.threads:
        for lora in loras:
            best = {"l": [0, 0], "e": [0, 0]}
            rounds = []
            for _ in range(a.reps):
                r = {}
                for who in ("l", "e"):
                    if who == "l":
                        pp, tg, pp_cpu, tg_cpu = bench_llamacpp(a.model, th, a.prompt, a.gen, lora)
                        if a.cpu_time:
                            pp, tg = pp_cpu, tg_cpu
                    else:
                        pp, tg = bench_edgelora(a.exe, a.model, th, a.prompt, a.gen, lora, a.cpu_time)
                    r[who] = (pp, tg)
                    best[who][0] = max(best[who][0], pp)
                    best[who][1] = max(best[who][1], tg)
                rounds.append((r["e"][0] / r["l"][0], r["e"][1] / r["l"][1]))
            lp, lt = best["l"]
            ep, et = best["e"]
            name = Path(a.lora).name if lora else '-'
            if a.cpu_time:
                mp = statistics.median(x[0] for x in rounds)
                mt = statistics.median(x[1] for x in rounds)
                print(f"| {th} | {name} | {lp:.1f} | {ep:.1f} | {ep / lp:.2f} | {mp:.2f} | "
                      f"{lt:.1f} | {et:.1f} | {et / lt:.2f} | {mt:.2f} |")
            else:
                print(f"| {th} | {name} | {lp:.1f} | {ep:.1f} | {ep / lp:.2f} | {lt:.1f} | {et:.1f} | {et / lt:.2f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
