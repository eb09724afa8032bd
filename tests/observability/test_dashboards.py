"""Every panel of the shipped dashboards, proven against a real Prometheus scraping real servers.

Three llmserve-server processes serve stories260k as two models (`alpha` twice, `beta` once with
--disable-engine-metrics) behind one llmserve-router; Prometheus scrapes all four every second.
A mixed load runs (streaming and not, long and short prompts, shared prefixes, errors, client
aborts, backpressure, preemptions); then every PromQL expression of every panel, with the
template variables substituted, goes through Prometheus's HTTP API and must return series.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import jsonschema
import pytest

from generate import fill as substitute
from generate import query_panels as panels
from llmserve_testing import procs
from llmserve_testing.paths import DASHBOARDS, ROOT
from llmserve_testing.prometheus import Prometheus

GENERATE = ROOT / "dashboards/generate.py"
# The router asks for API keys (the Tenants row needs tenants): `team` for the mixed load, `burst`
# (one request at once) for the rate-limited panel.
KEYS = "team = sk-team\nburst = sk-burst\n"
LIMITS = '{"default": {"requestsPerMinute": 100000}, "tenants": {"burst": {"concurrentRequests": 1}}}'
TEAM = {"Authorization": "Bearer sk-team"}
BURST = {"Authorization": "Bearer sk-burst"}
ENGINE = re.compile(r"\b(vllm|llmserve):[a-z_]+")
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
    "with her friends. One day, she saw a big red ball under a tree. "
)


async def drive(router, alpha1, seconds):
    """The mixed load; returns what the clients saw."""
    seen = {"ok": 0, "4xx": 0, "429": 0, "aborted": 0}
    deadline = time.time() + seconds

    async def worker(c, model, i):
        n = 0
        while time.time() < deadline:
            n += 1
            long = (i + n) % 3 == 0
            prompt = STORY * 2 + f"Part {n}." if long else "The cat"
            if n % 4 == 0:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}
                r = await c.post(f"{router}/v1/chat/completions", json=body)
            elif n % 4 == 1:
                body = {
                    "model": model,
                    "prompt": prompt,
                    "max_tokens": 32,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                async with c.stream("POST", f"{router}/v1/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        pass
            else:
                r = await c.post(
                    f"{router}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 16 + n % 24}
                )
            seen["ok" if r.status_code == 200 else "4xx"] += 1

    async def errors(c):
        while time.time() < deadline:
            for body in (
                {"model": "gpt-4", "prompt": "x"},
                {"model": "alpha", "prompt": "x", "max_tokens": 0},
                {"model": "beta", "prompt": "x", "max_tokens": 0},
                {"model": "beta", "prompt": "x", "temperature": 9},
            ):
                r = await c.post(f"{router}/v1/completions", json=body)
                assert r.status_code in (400, 404), r.text
                seen["4xx"] += 1
            await asyncio.sleep(0.5)

    async def aborts(c):
        while time.time() < deadline:
            body = {"model": "alpha", "prompt": STORY, "max_tokens": 200, "stream": True, "ignore_eos": True}
            async with c.stream("POST", f"{router}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break  # the client goes away mid-stream
            seen["aborted"] += 1
            await asyncio.sleep(0.3)

    async def limited(c):
        # The `burst` tenant may have one request at once: bursts of three get 429s.
        while time.time() < deadline:
            body = {"model": "alpha", "prompt": "The dog", "max_tokens": 24}
            rs = await asyncio.gather(*(c.post(f"{router}/v1/completions", json=body, headers=BURST) for _ in range(3)))
            seen["429"] += sum(r.status_code == 429 for r in rs)
            await asyncio.sleep(0.5)

    async def backpressure(c):
        # alpha-1 runs two sequences and queues one: a burst gets 429s, and its small KV cache
        # makes the two long generations preempt each other.
        while time.time() < deadline:
            body = {"model": "alpha", "prompt": "Tom and Lily went", "max_tokens": 150, "ignore_eos": True}
            rs = await asyncio.gather(*(c.post(f"{alpha1}/v1/completions", json=body) for _ in range(6)))
            seen["429"] += sum(r.status_code == 429 for r in rs)
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(timeout=120, headers=TEAM) as c:
        await asyncio.gather(
            limited(c),
            *(worker(c, "alpha", i) for i in range(3)),
            *(worker(c, "beta", i) for i in range(2)),
            errors(c),
            aborts(c),
            backpressure(c),
        )
    return seen


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(KEYS)
    with ExitStack() as stack:
        alpha0 = stack.enter_context(procs.server("alpha-0", "--enable-prefix-caching", served_model_name="alpha"))
        # 16 blocks of 16 tokens: two 150-token generations do not fit at once.
        alpha1 = stack.enter_context(
            procs.server(
                "alpha-1",
                "--enable-prefix-caching",
                "--max-num-seqs",
                "2",
                "--max-waiting-requests",
                "1",
                # 16 blocks of 16 tokens: one full sequence of --max-model-len 256 fits, two do not.
                "--kv-cache-bytes",
                str(16 * 20480),
                "--max-model-len",
                "256",
                served_model_name="alpha",
            )
        )
        beta0 = stack.enter_context(procs.server("beta-0", "--disable-engine-metrics", served_model_name="beta"))
        router = stack.enter_context(
            procs.router(
                "router",
                [("alpha", alpha0.url), ("alpha", alpha1.url), ("beta", beta0.url)],
                "--api-keys-file",
                str(keys),
                "--tenant-limits",
                LIMITS,
            )
        )
        common = {"namespace": "llmserve-e2e", "llmserve_app": "demo"}
        prom = stack.enter_context(
            Prometheus(
                [
                    ("alpha-0", alpha0.url, {**common, "pod": "demo-alpha-0"}),
                    ("alpha-1", alpha1.url, {**common, "pod": "demo-alpha-1"}),
                    ("beta-0", beta0.url, {**common, "pod": "demo-beta-0"}),
                    ("router", router.url, {**common, "pod": "demo-router-0"}),
                ]
            )
        )
        time.sleep(2)
        seen = asyncio.run(drive(router.url, alpha1.url, seconds=20))
        time.sleep(4)  # the last scrapes
        yield prom, seen


def test_dashboards_are_generated_and_shipped_from_one_source():
    r = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dashboards_validate_against_grafana_schema():
    schema_path = Path(os.environ.get("LLMSERVE_GRAFANA_SCHEMA", ""))
    assert schema_path.is_file(), "set LLMSERVE_GRAFANA_SCHEMA (tests/run.sh generates it from npm's @grafana/schema)"
    schema = json.loads(schema_path.read_text())
    for name in ("llm-serving.json", "llmserve-operator.json"):
        d = json.loads((DASHBOARDS / name).read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(d), key=str)
        assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"


def test_every_serving_panel_has_data(fleet):
    prom, seen = fleet
    print(f"\nload seen by the clients: {seen}")
    assert seen["ok"] > 20 and seen["429"] > 0 and seen["aborted"] > 0
    assert set(prom.targets_up().values()) == {"up"}, prom.targets_up()
    d = json.loads((DASHBOARDS / "llm-serving.json").read_text())
    rows, failures = [], []
    for p in panels(d):
        for t in p["targets"]:
            res = prom.query(substitute(t["expr"]))
            n = len(res["data"]["result"]) if res["status"] == "success" else -1
            rows.append((p["title"], t["refId"], n))
            if n <= 0:
                failures.append(
                    f"{p['title']} [{t['refId']}]: {res.get('error') or 'no series'}: {substitute(t['expr'])}"
                )
    print("\n| panel | query | series |\n|---|---|---:|")
    for title, ref, n in rows:
        print(f"| {title} | {ref} | {n} |")
    assert not failures, "\n".join(failures)

    # The load reached the paths the panels are there to show.
    def total(expr):
        return sum(float(r["value"][1]) for r in prom.query(expr)["data"]["result"])

    assert total('vllm:prefix_cache_hits_total{model_name="alpha"}') > 0, (
        "shared prompt prefixes were found in the cache"
    )
    assert total("vllm:num_preemptions_total") > 0, "the small cache preempted"
    assert total('vllm:request_success_total{finished_reason="abort"}') > 0, "client aborts were counted"
    # Direct clients saw these 429s; the router's clients may have met more of them.
    assert total('llmserve_http_requests_rejected_total{reason="queue_full"}') >= seen["429"] > 0


def test_template_variables_find_values(fleet):
    prom, _ = fleet
    d = json.loads((DASHBOARDS / "llm-serving.json").read_text())
    found = {}
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
        found[v["name"]] = sorted(prom.label_values(m.group(2), substitute(m.group(1))))
    assert found == {
        "namespace": ["llmserve-e2e"],
        "application": ["demo"],
        "model": ["alpha", "beta"],
        "replica": ["demo-alpha-0", "demo-alpha-1", "demo-beta-0"],
    }, found


def test_engine_metrics_off_empties_only_the_engine_panels(fleet):
    prom, _ = fleet
    d = json.loads((DASHBOARDS / "llm-serving.json").read_text())
    engine, service = [], []
    for p in panels(d):
        needs_engine = any(ENGINE.search(t["expr"]) for t in p["targets"])
        counts = [len(prom.query(substitute(t["expr"], model="beta"))["data"]["result"]) for t in p["targets"]]
        (engine if needs_engine else service).append((p["title"], counts))
    listed = subprocess.run(
        [sys.executable, str(GENERATE), "--engine-panels"], capture_output=True, text=True
    ).stdout.split("\n")
    assert sorted(t for t, _ in engine) == sorted(x for x in listed if x)
    assert all(sum(c) == 0 for _, c in engine), [e for e in engine if sum(e[1])]
    assert all(min(c) > 0 for _, c in service), [s for s in service if min(s[1]) == 0]
    print(
        f"\nbeta (--disable-engine-metrics): {len(engine)} engine panels empty, "
        f"{len(service)} service-level panels with data"
    )
