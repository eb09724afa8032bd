"""Structured output through the official `openai` client on stories260k: `guided_choice`,
`guided_regex`, `guided_grammar`, `response_format` (`json_object`, `json_schema`) and `guided_json`,
enforced by llguidance token masks. The random-schema count is `LLMSERVE_SCHEMA_COUNT` (100)."""

import json
import os
import random
import re

import jsonschema
import openai
import pytest

from llmserve_testing import procs
from llmserve_testing.paths import MODEL

SCHEMA_COUNT = int(os.environ.get("LLMSERVE_SCHEMA_COUNT", "100"))
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client():
    with procs.server("structured-output", served_model_name="stories") as s:
        yield openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)


def complete(client, max_tokens=64, **kw):
    """A completion of `PROMPT`; `response_format` (vLLM takes it on completions too) travels in `extra_body`."""
    if "response_format" in kw:
        kw["extra_body"] = {**kw.get("extra_body", {}), "response_format": kw.pop("response_format")}
    return client.completions.create(model="stories", prompt=PROMPT, max_tokens=max_tokens, **kw)


def test_guided_choice_is_one_of_the_choices(client):
    choices = ["yes", "no", "maybe so", "a.b|c"]
    for seed in range(4):
        r = complete(client, temperature=1, seed=seed, n=3, extra_body={"guided_choice": choices})
        for c in r.choices:
            assert c.text in choices and c.finish_reason == "stop"
    msgs = [{"role": "user", "content": "Tom said"}]
    chat = client.chat.completions.create(
        model="stories", messages=msgs, max_tokens=16, temperature=0, extra_body={"guided_choice": choices}
    )
    assert chat.choices[0].message.content in choices


def test_guided_regex_matches_in_full(client):
    pattern = r"[A-Z][a-z]{1,8} (is|was) [0-9]{1,3}( years old)?\."
    for seed in range(4):
        r = complete(client, temperature=1, seed=seed, n=2, extra_body={"guided_regex": pattern})
        for c in r.choices:
            assert re.fullmatch(pattern, c.text), c.text
            assert c.finish_reason == "stop"


def test_guided_grammar_lark(client):
    grammar = 'start: "The " animal " " verb "."\nanimal: "cat" | "dog" | "bird"\nverb: "ran" | "sat"'
    r = complete(client, temperature=1, seed=3, n=4, extra_body={"guided_grammar": grammar})
    for c in r.choices:
        assert re.fullmatch(r"The (cat|dog|bird) (ran|sat)\.", c.text), c.text


def no_quote_bias():
    """`logit_bias` banning every token whose text starts with `"` (a story model never closes a free string)."""
    vocab = json.loads((MODEL / "tokenizer.json").read_text())["model"]["vocab"]
    return {str(i): -100 for t, i in vocab.items() if t.startswith('"') or t in ("<0x22>", '▁"')}


def test_json_object_is_a_json_object(client):
    # Free sampling: what finishes parses as an object; what runs out of tokens is a cut-off object.
    r = complete(client, temperature=1, seed=1, n=6, response_format={"type": "json_object"})
    for c in r.choices:
        assert c.text.startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict), c.text
        else:
            assert c.finish_reason == "length"
    # With every key banned, the only object left is the empty one, and the grammar ends there.
    r = complete(client, temperature=0, response_format={"type": "json_object"}, logit_bias=no_quote_bias())
    assert (json.loads(r.choices[0].text), r.choices[0].finish_reason) == ({}, "stop")


def random_schema(rng, depth=0):
    """A small schema whose every instance is short: bounded strings, integers and arrays, no
    additional properties, nesting at most two objects deep."""
    kind = rng.choice(
        ["object", "object"] if depth == 0 else ["string", "integer", "boolean", "enum", "array", "object"]
    )
    if kind == "object" and depth < 2:
        names = rng.sample(["name", "age", "color", "pet", "tags", "size", "ok", "home"], rng.randint(1, 3 - depth))
        props = {n: random_schema(rng, depth + 1) for n in names}
        return {"type": "object", "properties": props, "required": names, "additionalProperties": False}
    if kind in ("object", "string"):
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 8)}
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "cat", "dog", 1, 2, True, None], rng.randint(1, 4))}
    item = random_schema(rng, 2)
    lo = rng.randint(0, 2)
    return {"type": "array", "items": item, "minItems": lo, "maxItems": lo + rng.randint(0, 2)}


def test_random_json_schemas_validate(client):
    rng = random.Random(18)
    for i in range(SCHEMA_COUNT):
        schema = random_schema(rng)
        temperature = rng.choice([0, 0.7, 1.0])
        if i % 2:
            fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
            r = complete(client, max_tokens=400, temperature=temperature, seed=i, response_format=fmt)
        else:
            r = complete(client, max_tokens=400, temperature=temperature, seed=i, extra_body={"guided_json": schema})
        c = r.choices[0]
        assert c.finish_reason == "stop", (schema, c.text)
        jsonschema.validate(json.loads(c.text), schema)


def test_chat_json_schema_with_n_samples(client):
    schema = random_schema(random.Random(7))
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    msgs = [{"role": "user", "content": "Lily had a dog"}]
    r = client.chat.completions.create(
        model="stories", messages=msgs, max_tokens=400, temperature=1, seed=5, n=3, response_format=fmt
    )
    assert len(r.choices) == 3
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), schema)


def test_streaming_gives_the_whole_text(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 1, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    for extra in ({"guided_json": schema}, {"guided_regex": r"[a-z ]{3,20}!"}):
        whole = complete(client, max_tokens=60, temperature=0, extra_body=extra).choices[0]
        stream = complete(client, max_tokens=60, temperature=0, extra_body=extra, stream=True)
        pieces, finish = [], None
        for chunk in stream:
            for c in chunk.choices:
                pieces.append(c.text)
                finish = c.finish_reason or finish
        assert "".join(pieces) == whole.text and finish == whole.finish_reason
    msgs = [{"role": "user", "content": "Tom and Lily went"}]
    kw = {
        "model": "stories",
        "messages": msgs,
        "max_tokens": 60,
        "temperature": 0,
        "extra_body": {"guided_json": schema},
    }
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices
    )
    assert streamed == whole
    jsonschema.validate(json.loads(whole), schema)


def test_unsatisfiable_within_max_tokens_is_length(client):
    r = complete(client, max_tokens=3, temperature=0, extra_body={"guided_regex": "[a-z]{20}"})
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "fields, param",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format",
        ),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"extra_body": {"guided_json": {"type": "object", "properties": {"a": {"type": 7}}}}}, "guided_json"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
        ({"extra_body": {"guided_choice": "yes"}}, "guided_choice"),
        ({"extra_body": {"guided_grammar": "start: undefined_rule"}}, "guided_grammar"),
        ({"extra_body": {"guided_regex": "a", "guided_choice": ["a"]}}, "guided_choice"),
    ],
)
def test_bad_grammars_are_400s_naming_the_parameter(client, fields, param):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, max_tokens=4, **fields)
    assert e.value.body["param"] == param
    message = e.value.body["message"]
    assert "\n" not in message and len(message) < 400, message
