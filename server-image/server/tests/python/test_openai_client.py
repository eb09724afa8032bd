"""The official `openai` Python client against a running `llmserve-server` on stories260k."""

import math
import signal
import threading
import time

import openai
import pytest

from llmserve_testing import procs
from llmserve_testing.net import get
from llmserve_testing.paths import reference


def start(*extra):
    """llmserve-server serving stories260k as `stories`, healthy."""
    return procs.server("openai-client", *extra, served_model_name="stories")


@pytest.fixture(scope="module")
def server():
    with start() as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def counter(server, name):
    """The value of an unlabelled-but-for-model counter sample of the server's `/metrics`."""
    text = get(server.url + "/metrics")[1].decode()
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_models(client):
    assert [m.id for m in client.models.list()] == ["stories"]
    assert client.models.retrieve("stories").id == "stories"


def test_greedy_completion_matches_llama2c(client):
    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=24, temperature=0)
    assert reference("once_upon_a_time.txt").startswith("Once upon a time" + r.choices[0].text)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 24)


def test_streamed_chat_equals_whole_chat(client):
    msgs = [{"role": "user", "content": "Tom and Lily went"}]
    whole = client.chat.completions.create(model="stories", messages=msgs, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(
        model="stories",
        messages=msgs,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert reference("tom_and_lily_went.txt").startswith("Tom and Lily went" + whole.choices[0].message.content)
    assert finish == "length" and usage.completion_tokens == 16


def test_logprobs_parse_in_the_clients_types(client):

    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert all(
        len(top) == 2 and max(top.values()) == pytest.approx(x)
        for top, x in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    msgs = [{"role": "user", "content": "Tom and Lily went"}]
    chat = client.chat.completions.create(
        model="stories", messages=msgs, max_tokens=6, temperature=0.8, seed=1, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert "".join(e.token for e in content) == chat.choices[0].message.content
    # The alternatives of a token are a distribution's head: their probabilities sum to at most 1.
    assert all(
        len(e.top_logprobs) == 3 and sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-5 for e in content
    )
    stream = client.chat.completions.create(
        model="stories",
        messages=msgs,
        max_tokens=6,
        temperature=0.8,
        seed=1,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_greedy_samples_equal_the_single_answer_and_the_prompt_is_prefilled_once(client, server):
    prompt_before = counter(server, "vllm:prompt_tokens_total")
    steps_before = counter(server, "vllm:iteration_tokens_total_sum")
    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=24, temperature=0, n=4)
    assert counter(server, "vllm:prompt_tokens_total") - prompt_before == 5, "the prompt counted once"
    # Run through the model: the 5 prompt tokens once, then 23 more tokens for each of 4 samples.
    assert counter(server, "vllm:iteration_tokens_total_sum") - steps_before == 5 + 4 * 23
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = {c.text for c in r.choices}
    assert len(texts) == 1 and reference("once_upon_a_time.txt").startswith("Once upon a time" + texts.pop())
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 4 * 24)


def test_seeded_samples_differ_reproducibly_and_stream_by_index(client):
    msgs = [{"role": "user", "content": "Tom and Lily went"}]
    args = dict(model="stories", messages=msgs, max_tokens=12, temperature=1.0, seed=42, n=3)
    whole = client.chat.completions.create(**args)
    texts = [c.message.content for c in whole.choices]
    assert len(set(texts)) > 1, texts
    assert [c.message.content for c in client.chat.completions.create(**args).choices] == texts
    # Sample i draws with seed + i: the second sample is a lone request seeded 43.
    alone = client.chat.completions.create(**{**args, "n": 1, "seed": 43})
    assert alone.choices[0].message.content == texts[1]
    streamed, finishes, usage = ["", "", ""], [[], [], []], None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index].append(c.finish_reason)
    assert streamed == texts
    assert finishes == [[c.finish_reason] for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_echo_max_completion_tokens_user_and_stop(client):
    r = client.completions.create(model="stories", prompt="Once upon a time", max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text.startswith("Once upon a time,")
    assert reference("once_upon_a_time.txt").startswith(r.choices[0].text)
    msgs = [{"role": "user", "content": "The cat"}]
    chat = client.chat.completions.create(
        model="stories",
        messages=msgs,
        max_tokens=2,
        max_completion_tokens=7,
        temperature=0,
        user="someone",
        extra_body={"ignore_eos": True},
    )
    assert chat.usage.completion_tokens == 7
    text = chat.choices[0].message.content
    stop = text[3:6]
    for s in (stop, ["zzz", stop]):
        cut = client.chat.completions.create(model="stories", messages=msgs, max_tokens=7, temperature=0, stop=s)
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "route, fields, param",
    [
        ("chat", {"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ("completions", {"extra_body": {"tools": [{"type": "function", "function": {"name": "f"}}]}}, "tools"),
        ("chat", {"tool_choice": "required"}, "tool_choice"),
        ("chat", {"n": 17}, "n"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"echo": True, "logprobs": 1}, "echo"),
        ("completions", {"suffix": "The end."}, "suffix"),
    ],
)
def test_unsupported_parameters_are_400s_naming_them(client, route, fields, param):
    with pytest.raises(openai.BadRequestError) as e:
        if route == "chat":
            msgs = [{"role": "user", "content": "Hi"}]
            client.chat.completions.create(model="stories", messages=msgs, max_tokens=2, **fields)
        else:
            client.completions.create(model="stories", prompt="Hi", max_tokens=2, **fields)
    assert e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error"


def test_errors_reach_the_client_typed(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories", prompt="x", temperature=5)
    assert e.value.body["param"] == "temperature"


def test_sigterm_finishes_running_streams_and_refuses_new_work():
    with start("--shutdown-grace-seconds", "20") as server:  # stopped also when an assertion fails
        proc = server.process
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        got = {}

        def consume():
            s = c.completions.create(
                model="stories",
                prompt="Once upon a time",
                max_tokens=400,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            got["chunks"] = 0
            for chunk in s:
                got["chunks"] += 1
                got["finish"] = chunk.choices[0].finish_reason or got.get("finish")
                if got["chunks"] == 2:
                    got["started"] = True

        t = threading.Thread(target=consume)
        t.start()
        while not got.get("started"):
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=30)
        assert got.get("finish") == "length", got  # the running stream ran to its end
        assert proc.wait(timeout=30) == 0
        with pytest.raises(openai.APIConnectionError):
            c.models.list()
