"""The official `openai` Python client against a running `llmserve-server` on stories260k."""

import math
import signal
import threading
import time

import openai
import pytest

from llmserve_testing import procs
from llmserve_testing.paths import reference


def start(*extra):
    """llmserve-server serving stories260k as `stories`, healthy."""
    return procs.server("openai-client", *extra, served_model_name="stories")


@pytest.fixture(scope="module")
def client():
    with start() as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


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
