#!/usr/bin/env python3
"""`response_format` JSON schema output of `edgelora serve`, read by the official `openai` client.

    openai_json_schema.py TINY_BASE_URL SCHEMA_FILE [SMOLLM2_BASE_URL]

- tiny server (models tiny-base and intent): text completions with `response_format`
  `json_schema` (sent through `extra_body`, as the completions API has no such parameter) and
  `json_object`; every answer must load with `json.loads` and fit the intent schema.
- SmolLM2 server (optional, chat): `client.chat.completions.parse(response_format=Intent)`
  with a pydantic model; the client itself validates the answer into the model.
"""
import json
import sys
from typing import Literal, Optional

try:
    import openai
    import pydantic
except ImportError:
    print("SKIPPED: the openai package is not installed")
    sys.exit(0)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


INPUTS = [
    "please raise the shades in the bedroom",
    "set the ac in the bathroom to 24 degrees",
    "count down 5 minutes",
    "switch off the fan",
]


def fits(obj, schema):
    props = schema["properties"]
    check(isinstance(obj, dict), f"not an object: {obj!r}")
    keys = list(obj)
    order = list(props)
    check(keys == sorted(keys, key=order.index), f"key order {keys}")
    for k in schema["required"]:
        check(k in obj, f"{k} missing in {obj}")
    for k, v in obj.items():
        p = props[k]
        if "enum" in p:
            check(v in p["enum"], f"{k}={v!r} not in enum")
        if p.get("type") == "integer":
            check(isinstance(v, int) and not isinstance(v, bool), f"{k}={v!r} not an integer")


def main():
    base, schema_path = sys.argv[1], sys.argv[2]
    schema = json.load(open(schema_path))
    client = openai.OpenAI(base_url=base, api_key="unused")
    n = 0
    for model in ["tiny-base", "intent"]:
        for inp in INPUTS:
            rf = {"type": "json_schema", "json_schema": {"name": "intent", "strict": True, "schema": schema}}
            r = client.completions.create(
                model=model, prompt=f"intent: {inp}\n", max_tokens=96, temperature=0,
                extra_body={"response_format": rf},
            )
            text = r.choices[0].text
            obj = json.loads(text)
            fits(obj, schema)
            check(r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)
            print(f"ok   json_schema {model:<10} {text}")
            n += 1
        r = client.completions.create(
            model=model, prompt=f"intent: {INPUTS[0]}\n", max_tokens=96, temperature=0,
            extra_body={"response_format": {"type": "json_object"}},
        )
        check(isinstance(json.loads(r.choices[0].text), dict), r.choices[0].text)
        print(f"ok   json_object {model:<10} {r.choices[0].text}")
        n += 1
    try:
        client.completions.create(
            model="tiny-base", prompt="x", max_tokens=4,
            extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
        )
        check(False, "an unsupported schema was accepted")
    except openai.BadRequestError as e:
        check(getattr(e, "param", None) == "response_format", f"param {getattr(e, 'param', None)}: {e}")
        print("ok   400        unsupported schema keyword -> BadRequestError")
        n += 1

    if len(sys.argv) > 3:
        props = schema["properties"]

        class Intent(pydantic.BaseModel):
            action: Literal[tuple(props["action"]["enum"])]
            device: Literal[tuple(props["device"]["enum"])]
            room: Optional[Literal[tuple(props["room"]["enum"])]]
            value: Optional[int]

        chat = openai.OpenAI(base_url=sys.argv[3], api_key="unused")
        ids = [m.id for m in chat.models.list().data]
        for model in ids:
            for inp in INPUTS[:2]:
                c = chat.chat.completions.parse(
                    model=model,
                    messages=[{"role": "user", "content": f"intent: {inp}"}],
                    response_format=Intent,
                    max_tokens=160,
                    temperature=0,
                )
                parsed = c.choices[0].message.parsed
                check(isinstance(parsed, Intent), f"not parsed: {c.choices[0].message.content!r}")
                print(f"ok   chat.parse  {model:<28} {parsed!r}")
                n += 1
    print(f"ALL OK ({n} cases, openai {openai.__version__}, pydantic {pydantic.VERSION})")


if __name__ == "__main__":
    main()
