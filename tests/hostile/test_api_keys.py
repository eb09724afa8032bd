"""API keys and tenant limits at the router, as OpenAI's official Python client sees them: the
errors it raises are the ones it raises against OpenAI (AuthenticationError, RateLimitError), and
the rate-limit headers it can read are OpenAI's."""

import json

import openai
import pytest

from llmserve_testing import procs

MODEL = "stories260k"


@pytest.fixture(scope="module")
def keyed_router(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text("team-a = sk-team-a\nteam-b = sk-team-b\n")
    limits = {"default": {"requestsPerMinute": 1000}, "tenants": {"team-b": {"requestsPerMinute": 2}}}
    with (
        procs.server("keys-server") as server,
        procs.router(
            "keys-router",
            [(MODEL, server.url)],
            "--api-keys-file",
            str(keys),
            "--tenant-limits",
            json.dumps(limits),
        ) as router,
    ):
        yield router


def client(router, key):
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


def test_a_wrong_key_is_an_authentication_error(keyed_router):
    with pytest.raises(openai.AuthenticationError) as e:
        client(keyed_router, "sk-wrong").completions.create(model=MODEL, prompt="Once", max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed_router, "sk-wrong").models.list()


def test_a_right_key_is_served_with_openais_rate_limit_headers(keyed_router):
    raw = client(keyed_router, "sk-team-a").completions.with_raw_response.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0
    )
    assert raw.parse().choices[0].text
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) <= 999
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")


def test_over_the_limit_is_a_rate_limit_error_with_retry_after(keyed_router):
    b = client(keyed_router, "sk-team-b")
    for _ in range(2):
        b.completions.create(model=MODEL, prompt="Once", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        b.completions.create(model=MODEL, prompt="Once", max_tokens=2)
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    # Another tenant is not held back by team-b's limit.
    assert client(keyed_router, "sk-team-a").completions.create(model=MODEL, prompt="Once", max_tokens=2).choices
