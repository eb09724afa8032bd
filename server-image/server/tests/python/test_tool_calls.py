"""Tool calling through the official `openai` client on stories260k, served with a Hermes-style
chat template (`--chat-template`, the shape Qwen2.5's template has): named and `required`
`tool_choice` enforced by a grammar, `auto` read from the text, streamed and whole alike, a round
trip of a call and its result through the template, and 400s naming the parameter."""

import json

import jsonschema
import openai
import pytest

from llmserve_testing import procs

# Calls and results as Qwen2.5's template writes them (a shortened copy of its shape). The tools
# are listed by name only: stories260k's context is 512 tokens of a 512-piece vocabulary, and the
# whole `tool | tojson` Qwen writes (the Rust unit test renders it) would fill most of it.
TEMPLATE = """{%- if tools %}<|im_start|>system
<tools>{% for tool in tools %} {{ tool.function.name }}{% endfor %}</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == "tool" %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls %}<|im_start|>assistant
{%- for c in m.tool_calls %}
<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Oslo", "Lima"]},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "note": {"type": "string", "maxLength": 8},
    },
    "required": ["city", "unit", "note"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "hermes.jinja"
    template.write_text(TEMPLATE)
    with procs.server("tool-calls", "--chat-template", str(template), served_model_name="stories") as s:
        yield openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)


def chat(client, messages=ASK, **kw):
    max_tokens = kw.pop("max_tokens", 200)
    return client.chat.completions.create(model="stories", messages=messages, max_tokens=max_tokens, **kw)


def valid_call(call, names=SCHEMAS):
    assert call.type == "function" and call.id.startswith("call_"), call
    assert call.function.name in names, call
    jsonschema.validate(json.loads(call.function.arguments), names[call.function.name])


def streamed(client, **kw):
    """The streamed answer's content, calls (name, arguments) and finish reason, from the deltas."""
    content, calls, finish = "", {}, None
    for chunk in chat(client, stream=True, **kw):
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                got = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                got["name"] += tc.function.name or ""
                got["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[k] for k in sorted(calls)], finish


def test_a_named_function_is_called_with_valid_arguments(client):
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in range(4):
        r = chat(client, tools=TOOLS, tool_choice=named, temperature=1, seed=seed, n=2)
        for c in r.choices:
            assert c.message.content is None and c.finish_reason == "tool_calls", c
            assert [t.function.name for t in c.message.tool_calls] == ["get_time"]
            valid_call(c.message.tool_calls[0], {"get_time": TIME})
    # Streamed, greedy: the same call as the whole answer, in deltas the client puts together.
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = chat(client, tools=TOOLS, tool_choice=named, temperature=0).choices[0]
    content, calls, finish = streamed(client, tools=TOOLS, tool_choice=named, temperature=0)
    (call,) = whole.message.tool_calls
    valid_call(call)
    assert (content, finish) == ("", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [(call.function.name, call.function.arguments)]
    assert calls[0]["id"].startswith("call_")


def test_required_calls_any_tool_and_parallel_calls_each_valid(client):
    for seed in range(3):
        r = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=1, seed=seed)
        (c,) = r.choices
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        valid_call(c.message.tool_calls[0])
    r = chat(client, tools=TOOLS, tool_choice="required", temperature=1, seed=7, n=3, max_tokens=400)
    for c in r.choices:
        assert len(c.message.tool_calls) >= 1, c
        for call in c.message.tool_calls:
            valid_call(call)
        assert len({call.id for call in c.message.tool_calls}) == len(c.message.tool_calls)


def forced(text_before, call):
    """A grammar writing `text_before` and then `call` in the Hermes format, as a model might."""
    return {
        "guided_grammar": f"start: {json.dumps(text_before)} {json.dumps('<tool_call>' + chr(10) + call)}"
        f" {json.dumps(chr(10) + '</tool_call>')}"
    }


def test_auto_reads_calls_from_the_text_whole_and_streamed(client):
    call = '{"name": "get_time", "arguments": {"zone": "CET"}}'
    body = forced("I will look.\n", call)
    r = chat(client, tools=TOOLS, tool_choice="auto", temperature=0, extra_body=body)
    m = r.choices[0]
    assert m.message.content == "I will look.\n" and m.finish_reason == "tool_calls", m
    assert [(t.function.name, json.loads(t.function.arguments)) for t in m.message.tool_calls] == [
        ("get_time", {"zone": "CET"})
    ]
    content, calls, finish = streamed(client, tools=TOOLS, temperature=0, extra_body=body)
    assert (content, finish) == ("I will look.\n", "tool_calls")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_time", {"zone": "CET"})]
    # No call in the text: the text is the answer. With tool_choice none the text is never read.
    plain = chat(client, tools=TOOLS, temperature=0, max_tokens=24).choices[0]
    assert plain.message.tool_calls is None and plain.message.content and plain.finish_reason in ("stop", "length")
    r = chat(client, tools=TOOLS, tool_choice="none", temperature=0, extra_body=body).choices[0]
    assert r.message.tool_calls is None and r.message.content.startswith("I will look.\n<tool_call>")


def test_a_call_and_its_result_go_back_through_the_template(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = chat(client, tools=TOOLS, tool_choice=named, temperature=0)
    (call,) = first.choices[0].message.tool_calls
    result = "It is 22 degrees and sunny in Paris."
    turn = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = chat(client, messages=turn, tools=TOOLS, temperature=0, max_tokens=16)
    assert second.choices[0].message.content is not None
    # The call and the result are in the prompt: it grew by at least their characters' worth of
    # tokens (this tokenizer makes at most a few characters a token).
    grown = second.usage.prompt_tokens - first.usage.prompt_tokens
    assert grown >= (len(call.function.arguments) + len(result)) // 4, (grown, call.function.arguments)


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_parameter(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **kw)
    assert e.value.body["param"] == param, e.value.body
