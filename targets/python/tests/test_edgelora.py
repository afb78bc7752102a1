"""Tests of the Python bindings (`import edgelora`) against the CLI on the committed tiny model.

Run by targets/python/build_and_test.sh (a fresh venv with the built wheel), or with the module
installed by `maturin develop`: `pytest targets/python/tests`. The CLI comparisons use
target/release/edgelora, built if missing.
"""
from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgelora

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "models/tiny/tiny-base.gguf"
INTENT = ROOT / "models/tiny/intent/adapter.gguf"
REPLY = ROOT / "models/tiny/reply/adapter.gguf"
SMOL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_INTENT = ROOT / "models/smollm2/intent/adapter.gguf"
GEMMA = ROOT / "models/gemma-3-270m-q4_k_m.gguf"
PROMPT = "intent: please set the ac in the bathroom to 24 degrees\n"


@pytest.fixture(scope="session")
def cli() -> str:
    b = ROOT / "target/release/edgelora"
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "edgelora-cli"], cwd=ROOT, check=True)
    return str(b)


def run_cli(cli: str, *args: str) -> dict:
    r = subprocess.run([cli, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"edgelora {' '.join(args)} failed:\n{r.stderr}"
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def tiny() -> edgelora.Model:
    return edgelora.Model.open(str(TINY))


@pytest.fixture(scope="session")
def intent() -> edgelora.Adapter:
    return edgelora.Adapter.open(str(INTENT))


@pytest.fixture(scope="session")
def reply() -> edgelora.Adapter:
    return edgelora.Adapter.open(str(REPLY))


def test_properties(tiny, intent):
    assert tiny.architecture == "llama"
    assert tiny.n_vocab == 1024
    assert tiny.ctx_len > 0
    assert tiny.eog_ids
    assert intent.rank > 0 and intent.alpha > 0
    assert intent.task == "intent"
    assert "tiny-base.gguf" in repr(tiny) and "intent" in repr(intent)
    # The alias resolves to the same file.
    assert edgelora.Model.open("tiny").n_vocab == tiny.n_vocab


def test_tokenize_round_trip(tiny):
    for text in ["book a table for two tomorrow", "set the fan in the office to speed 3", "Hello, World! 42",
                 "  two  spaces", "ünïcödé and 日本語"]:
        ids = tiny.tokenize(text)
        assert all(isinstance(i, int) and 0 <= i < tiny.n_vocab for i in ids)
        assert tiny.detokenize(ids) == text, text
        # BOS (id 1 in the tiny model) first, as `logits` and `generate` run prompts.
        assert ids == [1] + tiny.tokenize(text, add_bos=False)
    assert tiny.detokenize([]) == ""


def test_logits_shape_and_cli_top1(cli, tiny, intent):
    ids = tiny.tokenize(PROMPT)
    for adapters, extra in [([], []), ([(intent, 1.0)], ["--adapter", str(INTENT)])]:
        out = tiny.logits(ids, adapters=adapters)
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32
        assert out.shape == (len(ids), tiny.n_vocab)
        assert out.flags.writeable
        ref = run_cli(cli, "logits", "-m", str(TINY), "--prompt", PROMPT, "--json", "--top", "1", *extra)
        assert ref["tokens"] == ids
        for row, p in zip(out, ref["positions"]):
            top = p["top_ids"][0]
            assert int(np.argmax(row)) == top, p["pos"]
            # The same kernels and cache: the very same float.
            assert row[top] == np.float32(p["top_logits"][0]), p["pos"]


def test_reference_kernels_close(tiny, intent):
    ids = tiny.tokenize(PROMPT)
    fast = tiny.logits(ids, adapters=[(intent, 1.0)])
    ref = tiny.logits(ids, adapters=[(intent, 1.0)], reference=True)
    assert (np.argmax(fast, axis=1) == np.argmax(ref, axis=1)).mean() > 0.9
    assert np.abs(fast - ref).max() < 0.5


def test_swap_restores_bit_identical(tiny, intent, reply):
    ids = tiny.tokenize(PROMPT)
    base = tiny.logits(ids)
    a = tiny.logits(ids, adapters=[(intent, 1.0)])
    b = tiny.logits(ids, adapters=[(reply, 1.0)])
    half = tiny.logits(ids, adapters=[(intent, 0.5)])
    both = tiny.logits(ids, adapters=[(intent, 1.0), (reply, 1.0)])
    assert not np.array_equal(base, a)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, half)
    assert not np.array_equal(a, both)
    for _ in range(3):
        assert np.array_equal(tiny.logits(ids), base)
        assert np.array_equal(tiny.logits(ids, adapters=[(intent, 1.0)]), a)
        assert np.array_equal(tiny.logits(ids, adapters=[(reply, 1.0)]), b)
    # Scale 0 is the base model.
    assert np.array_equal(tiny.logits(ids, adapters=[(intent, 0.0)]), base)


def test_swap_cost_is_small(tiny, intent, reply):
    ids = tiny.tokenize("hi")
    tiny.logits(ids, adapters=[(intent, 1.0)])
    tiny.logits(ids, adapters=[(reply, 1.0)])
    # After the first use the bindings are cached: alternating adapters costs about what
    # the base alone does (generous bound: the machine may be busy).
    def best(adapters):
        ts = []
        for _ in range(20):
            t = time.perf_counter()
            tiny.logits(ids, adapters=adapters)
            ts.append(time.perf_counter() - t)
        return min(ts)
    alone = best([])
    swapping = min(best([(intent, 1.0)]), best([(reply, 1.0)]))
    assert swapping < alone * 3 + 0.005


@pytest.mark.parametrize("with_adapter", [False, True])
def test_generate_matches_cli(cli, tiny, intent, with_adapter):
    for prompt in [PROMPT, "reply: can you book a table for two?\n", "The weather today"]:
        extra = ["--adapter", str(INTENT)] if with_adapter else []
        adapters = [(intent, 1.0)] if with_adapter else []
        ref = run_cli(cli, "generate", "-m", str(TINY), "-p", prompt, "-n", "24", "--json", *extra)
        got = tiny.generate(prompt, adapters=adapters, max_tokens=24)
        assert got == ref["text"], prompt
        # A stop string cuts the text before it, as `--stop` does.
        ref = run_cli(cli, "generate", "-m", str(TINY), "-p", prompt, "-n", "24", "--json", "--stop", "\n",
                      *extra)
        got = tiny.generate(prompt, adapters=adapters, max_tokens=24, stop=["\n"])
        assert got == ref["text"] and "\n" not in got, prompt


def test_generate_intent_answer(tiny, intent):
    got = tiny.generate(PROMPT, adapters=[(intent, 1.0)], max_tokens=48, stop=["\n"])
    assert json.loads(got) == {"action": "set", "device": "ac", "room": "bathroom", "value": 24}


def test_generate_sampling(tiny):
    a = tiny.generate("The weather today", max_tokens=16, temperature=0.8, seed=7)
    b = tiny.generate("The weather today", max_tokens=16, temperature=0.8, seed=7)
    assert a == b
    assert tiny.generate("x", max_tokens=0) == ""
    # The end-of-generation token is not part of the text.
    text = tiny.generate(PROMPT, max_tokens=100)
    assert "</s>" not in text


def test_convert_peft(tiny, intent):
    conv = edgelora.Adapter.convert(str(ROOT / "models/tiny/intent"), tiny, dtype="f16")
    assert (conv.rank, conv.alpha, conv.task) == (intent.rank, intent.alpha, intent.task)
    ids = tiny.tokenize(PROMPT)
    assert np.array_equal(tiny.logits(ids, adapters=[(conv, 1.0)]), tiny.logits(ids, adapters=[(intent, 1.0)]))
    with pytest.raises(ValueError, match="dtype"):
        edgelora.Adapter.convert(str(ROOT / "models/tiny/intent"), tiny, dtype="q4_0")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        edgelora.Adapter.convert(str(ROOT / "models/tiny"), tiny)


def test_save_and_threads_setting(tiny, intent, tmp_path):
    ids = tiny.tokenize(PROMPT)
    want = tiny.logits(ids, adapters=[(intent, 1.0)])
    conv = edgelora.Adapter.convert(ROOT / "models/tiny/intent", tiny, dtype="q8_0")
    conv.save(tmp_path / "q8.gguf")
    again = edgelora.Adapter.open(tmp_path / "q8.gguf")
    assert np.array_equal(tiny.logits(ids, adapters=[(again, 1.0)]), tiny.logits(ids, adapters=[(conv, 1.0)]))
    # More kernel threads: bit-identical results.
    edgelora.set_threads(2)
    try:
        assert np.array_equal(tiny.logits(ids, adapters=[(intent, 1.0)]), want)
    finally:
        edgelora.set_threads(1)
    with pytest.raises(ValueError, match="threads"):
        edgelora.set_threads(0)
    assert isinstance(edgelora.kernel(), str)


def test_errors(tiny, intent, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        edgelora.Model.open(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        edgelora.Adapter.open(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        edgelora.Model.open(str(junk))
    with pytest.raises(ValueError, match="junk.gguf"):
        edgelora.Adapter.open(str(junk))
    with pytest.raises(ValueError, match="general.type"):
        edgelora.Adapter.open(str(TINY))
    with pytest.raises(ValueError, match="vocabulary"):
        tiny.logits([1, tiny.n_vocab])
    with pytest.raises(ValueError, match="vocabulary"):
        tiny.logits([1, -1])
    with pytest.raises(ValueError, match="vocabulary"):
        tiny.detokenize([tiny.n_vocab + 5])
    with pytest.raises(ValueError, match="no token ids"):
        tiny.logits([])
    with pytest.raises(ValueError, match="context"):
        tiny.logits([1] * (tiny.ctx_len + 1))
    for bad in [math.nan, math.inf, 16.5, -17.0]:
        with pytest.raises(ValueError, match="scale"):
            tiny.logits([1, 2], adapters=[(intent, bad)])
        with pytest.raises(ValueError, match="scale"):
            tiny.generate("hi", adapters=[(intent, bad)])
    with pytest.raises(ValueError, match="at most"):
        tiny.logits([1, 2], adapters=[(intent, 1.0)] * 5)
    with pytest.raises(ValueError, match="chat"):
        tiny.generate("hi", chat=True)
    with pytest.raises(ValueError, match="stop"):
        tiny.generate("hi", stop=[""])
    with pytest.raises(TypeError):
        tiny.logits([1, 2], adapters=[("not an adapter", 1.0)])


def test_wrong_base_adapter(tiny):
    if not SMOL_INTENT.exists():
        pytest.skip(f"{SMOL_INTENT.relative_to(ROOT)} not present")
    other = edgelora.Adapter.open(str(SMOL_INTENT))
    with pytest.raises(ValueError, match="does not fit"):
        tiny.logits([1, 2], adapters=[(other, 1.0)])
    with pytest.raises(ValueError, match="does not fit"):
        tiny.generate("hi", adapters=[(other, 1.0)])


def test_threads_share_a_model(tiny, intent, reply):
    """Several Python threads on one model and on two models give the serial results."""
    other = edgelora.Model.open(str(TINY))
    ids = tiny.tokenize(PROMPT)
    want = {
        "base": tiny.logits(ids),
        "intent": tiny.logits(ids, adapters=[(intent, 1.0)]),
        "reply": other.logits(ids, adapters=[(reply, 1.0)]),
    }
    want_text = tiny.generate(PROMPT, adapters=[(intent, 1.0)], max_tokens=32)
    errors: list[str] = []

    def work(name, model, adapters):
        for _ in range(5):
            if not np.array_equal(model.logits(ids, adapters=adapters), want[name]):
                errors.append(f"{name}: logits differ")
            if name == "intent" and model.generate(PROMPT, adapters=adapters, max_tokens=32) != want_text:
                errors.append("generate differs")

    ts = [threading.Thread(target=work, args=a) for a in [
        ("base", tiny, []), ("intent", tiny, [(intent, 1.0)]), ("reply", other, [(reply, 1.0)]),
        ("intent", tiny, [(intent, 1.0)])]]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread did not finish"
    assert errors == []


def test_gil_released_while_running(tiny):
    """Another Python thread runs while a call is in progress."""
    ids = list(range(1, tiny.ctx_len))
    span: list[float] = []
    ticks: list[float] = []
    done = threading.Event()

    def long_call():
        for _ in range(3):
            t0 = time.perf_counter()
            tiny.logits(ids, reference=True)
            span.append((t0, time.perf_counter()))

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    tick = threading.Thread(target=ticker)
    tick.start()
    work = threading.Thread(target=long_call)
    work.start()
    work.join(timeout=300)
    done.set()
    tick.join(timeout=10)
    assert not work.is_alive()
    # With the GIL held for a whole call, the ticker could not run inside one.
    inside = [t for t in ticks for (a, b) in span if a + 0.005 < t < b - 0.005]
    assert inside, f"no tick inside any call {span}"


@pytest.mark.skipif(not SMOL.exists(), reason=f"{SMOL.name} not present (edgelora fetch smollm2)")
def test_smollm2(cli):
    m = edgelora.Model.open("smollm2")
    assert m.architecture == "llama" and m.n_vocab == 49152
    ref = run_cli(cli, "generate", "-m", str(SMOL), "--chat", "-p", "What is the capital of France?", "-n",
                  "12", "--json")
    assert m.generate("What is the capital of France?", chat=True, max_tokens=12) == ref["text"]
    if SMOL_INTENT.exists():
        a = edgelora.Adapter.open(str(SMOL_INTENT))
        ids = m.tokenize(PROMPT)
        out = m.logits(ids, adapters=[(a, 1.0)])
        assert out.shape == (len(ids), 49152)
        ref = run_cli(cli, "logits", "-m", str(SMOL), "--prompt", PROMPT, "--json", "--top", "1", "--adapter",
                      str(SMOL_INTENT))
        assert [int(i) for i in np.argmax(out, axis=1)] == [p["top_ids"][0] for p in ref["positions"]]
        got = m.generate(PROMPT, adapters=[(a, 1.0)], max_tokens=48, stop=["\n"])
        assert json.loads(got)["device"] == "ac"


def test_env_models_dir(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "tiny-base.gguf").write_bytes(TINY.read_bytes())
    monkeypatch.setenv("EDGELORA_MODELS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # `tiny` here is a directory, not a model file: the alias is looked up instead.
    assert edgelora.Model.open("tiny").path.startswith(str(tmp_path))
    with pytest.raises(IsADirectoryError):
        edgelora.Model.open(str(tmp_path))


@pytest.mark.skipif(not GEMMA.exists(), reason=f"{GEMMA.name} not present (edgelora fetch gemma3-270m)")
def test_gemma3_chat(cli):
    m = edgelora.Model.open("gemma3-270m")
    assert m.architecture == "gemma3"
    for prompt, system in [("Name three colours.", None), ("What is 2+2?", "Answer in one word.")]:
        extra = ["--system", system] if system else []
        ref = run_cli(cli, "generate", "-m", str(GEMMA), "--chat", "-p", prompt, "-n", "16", "--json", *extra)
        assert m.generate(prompt, chat=True, system=system, max_tokens=16) == ref["text"], prompt
    ids = m.tokenize("The capital of France is")
    ref = run_cli(cli, "logits", "-m", str(GEMMA), "--prompt", "The capital of France is", "--json", "--top", "1")
    assert ref["tokens"] == ids
    assert [int(i) for i in np.argmax(m.logits(ids), axis=1)] == [p["top_ids"][0] for p in ref["positions"]]
