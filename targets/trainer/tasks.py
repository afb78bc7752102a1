#!/usr/bin/env python3
"""Synthetic home/device-assistant tasks with exact-match answers, and the domain corpus.

Three tasks, each a mapping input -> output with a single correct answer:

  intent     command -> compact JSON        "dim the kitchen lights to 40 percent"
                                            -> {"action":"set","device":"light","room":"kitchen","value":40}
  reply      command -> short confirmation  "dim the kitchen lights to 40 percent"
                                            -> Setting the kitchen light to 40%.
  normalize  spoken time/number/percentage/duration -> canonical form
                                            "half past seven in the evening" -> 19:30

The prompt format is fixed and shared with the Rust side (`edgelora demo` / `eval`):

    prompt = f"{task}: {input}\n"        completion = f"{output}\n"

A model's answer is its generated text up to (not including) the first newline, with
surrounding spaces stripped; `exact_match(prediction, gold)` compares it with `output`.

Splits are held out: every task's test inputs are absent from its train inputs (and `intent`
and `reply` share one command pool and one split, so the same held-out command can be sent
to both adapters). The domain corpus that pre-trains the tiny base is built from train-side
material only: commands, JSON records and replies as separate, unpaired lines, prose that
uses spoken and written forms of times and numbers, and generic household sentences. It
never contains a task prompt (`intent: ...`), so the base alone cannot do the tasks.

Everything is a pure function of the seed (random.Random, no global state, no hashing of
str, which is salted per process), so the files are byte-identical on every run.

CLI:
    python targets/trainer/tasks.py data                 # write data/<task>/{train,test}.jsonl
    python targets/trainer/tasks.py corpus --out C.txt   # the pre-training corpus
    python targets/trainer/tasks.py show intent -n 5     # a few examples
    python targets/trainer/tasks.py score intent preds.txt   # exact match of predictions (one a line)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
TASKS = ("intent", "reply", "normalize")
SEED = 20261128

# Sizes of the committed splits. Test: 200 per task; train: enough distinct inputs for a LoRA
# adapter to generalise (files stay < 300 KB each).
N_TEST = 200
N_TRAIN = {"intent": 1800, "reply": 1800, "normalize": 2400}


# ---------------------------------------------------------------------------------------------
# prompt format and metric (the Rust demo implements the same three lines)
# ---------------------------------------------------------------------------------------------

def prompt(task: str, inp: str) -> str:
    """The text the model is given; it must continue with `output + "\\n"`."""
    return f"{task}: {inp}\n"


def completion(out: str) -> str:
    return f"{out}\n"


def extract_answer(generated: str) -> str:
    """The model's answer: generated text before the first newline, stripped."""
    return generated.split("\n", 1)[0].strip()


def exact_match(prediction: str, gold: str) -> bool:
    return extract_answer(prediction) == gold


def score(predictions: Iterable[str], golds: Iterable[str]) -> float:
    """Fraction of exact matches, in [0, 1]."""
    pairs = list(zip(predictions, golds, strict=True))
    return sum(exact_match(p, g) for p, g in pairs) / max(1, len(pairs))


# ---------------------------------------------------------------------------------------------
# spelling numbers
# ---------------------------------------------------------------------------------------------

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def words_under_100(n: int) -> str:
    assert 0 <= n < 100
    if n < 20:
        return ONES[n]
    t, o = divmod(n, 10)
    return TENS[t] if o == 0 else f"{TENS[t]} {ONES[o]}"


def number_words(n: int, use_and: bool = True) -> str:
    """English words for 0 <= n < 10000: 1205 -> "one thousand two hundred and five"."""
    assert 0 <= n < 10000
    if n < 100:
        return words_under_100(n)
    parts = []
    th, rest = divmod(n, 1000)
    h, rest = divmod(rest, 100)
    if th:
        parts.append(f"{ONES[th]} thousand")
    if h:
        parts.append(f"{ONES[h]} hundred")
    if rest:
        parts.append(("and " if use_and else "") + words_under_100(rest))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# devices, rooms and commands (shared by `intent` and `reply`)
# ---------------------------------------------------------------------------------------------

ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "office", "hallway", "garage",
         "dining room", "guest room", "basement"]

# canonical device -> (surface words used in commands, name used in replies)
DEVICE_WORDS = {
    "light": (["light", "lights", "lamp"], "light"),
    "fan": (["fan", "ceiling fan"], "fan"),
    "heater": (["heater", "radiator"], "heater"),
    "thermostat": (["thermostat"], "thermostat"),
    "blinds": (["blinds", "shades"], "blinds"),
    "tv": (["tv", "television"], "TV"),
    "speaker": (["speaker", "music"], "speaker"),
    "ac": (["ac", "air conditioner"], "air conditioner"),
}

# device -> the "set" value: (low, high, unit in the command, unit in the reply)
SET_VALUE = {
    "light": (1, 100, "percent", "%"),
    "fan": (1, 5, "speed", "speed"),
    "heater": (15, 30, "degrees", "degrees"),
    "thermostat": (15, 28, "degrees", "degrees"),
    "blinds": (0, 100, "percent", "%"),
    "tv": (1, 99, "channel", "channel"),
    "speaker": (0, 100, "volume", "volume"),
    "ac": (16, 28, "degrees", "degrees"),
}
ON_OFF = ["light", "fan", "heater", "tv", "speaker", "ac"]
UP_DOWN = {"light": (5, 50), "fan": (1, 2), "heater": (1, 5), "thermostat": (1, 5),
           "speaker": (5, 40), "ac": (1, 4)}


def _target(rng: random.Random, device: str, with_room: bool) -> tuple[str, str | None]:
    """Noun phrase for the device (with or without a room) and the room."""
    word = rng.choice(DEVICE_WORDS[device][0])
    if not with_room:
        return f"the {word}", None
    room = rng.choice(ROOMS)
    if rng.random() < 0.5:
        return f"the {room} {word}", room
    return f"the {word} in the {room}", room


def make_command(rng: random.Random) -> tuple[str, dict]:
    """One spoken command and its meaning {action, device, room?, value?}."""
    kind = rng.choices(["on", "off", "set", "up", "down", "open", "close", "timer"],
                       weights=[14, 14, 32, 9, 9, 5, 5, 4])[0]
    with_room = rng.random() < 0.85
    if kind == "timer":
        v = rng.choice(list(range(1, 61)) + [90, 120])
        unit = "minute" if v == 1 else "minutes"
        t = rng.choice(["set a timer for {v} {u}", "start a {v} {u} timer", "timer for {v} {u}",
                        "please set a timer for {v} {u}", "count down {v} {u}"])
        return t.format(v=v, u=unit), {"action": "timer", "device": "timer", "value": v}
    if kind in ("open", "close"):
        d, room = _target(rng, "blinds", with_room)
        verbs = {"open": ["open", "raise", "pull up"], "close": ["close", "shut", "lower", "pull down"]}
        v = rng.choice(verbs[kind])
        t = rng.choice(["{v} {d}", "please {v} {d}", "can you {v} {d}", "{v} {d} please"])
        return t.format(v=v, d=d), _meaning(kind, "blinds", room)
    if kind in ("on", "off"):
        dev = rng.choice(ON_OFF)
        d, room = _target(rng, dev, with_room)
        t = rng.choice(["turn {k} {d}", "switch {k} {d}", "turn {d} {k}", "switch {d} {k}",
                        "please turn {k} {d}", "can you switch {k} {d}", "{d} {k} please",
                        "could you turn {k} {d}"])
        return t.format(k=kind, d=d), _meaning(kind, dev, room)
    if kind in ("up", "down"):
        dev = rng.choice(sorted(UP_DOWN))
        lo, hi = UP_DOWN[dev]
        v = rng.randint(lo, hi)
        d, room = _target(rng, dev, with_room)
        verbs = {"up": ["turn up", "raise", "increase"], "down": ["turn down", "lower", "decrease"]}
        t = rng.choice(["{v} {d} by {n}", "please {v} {d} by {n}", "{v} {d} by {n} please"])
        return t.format(v=rng.choice(verbs[kind]), d=d, n=v), _meaning(kind, dev, room, v)
    dev = rng.choice(sorted(SET_VALUE))
    lo, hi, unit, _ = SET_VALUE[dev]
    v = rng.randint(lo, hi)
    d, room = _target(rng, dev, with_room)
    if unit == "percent":
        t = rng.choice(["set {d} to {n} percent", "{d} to {n} percent", "set {d} to {n}%",
                        "put {d} at {n} percent", "please set {d} to {n} percent"]
                       + (["dim {d} to {n} percent", "make {d} {n} percent bright"] if dev == "light" else []))
    elif unit == "speed":
        t = rng.choice(["set {d} to speed {n}", "put {d} on speed {n}", "{d} speed {n}",
                        "please set {d} to speed {n}"])
    elif unit == "degrees":
        t = rng.choice(["set {d} to {n} degrees", "put {d} on {n} degrees", "{d} to {n} degrees",
                        "please set {d} to {n} degrees"])
    elif unit == "channel":
        t = rng.choice(["put {d} on channel {n}", "switch {d} to channel {n}", "{d} channel {n}",
                        "change {d} to channel {n}"])
    else:  # volume
        t = rng.choice(["set {d} volume to {n}", "set the volume of {d} to {n}", "{d} volume {n}",
                        "please set {d} volume to {n}"])
    return t.format(d=d, n=v), _meaning("set", dev, room, v)


def _meaning(action: str, device: str, room: str | None, value: int | None = None) -> dict:
    m: dict = {"action": action, "device": device}
    if room is not None:
        m["room"] = room
    if value is not None:
        m["value"] = value
    return m


def intent_json(m: dict) -> str:
    """Compact JSON, keys in the fixed order action, device, room, value."""
    return json.dumps(m, separators=(",", ":"))


def reply_text(m: dict) -> str:
    """Short confirmation for a command's meaning."""
    a, dev, v = m["action"], m["device"], m.get("value")
    if a == "timer":
        return f"Timer set for {v} minute." if v == 1 else f"Timer set for {v} minutes."
    name = DEVICE_WORDS[dev][1]
    the = f"the {m['room']} {name}" if "room" in m else f"the {name}"
    if a in ("on", "off"):
        return f"Turning {a} {the}."
    if a == "open":
        return f"Opening {the}."
    if a == "close":
        return f"Closing {the}."
    if a in ("up", "down"):
        return f"{'Raising' if a == 'up' else 'Lowering'} {the} by {v}."
    unit = SET_VALUE[dev][3]
    if unit == "%":
        return f"Setting {the} to {v}%."
    if unit == "speed":
        return f"Setting {the} to speed {v}."
    if unit == "degrees":
        return f"Setting {the} to {v} degrees."
    if unit == "channel":
        return f"Switching {the} to channel {v}."
    return f"Setting {the} volume to {v}."


# ---------------------------------------------------------------------------------------------
# spoken times, numbers, percentages, durations (`normalize`)
# ---------------------------------------------------------------------------------------------

def _hour_word(h12: int) -> str:
    return ONES[h12] if h12 < 20 else words_under_100(h12)


def make_time(rng: random.Random) -> tuple[str, str]:
    """A spoken clock time and "HH:MM" (24 h)."""
    special = rng.random()
    if special < 0.04:
        return rng.choice([("noon", "12:00"), ("midday", "12:00"), ("midnight", "00:00"),
                           ("twelve noon", "12:00")])
    period = rng.choice(["in the morning", "in the afternoon", "in the evening", "at night", "am", "pm"])
    hours = {"in the morning": range(5, 12), "in the afternoon": [12, 1, 2, 3, 4, 5],
             "in the evening": range(6, 12), "at night": [9, 10, 11], "am": range(1, 13),
             "pm": range(1, 13)}[period]
    h12 = rng.choice(list(hours))
    pm = period in ("in the afternoon", "in the evening", "at night", "pm")
    h24 = (h12 % 12) + (12 if pm else 0)
    style = rng.choice(["oclock", "quarter_past", "half_past", "quarter_to", "past", "to", "digital", "digital"])
    if style == "oclock":
        m = 0
        spoken = f"{_hour_word(h12)} o'clock" if period not in ("am", "pm") else _hour_word(h12)
    elif style == "quarter_past":
        m, spoken = 15, f"quarter past {_hour_word(h12)}"
    elif style == "half_past":
        m, spoken = 30, f"half past {_hour_word(h12)}"
    elif style == "past":
        m = rng.choice([5, 10, 20, 25])
        spoken = f"{words_under_100(m)} past {_hour_word(h12)}"
    elif style in ("quarter_to", "to"):
        m_to = 15 if style == "quarter_to" else rng.choice([5, 10, 20, 25])
        m = 60 - m_to
        # "quarter to one in the afternoon" is 12:45: the named hour is the next one
        prev = 12 if h12 == 1 else h12 - 1
        h24 = (prev % 12) + (12 if pm else 0)
        if period == "in the afternoon" and h12 == 12:
            return make_time(rng)  # "to twelve in the afternoon" is morning: skip
        if period in ("am", "pm") and h12 == 12:
            return make_time(rng)  # "quarter to twelve pm" is 11:45 am: too tricky, skip
        spoken = f"quarter to {_hour_word(h12)}" if style == "quarter_to" else f"{words_under_100(m_to)} to {_hour_word(h12)}"
    else:
        m = rng.randint(1, 59)
        mw = f"oh {ONES[m]}" if m < 10 else words_under_100(m)
        spoken = f"{_hour_word(h12)} {mw}"
    return f"{spoken} {period}", f"{h24:02d}:{m:02d}"


def make_number(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    n = rng.randint(0, 99) if r < 0.25 else rng.randint(100, 999) if r < 0.6 else rng.randint(1000, 9999)
    return number_words(n, use_and=rng.random() < 0.6), str(n)


def make_percent(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 100)
    return f"{number_words(n)} percent", f"{n}%"


def make_duration(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.15:
        return rng.choice([("half an hour", "30m"), ("an hour and a half", "1h30m"),
                           ("a quarter of an hour", "15m"), ("an hour", "1h"),
                           ("three quarters of an hour", "45m"), ("two and a half hours", "2h30m")])
    if r < 0.45:
        m = rng.randint(1, 59)
        return (f"{words_under_100(m)} minute" + ("" if m == 1 else "s")), f"{m}m"
    h = rng.randint(1, 12)
    hw = "an hour" if h == 1 and rng.random() < 0.5 else f"{ONES[h]} hour" + ("" if h == 1 else "s")
    if r < 0.6:
        return hw, f"{h}h"
    m = rng.randint(1, 59)
    return f"{hw} and {words_under_100(m)} minute" + ("" if m == 1 else "s"), f"{h}h{m}m"


def make_normalize(rng: random.Random) -> tuple[str, str]:
    kind = rng.choices(["time", "number", "percent", "duration"], weights=[40, 25, 15, 20])[0]
    return {"time": make_time, "number": make_number, "percent": make_percent,
            "duration": make_duration}[kind](rng)


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------

def _distinct(make: Callable[[random.Random], tuple[str, object]], rng: random.Random, n: int) -> list:
    seen: dict[str, object] = {}
    tries = 0
    while len(seen) < n:
        inp, out = make(rng)
        seen.setdefault(inp, out)
        tries += 1
        if tries > 50 * n:
            raise RuntimeError(f"cannot draw {n} distinct inputs")
    return list(seen.items())


def build_splits(seed: int = SEED) -> dict[str, dict[str, list[dict]]]:
    """{task: {"train": [...], "test": [...]}} with disjoint inputs per task."""
    out: dict[str, dict[str, list[dict]]] = {}
    # one command pool for intent and reply: same held-out commands for both
    n_cmd = N_TEST + max(N_TRAIN["intent"], N_TRAIN["reply"])
    cmds = _distinct(make_command, random.Random(seed), n_cmd)
    test_cmds, train_cmds = cmds[:N_TEST], cmds[N_TEST:]
    out["intent"] = {
        "train": [{"input": i, "output": intent_json(m)} for i, m in train_cmds[:N_TRAIN["intent"]]],
        "test": [{"input": i, "output": intent_json(m)} for i, m in test_cmds],
    }
    out["reply"] = {
        "train": [{"input": i, "output": reply_text(m)} for i, m in train_cmds[:N_TRAIN["reply"]]],
        "test": [{"input": i, "output": reply_text(m)} for i, m in test_cmds],
    }
    norm = _distinct(make_normalize, random.Random(seed + 1), N_TEST + N_TRAIN["normalize"])
    out["normalize"] = {
        "test": [{"input": i, "output": o} for i, o in norm[:N_TEST]],
        "train": [{"input": i, "output": o} for i, o in norm[N_TEST:]],
    }
    for task, sp in out.items():
        assert not {e["input"] for e in sp["test"]} & {e["input"] for e in sp["train"]}, task
    return out


def write_splits(data_dir: Path = DATA_DIR, seed: int = SEED) -> None:
    for task, sp in build_splits(seed).items():
        d = data_dir / task
        d.mkdir(parents=True, exist_ok=True)
        for split, rows in sp.items():
            p = d / f"{split}.jsonl"
            with p.open("w", encoding="utf-8", newline="\n") as f:
                for r in rows:
                    f.write(json.dumps({"task": task, **r}, ensure_ascii=False) + "\n")
            print(f"{p}: {len(rows)} rows, {p.stat().st_size} bytes")


def load_split(task: str, split: str, data_dir: Path = DATA_DIR) -> list[dict]:
    """Rows {task, input, output} of a committed split."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    p = data_dir / task / f"{split}.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run `python targets/trainer/tasks.py data`")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# domain corpus for pre-training the tiny base
# ---------------------------------------------------------------------------------------------

_PEOPLE = ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas",
           "Kira", "Leo", "Maya", "Noah", "Olivia", "Pablo", "Rosa", "Sam", "Tara", "Yusuf"]
_THINGS = ["the kettle", "the washing machine", "the oven", "the dishwasher", "the robot vacuum",
           "the coffee maker", "the door bell", "the window", "the front door", "the back door",
           "the fridge", "the plants", "the cat", "the dog", "the mail", "the garden hose"]
_WEATHER = ["sunny", "cloudy", "rainy", "windy", "cold", "warm", "foggy", "snowy", "humid", "clear"]
_ACTIVITIES = ["cooked dinner", "read a book", "watched a film", "cleaned the house", "went for a walk",
               "did the laundry", "called a friend", "fixed the bike", "baked bread", "played a game",
               "worked from home", "took a nap", "wrote a letter", "watered the plants"]
_HOME_SENTENCES = [
    "{p} came home at {t} and {a}.",
    "It was {w} outside, so {p} stayed in the {r}.",
    "{p} left {x} running in the {r} for {d}.",
    "The {r} felt {w} this morning.",
    "At {t} the house was quiet except for {x}.",
    "{p} says the {dev} in the {r} is too loud.",
    "The {dev} in the {r} has been on since {t}.",
    "Nobody was in the {r} after {t}, so the {dev} could be off.",
    "{p} likes the {r} at {n} degrees in winter.",
    "The battery of the {dev} was at {pc} percent.",
    "{p} bought {n2} new bulbs for the {r}.",
    "The weather report said it would be {w} by {t}.",
    "It takes about {d} to heat the {r}.",
    "{p} and {q} {a} together.",
    "The {dev} in the {r} is broken again; {p} will look at it.",
    "On {wd} {p} {a} and then {a2}.",
    "{p} asked the assistant to help with {x}.",
    "The assistant reminded {p} about {x} at {t}.",
    "There are {n2} rooms in the house, and the {r} is the largest.",
    "The smart home logged {n2} events today.",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_TIME_PROSE = [
    "The bus comes at {s}, which is {c} on the clock.",
    "{p} set the alarm for {c}, {s}.",
    "We will meet at {s} ({c}).",
    "At {c}, that is {s}, the lights went out.",
    "The show starts at {c}; in words, {s}.",
    "{s} is written {c}.",
    "Dinner was at {s}, so {c} in the calendar.",
    "The shop opens at {c} ({s}).",
]
_NUMBER_PROSE = [
    "{p} counted {s} birds, {c} in total.",
    "The number {s} is written {c}.",
    "There were {c} ({s}) people at the market.",
    "{s}: {c}.",
    "The invoice said {c}, {s} in words.",
    "It costs {c} coins, {s}.",
]
_PERCENT_PROSE = [
    "The battery is at {s}, or {c}.",
    "{c} means {s}.",
    "The blinds were open to {s} ({c}).",
    "About {s} of the rooms were warm, {c} of them.",
]
_DURATION_PROSE = [
    "The cake needs {s} in the oven, {c} on the timer.",
    "{p} waited {s} ({c}).",
    "The film lasts {c}, that is {s}.",
    "{s} written short is {c}.",
]


def _home_sentence(rng: random.Random) -> str:
    t, c = make_time(rng)
    dev = rng.choice([w for ws, _ in DEVICE_WORDS.values() for w in ws])
    return rng.choice(_HOME_SENTENCES).format(
        p=rng.choice(_PEOPLE), q=rng.choice(_PEOPLE), t=rng.choice([t, c]), a=rng.choice(_ACTIVITIES),
        a2=rng.choice(_ACTIVITIES), w=rng.choice(_WEATHER), r=rng.choice(ROOMS), x=rng.choice(_THINGS),
        d=make_duration(rng)[0], dev=dev, n=rng.randint(16, 26), pc=rng.randint(0, 100), n2=rng.randint(2, 40),
        wd=rng.choice(_WEEKDAYS))


_ECHO = [
    '{p} said "{cmd}" and {q} repeated "{cmd}".',
    '"{cmd}", {p} said, and then once more: "{cmd}".',
    'The assistant heard "{cmd}" from {p}.',
    '{p} went to the {r}. In the {r} the {w} was on, so {p} left the {r} {w} alone.',
    'The {w} in the {r} showed {n}. {p} wrote {n} in the notebook and {q} read {n} out loud.',
    '{p} asked about the {r} {w}. "The {r} {w}?" {q} asked back.',
    'Is the {w} in the {r} at {n}? Yes, the {r} {w} is at {n}.',
    'Rooms on the list: {r}, {r2}, {r3}. Again: {r}, {r2}, {r3}.',
    'In the log the {w} is "{dev}" and the {r} is "{r}".',
    'log {js} copied {js}',
    'The assistant said "{rep}" to {p}.',
    '{p} heard "{rep}" and said "{rep}" back, laughing.',
    '{cmd}\n{cmd}',
    '{p}: {cmd}\n{q}: {cmd}?',
    '{js}\n{js}',
    '{rep}\n{rep}',
    'note: {r} {w} {n}\nagain: {r} {w} {n}',
    'First the {r} {w}, then the {r2} {w2}. The {r} {w} was quick; the {r2} {w2} took {n} minutes.',
    '"room":"{r}" is the {r}, "room":"{r2}" is the {r2}.',
    'The {w} is logged as "device":"{dev}" and the {w2} as "device":"{dev2}".',
]


_LIST_WORDS = (ROOMS + [w for ws, _ in DEVICE_WORDS.values() for w in ws] + _PEOPLE + _WEATHER
               + [str(n) for n in range(0, 101, 5)])


def _echo_line(rng: random.Random, held_out: set[str]) -> str | None:
    """Text that repeats what it already said (names, numbers, quotes): the in-context copying
    a model needs to carry a room, device or value from a prompt into an answer. A third of
    these are random word lists said twice, where only copying predicts the second half."""
    if rng.random() < 0.33:
        words = [rng.choice(_LIST_WORDS) for _ in range(rng.randint(3, 8))]
        head = rng.choice(["list", "items", "note", "say"])
        sep = rng.choice([". Again: ", "\n", " and again ", ". Repeat: "])
        return f"{head}: {', '.join(words)}{sep}{', '.join(words)}."
    cmd, m = make_command(rng)
    if cmd in held_out:
        return None
    dev, dev2 = rng.sample(sorted(DEVICE_WORDS), 2)
    rooms = rng.sample(ROOMS, 3)
    return rng.choice(_ECHO).format(
        p=rng.choice(_PEOPLE), q=rng.choice(_PEOPLE), cmd=cmd, r=rooms[0], r2=rooms[1], r3=rooms[2],
        w=rng.choice(DEVICE_WORDS[dev][0]), dev=dev, w2=rng.choice(DEVICE_WORDS[dev2][0]), dev2=dev2,
        n=rng.randint(0, 100),
        js=intent_json(make_command(rng)[1]), rep=reply_text(make_command(rng)[1]))


def corpus_lines(n_lines: int = 120_000, seed: int = SEED + 7) -> list[str]:
    """Domain text for pre-training, one short document a line (a few contain a newline).

    Mix (by line): commands alone, JSON records alone, replies alone (three separate draws, so
    a command is never followed by its own answer), prose that states spoken and written forms
    of times/numbers/percentages/durations together (the knowledge a pretrained model would
    have), text that repeats itself (quotes, names, numbers: in-context copying, which real text
    teaches a real LM) and household sentences. Inputs of every test split are excluded.
    """
    rng = random.Random(seed)
    splits = build_splits()
    held_out = {e["input"] for sp in splits.values() for e in sp["test"]}
    prose = {"time": (make_time, _TIME_PROSE), "number": (make_number, _NUMBER_PROSE),
             "percent": (make_percent, _PERCENT_PROSE), "duration": (make_duration, _DURATION_PROSE)}
    lines: list[str] = []
    while len(lines) < n_lines:
        r = rng.random()
        if r < 0.35:  # repetition and copying
            line = _echo_line(rng, held_out)
            if line is not None:
                lines.append(line)
        elif r < 0.47:  # a few commands in a row, as a user might say them
            cmds = []
            while len(cmds) < rng.randint(1, 3):
                c, _ = make_command(rng)
                if c not in held_out:
                    cmds.append(c)
            lines.append(". ".join(cmds) + ".")
        elif r < 0.55:  # device event log: JSON records of other commands
            recs = [intent_json(make_command(rng)[1]) for _ in range(rng.randint(1, 3))]
            lines.append("log " + " ".join(recs))
        elif r < 0.63:  # assistant confirmations of other commands
            lines.append(" ".join(reply_text(make_command(rng)[1]) for _ in range(rng.randint(1, 3))))
        elif r < 0.87:  # spoken and written forms together
            make, templates = prose[rng.choices(list(prose), weights=[40, 25, 15, 20])[0]]
            s, c = make(rng)
            if s in held_out:
                continue
            lines.append(rng.choice(templates).format(s=s, c=c, p=rng.choice(_PEOPLE)))
        else:
            lines.append(" ".join(_home_sentence(rng) for _ in range(rng.randint(1, 3))))
    return lines


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write data/<task>/{train,test}.jsonl")
    d.add_argument("--out", type=Path, default=DATA_DIR)
    c = sub.add_parser("corpus", help="write the pre-training corpus (one document a line)")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--lines", type=int, default=120_000)
    s = sub.add_parser("show", help="print examples with their prompts")
    s.add_argument("task", choices=TASKS)
    s.add_argument("-n", type=int, default=5)
    s.add_argument("--split", default="test")
    sc = sub.add_parser("score", help="exact match of predictions (one a line) against the test split")
    sc.add_argument("task", choices=TASKS)
    sc.add_argument("predictions", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "data":
        write_splits(a.out)
    elif a.cmd == "corpus":
        lines = corpus_lines(a.lines)
        a.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{a.out}: {len(lines)} lines, {a.out.stat().st_size} bytes")
    elif a.cmd == "show":
        for e in build_splits()[a.task][a.split][: a.n]:
            sys.stdout.write(prompt(a.task, e["input"]) + completion(e["output"]) + "\n")
    elif a.cmd == "score":
        rows = load_split(a.task, "test")
        preds = a.predictions.read_text(encoding="utf-8").split("\n")[: len(rows)]
        print(f"{a.task}: exact match {score(preds, [r['output'] for r in rows]):.3f} on {len(rows)}")


if __name__ == "__main__":
    main()
