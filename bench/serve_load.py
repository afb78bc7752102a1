#!/usr/bin/env python3
"""Load test for `edgelora serve` (or llama-server): concurrent clients, each with its own adapter or mix.

Starts the server (SmolLM2-135M Q4_1 with the three task adapters and the r8 benchmark
adapter; `--server llama` starts llama.cpp's llama-server on the same files instead, with
`--lora-init-without-apply` and each request's adapters in its `lora` field), then:

1. reference: every client's request run alone, one at a time (greedy);
2. for 1, 4 and 8 concurrent clients (client k always uses mix k and prompt k): every answer
   must equal its reference; reports aggregate decode tokens/s (completion tokens / wall
   time), p50/p99 request latency, and the ratio to one client;
3. time to first token with a ~500-token system prompt, uncached (a new system prompt each
   time) vs cached (the same system prompt, another user message), medians;
4. memory: the server's RSS after a warm-up and every 1000 of `--soak` more requests
   (8 in flight, rotating through the mixes); errors counted.

    .venv/bin/python bench/serve_load.py [--threads 1] [--max-tokens 48] [--clients 1,4,8,16]
    .venv/bin/python bench/serve_load.py --server llama --llama-server PATH/llama-server

"x alone" compares the aggregate rate with the same clients' requests run one at a time
(the reference pass: tokens / wall time of those requests, each with its own adapter).

Needs the `openai` package (it talks to the server exactly as any OpenAI client does).
"""

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")

# Mix k of client k: a model id, or a llama-server style `lora` list.
MIXES = [
    ("base", None),
    ("intent", None),
    ("normalize", None),
    ("reply", None),
    ("bench", None),
    ("mix-ir", [{"id": "intent", "scale": 0.5}, {"id": "reply", "scale": 0.5}]),
    ("mix-nb", [{"id": "normalize", "scale": 1.0}, {"id": "bench", "scale": 0.5}]),
    ("reply-0.7", [{"id": "reply", "scale": 0.7}]),
]
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "turn on the kitchen lights and set them to 40 percent",
    "meet me at 5pm tmrw @ the cafe on 3rd st",
    "Can you help me plan a picnic for Saturday?",
    "Explain why the sky is blue to a ten year old.",
    "set an alarm for seven thirty tomorrow morning",
    "pls send the q3 rpt to j. smith by eod",
    "What should I cook tonight with rice, eggs and spinach?",
]


# llama-server knows adapters by their index in its `--lora` list.
LLAMA_IDS = {"intent": 0, "normalize": 1, "reply": 2, "bench": 3}
ADAPTER_FILES = [
    ("intent", "smollm2/intent/adapter.gguf"),
    ("normalize", "smollm2/normalize/adapter.gguf"),
    ("reply", "smollm2/reply/adapter.gguf"),
    ("bench", "bench-lora-r8.gguf"),
]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(args):
    import urllib.request
    port = free_port()
    cmd = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
           "-t", str(args.threads), "-tb", str(args.threads), "-np", str(args.parallel),
           "-c", str(args.ctx * args.parallel), "--lora-init-without-apply", "--no-webui"]
    for _, f in ADAPTER_FILES:
        cmd += ["--lora", os.path.join(MODELS, f)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return p, url
        except Exception:
            pass
        if p.poll() is not None:
            sys.exit(f"llama-server exited with {p.returncode}: {' '.join(cmd)}")
        time.sleep(0.2)
    p.kill()
    sys.exit("llama-server did not become healthy")


def start_server(args):
    if args.server == "llama":
        return start_llama(args)
    cmd = [
        args.binary, "serve", "-m", args.model, "--port", "0", "--threads", str(args.threads),
        "--parallel", str(args.parallel), "--ctx", str(args.ctx),
        "--adapter", f"intent={MODELS}/smollm2/intent/adapter.gguf",
        "--adapter", f"normalize={MODELS}/smollm2/normalize/adapter.gguf",
        "--adapter", f"reply={MODELS}/smollm2/reply/adapter.gguf",
        "--adapter", f"bench={MODELS}/bench-lora-r8.gguf",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        p.kill()
        sys.exit(f"server did not start: {line!r}")
    return p, m.group(1)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


SERVER = "edgelora"


def lora_field(name, lora):
    """The request's adapters: a model id on edgelora, always a `lora` list on llama-server."""
    if SERVER == "llama":
        if lora is None:
            lora = [] if name == "base" else [{"id": name, "scale": 1.0}]
        # Every adapter listed, unused ones at scale 0: llama-server treats an empty list as
        # "the server's defaults" and then keeps a slot's KV cache computed under another
        # request's adapters (tools/server/server-context.cpp: only a non-empty `lora` that
        # differs clears it), so a base request after an adapter one answered differently.
        scales = {LLAMA_IDS[e["id"]]: e["scale"] for e in lora}
        return [{"id": i, "scale": scales.get(i, 0.0)} for i in sorted(LLAMA_IDS.values())]
    return lora


def request_args(k, max_tokens):
    name, lora = MIXES[k % len(MIXES)]
    model = "SmolLM2-135M-Instruct.Q4_1" if name == "base" else name
    # Clients 8..15 use the same mixes as 0..7 with other prompts.
    prompt = PROMPTS[(k + k // len(MIXES)) % len(PROMPTS)]
    kw = dict(
        model=model if lora is None else "SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    lora = lora_field(name, lora)
    if lora is not None:
        kw["extra_body"] = {"lora": lora}
    return kw


async def one(client, k, max_tokens):
    t = time.perf_counter()
    r = await client.chat.completions.create(**request_args(k, max_tokens))
    return k, r.choices[0].message.content, r.usage.completion_tokens, time.perf_counter() - t


async def client_loop(client, k, n, max_tokens, want, out):
    for _ in range(n):
        kk, text, toks, lat = await one(client, k, max_tokens)
        out.append((kk, text == want[kk], toks, lat))


async def phase(client, clients, per_client, max_tokens, want):
    out = []
    t = time.perf_counter()
    await asyncio.gather(*(client_loop(client, k, per_client, max_tokens, want, out)
                           for k in range(clients)))
    wall = time.perf_counter() - t
    toks = sum(o[2] for o in out)
    lats = sorted(o[3] for o in out)
    bad = [o[0] for o in out if not o[1]]
    p99 = lats[min(len(lats) - 1, int(0.99 * len(lats)))]
    return dict(clients=clients, requests=len(out), tokens=toks, wall=wall, tps=toks / wall,
                p50=statistics.median(lats), p99=p99, mismatches=bad)


def system_prompt(salt):
    words = ("You are a careful assistant for a home automation gateway. Answer briefly, "
             "name the device, the room and the action, and never invent devices. ").split()
    body = " ".join(words[(i * 7 + salt) % len(words)] for i in range(420))
    return f"[{salt}] {body}"


async def ttft(client, system, user):
    t = time.perf_counter()
    lora = lora_field("intent", None)
    stream = await client.chat.completions.create(
        model="intent", stream=True, max_tokens=4, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        **({"extra_body": {"lora": lora}} if lora is not None else {}))
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t
    return first if first is not None else time.perf_counter() - t


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/edgelora"))
    ap.add_argument("--model", default=os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--soak", type=int, default=200)
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--server", choices=["edgelora", "llama"], default="edgelora")
    ap.add_argument("--llama-server", default="/tmp/lcp/build-server/bin/llama-server",
                    help="llama-server binary (built from the llama-cpp-python sdist's sources)")
    args = ap.parse_args()
    global SERVER
    SERVER = args.server
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                timeout=600)
    try:
        counts = [int(c) for c in args.clients.split(",")]
        print(f"{args.server} server {url}, threads {args.threads}, parallel {args.parallel}, "
              f"max_tokens {args.max_tokens}")
        want, alone = {}, {}
        for k in range(max(counts)):
            await one(client, k, args.max_tokens)  # warm (and, for k >= 1, cache) first
            _, text, toks, lat = await one(client, k, args.max_tokens)
            want[k] = text
            alone[k] = (toks, lat)
            print(f"reference client {k:2d} mix {MIXES[k % len(MIXES)][0]:10s}: {toks:3d} "
                  f"tokens in {lat:.2f} s")
        base = None
        for c in counts:
            r = await phase(client, c, args.per_client, args.max_tokens, want)
            base = base or r["tps"]
            solo = sum(alone[k][0] for k in range(c)) / sum(alone[k][1] for k in range(c))
            print(f"{c} clients: {r['requests']} requests, {r['tokens']} tokens in "
                  f"{r['wall']:.2f} s = {r['tps']:.1f} tok/s aggregate ({r['tps'] / base:.2f}x "
                  f"one client, {r['tps'] / solo:.2f}x the same requests alone at {solo:.1f}); "
                  f"latency p50 {r['p50']:.2f} s p99 {r['p99']:.2f} s; "
                  f"answers != alone: {len(r['mismatches'])}")
            if r["mismatches"]:
                print(f"  MISMATCH for mixes {sorted(set(r['mismatches']))}")
        # Time to first token, ~500-token system prompt.
        unc, cac = [], []
        for i in range(3):
            sp = system_prompt(1000 + i)
            unc.append(await ttft(client, sp, "turn off the hall light"))
            cac.append(await ttft(client, sp, f"dim the bedroom lamp to {10 + i} percent"))
        u, k = statistics.median(unc), statistics.median(cac)
        print(f"TTFT with a ~500-token system prompt: uncached {u * 1000:.0f} ms, cached "
              f"{k * 1000:.0f} ms ({k / u:.2f} of uncached)")
        if proc is not None and args.soak > 0:
            before = rss_kib(proc.pid)
            samples = [before]
            t = time.perf_counter()
            done, errors = 0, 0
            while done < args.soak:
                batch = min(8, args.soak - done)
                res = await asyncio.gather(*(one(client, (done + j) % (2 * len(MIXES)), 8)
                                             for j in range(batch)), return_exceptions=True)
                errors += sum(isinstance(x, Exception) for x in res)
                done += batch
                if done % 1000 == 0:
                    samples.append(rss_kib(proc.pid))
                    print(f"  soak {done}: RSS {samples[-1] / 1024:.1f} MiB, errors {errors}, "
                          f"{time.perf_counter() - t:.0f} s", flush=True)
            after = rss_kib(proc.pid)
            print(f"memory: RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
                  f"{args.soak} more requests ({time.perf_counter() - t:.1f} s), "
                  f"max {max(samples) / 1024:.1f} MiB, errors {errors}")
    finally:
        await client.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
