"""Drive `edgelora serve` with the official `openai` Python client and compare its answers
with the expected ones (what `edgelora generate` printed for the same prompt and adapter).

Usage: python openai_client.py CASES.json

CASES.json (written by `targets/host/tests/serve.rs`, test `official_openai_client`) maps a
server name to {"base_url", "api_key", "models": [ids], "cases": [{"kind": "completion" |
"chat", "model", "prompt" | "messages", "max_tokens", "expected"}]}. For each server this
checks `models.list()`, each case whole and streamed (the deltas must concatenate to the
expected text), that an unknown model raises `openai.NotFoundError` and a bad field
`openai.BadRequestError`, and, when the server has a key, that a wrong key raises
`openai.AuthenticationError`. Prints SKIPPED and exits 0 if `openai` is not installed.
"""

import json
import sys

try:
    import openai
except ImportError:
    print("SKIPPED: the openai package is not installed")
    sys.exit(0)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def run_case(client, case):
    kind, model, n, want = case["kind"], case["model"], case["max_tokens"], case["expected"]
    if kind == "completion":
        r = client.completions.create(model=model, prompt=case["prompt"], max_tokens=n, temperature=0)
        got = r.choices[0].text
        check(r.usage.completion_tokens > 0, f"usage: {r.usage}")
        parts = []
        for c in client.completions.create(
            model=model, prompt=case["prompt"], max_tokens=n, temperature=0, stream=True
        ):
            if c.choices:
                parts.append(c.choices[0].text or "")
    else:
        r = client.chat.completions.create(model=model, messages=case["messages"], max_tokens=n, temperature=0)
        got = r.choices[0].message.content
        check(r.choices[0].message.role == "assistant", "role")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage")
        parts = []
        usage = None
        for c in client.chat.completions.create(
            model=model,
            messages=case["messages"],
            max_tokens=n,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            check(c.object == "chat.completion.chunk", c.object)
            if c.usage is not None:
                usage = c.usage
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
        check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"stream usage {usage}")
    check(got == want, f"{kind} {model}: whole {got!r} != expected {want!r}")
    check("".join(parts) == want, f"{kind} {model}: streamed {''.join(parts)!r} != expected {want!r}")
    print(f"ok   {kind:<10} {model:<12} {want!r}")


def main():
    spec = json.load(open(sys.argv[1]))
    n = 0
    for name, s in spec.items():
        client = openai.OpenAI(base_url=s["base_url"], api_key=s["api_key"], max_retries=0)
        ids = [m.id for m in client.models.list()]
        check(ids == s["models"], f"{name}: models {ids} != {s['models']}")
        print(f"ok   models     {name:<12} {ids}")
        for case in s["cases"]:
            run_case(client, case)
            n += 1
        try:
            client.completions.create(model="no-such-adapter", prompt="x", max_tokens=1)
            check(False, "unknown model accepted")
        except openai.NotFoundError as e:
            check("no-such-adapter" in str(e), str(e))
            print(f"ok   404        {name:<12} NotFoundError")
        try:
            client.completions.create(model=s["models"][0], prompt="x", max_tokens=1, temperature=7)
            check(False, "temperature 7 accepted")
        except openai.BadRequestError as e:
            check("temperature" in str(e), str(e))
            print(f"ok   400        {name:<12} BadRequestError")
        if s["api_key"] != "unused":
            bad = openai.OpenAI(base_url=s["base_url"], api_key="wrong", max_retries=0)
            try:
                bad.models.list()
                check(False, "wrong key accepted")
            except openai.AuthenticationError:
                print(f"ok   401        {name:<12} AuthenticationError")
    print(f"ALL OK ({n} cases, openai {openai.__version__})")


if __name__ == "__main__":
    main()
