"""Routing policies on a prefix-heavy workload: the same seeded multi-turn conversations through
the router in front of four release replicas (prefix caching on), once per policy, each policy
with fresh replicas so no cache carries over.

The workload: chat conversations that each start from one of a few short shared system prompts
and a long first user message, then run several short turns; turn k's messages are the system
prompt and every earlier turn, so its prompt extends turn k-1's (whose KV blocks one replica
holds). Many conversations are open at once: each worker takes a random ready turn, and a finished
turn makes its conversation's next turn ready, so one client's consecutive requests belong to
different conversations, as at a busy service. Every request streams, so TTFT is measured at the
client (first content chunk).

With `--kv-cache-bytes`, every replica's KV cache is that size; the prefix cache is the part no
running request holds, evicted least recently freed first, so a smaller cache remembers fewer
turns back. `leastOutstanding` spreads a conversation's turns over every replica and hits only
when the one a turn lands on still holds some earlier turn; `prefixHash` sends every turn to the
replica that served the one before, which needs to remember only that one. The script prints
the cache per replica and the workload's working set (its distinct prompt tokens: each
conversation's last prompt, since every turn's prompt extends the one before). Without the flag
the replicas keep the server's default (256 MiB on CPU, about 210,000 tokens of stories260k),
which this workload never fills.

Reported per policy: the fleet's prefix-cache hit rate (sum of `vllm:prefix_cache_hits_total` over
sum of `vllm:prefix_cache_queries_total` across replicas), TTFT p50 and p99, throughput (requests
per second over the run), and the load spread (most requests one replica answered over the mean).

From the repository root:

    cargo build --release -p llmserve-server -p llmserve-router
    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.routing [--conversations 240] \
        [--load-factor 1.25] [--kv-cache-bytes 41943040]
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import time

import httpx

from llmserve_testing import procs
from llmserve_testing.stats import ms
from llmserve_testing.stats import percentile as pct

MODEL = "stories260k"
POLICIES = ("leastOutstanding", "prefixHash", "kvAware")
WORDS = (
    "the a little big happy sad dog cat girl boy tree sun moon park ball toy red blue green ran jumped "
    "played saw liked wanted found said mom dad friend day night house garden bird fish water cake"
).split()


def sentence(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def workload(seed, conversations, turns, systems, first=6):
    """[[messages of turn 1, turn 2, ...] per conversation]: seeded, the same for every policy. A
    short shared system prompt, a long first user message (a story to discuss), then short
    follow-ups and answers: prompts grow from about 170 to about 380 tokens over six turns."""
    rng = random.Random(seed)
    system_prompts = [" ".join(sentence(rng, 6) for _ in range(2)) for _ in range(systems)]
    out = []
    for _ in range(conversations):
        messages = [
            {"role": "system", "content": rng.choice(system_prompts)},
            {"role": "user", "content": " ".join(sentence(rng, 8) for _ in range(first))},
        ]
        per_turn = [list(messages)]
        for _ in range(turns - 1):
            messages.append({"role": "assistant", "content": " ".join(sentence(rng, 5) for _ in range(2))})
            messages.append({"role": "user", "content": sentence(rng, 5)})
            per_turn.append(list(messages))
        out.append(per_turn)
    return out


async def turn(client, url, messages, ttfts):
    """Streams one turn; appends its TTFT to `ttfts` and returns its prompt's length in tokens."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, prompt_tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                prompt_tokens = event["usage"]["prompt_tokens"]
            delta = (event["choices"] or [{}])[0].get("delta", {})
            if first is None and delta.get("content"):
                first = time.perf_counter() - t0
    ttfts.append(first if first is not None else time.perf_counter() - t0)
    return prompt_tokens


async def drive(url, convs, workers, seed):
    """Many users chatting at once: a pool of ready turns (at first every conversation's first),
    each worker taking a random one; a finished turn makes that conversation's next turn ready. So
    consecutive requests of one worker belong to different conversations, as at a busy service."""
    rng = random.Random(seed)
    ready = [(i, 0) for i in range(len(convs))]
    ttfts = []
    # Each turn's prompt extends the one before, so a conversation's distinct prompt tokens are
    # its last prompt's.
    last_prompt = [0] * len(convs)

    async def worker(client):
        while ready:
            conv, k = ready.pop(rng.randrange(len(ready)))
            tokens = await turn(client, url, convs[conv][k], ttfts)
            if k + 1 < len(convs[conv]):
                ready.append((conv, k + 1))
            else:
                last_prompt[conv] = tokens

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(workers)))
        return ttfts, time.perf_counter() - t0, sum(last_prompt)


def total(url, family):
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(family + "{"))


def kv_capacity(url):
    """(blocks, tokens per block) of a replica's KV cache, from `vllm:cache_config_info`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
    labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
    return int(labels["num_gpu_blocks"].strip('"')), int(labels["block_size"].strip('"'))


def run_policy(policy, convs, workers, replicas, seed, load_factor, kv_cache_bytes):
    cache = ["--kv-cache-bytes", str(kv_cache_bytes)] if kv_cache_bytes else []
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                procs.server(f"routing-{i}", "--enable-prefix-caching", *cache, profile="release", rust_log=None)
            )
            for i in range(replicas)
        ]
        blocks, block_size = kv_capacity(servers[0].url)
        router = stack.enter_context(
            procs.router(
                f"routing-{policy}",
                [(MODEL, s.url) for s in servers],
                "--routing-policy",
                policy,
                "--load-factor",
                str(load_factor),
                profile="release",
                rust_log=None,
            )
        )
        ttfts, seconds, working_set = asyncio.run(drive(router.url, convs, workers, seed))
        hits = sum(total(s.url, "vllm:prefix_cache_hits_total") for s in servers)
        queries = sum(total(s.url, "vllm:prefix_cache_queries_total") for s in servers)
        served = [total(s.url, "llmserve_http_requests_total") for s in servers]
        picks = {
            line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{router.url}/metrics", timeout=10).text.splitlines()
            if line.startswith("llmserve_router_picks_total{")
        }
        prompt_tokens = sum(total(s.url, "vllm:prompt_tokens_total") for s in servers)
    mean = sum(served) / len(served)
    return {
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "rps": len(ttfts) / seconds,
        "spread": max(served) / mean if mean else float("nan"),
        "served": served,
        "picks": picks,
        "prompt_tokens": prompt_tokens / len(ttfts),
        "working_set": working_set,
        "kv_blocks": blocks,
        "block_size": block_size,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=240)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--systems", type=int, default=4)
    ap.add_argument("--first-sentences", type=int, default=6, help="sentences of each first user message")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--load-factor", type=float, default=1.25, help="the router's --load-factor")
    ap.add_argument(
        "--kv-cache-bytes", type=int, help="every replica's --kv-cache-bytes (default: the server's, 256 MiB on CPU)"
    )
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}\n")
    convs = workload(args.seed, args.conversations, args.turns, args.systems, args.first_sentences)
    print(
        f"{args.conversations} conversations x {args.turns} turns over {args.systems} shared system prompts, "
        f"{args.workers} concurrent clients, {args.replicas} replicas, seed {args.seed}, "
        f"--load-factor {args.load_factor}, --kv-cache-bytes {args.kv_cache_bytes or 'default'}\n"
    )
    results = {
        p: run_policy(p, convs, args.workers, args.replicas, args.seed, args.load_factor, args.kv_cache_bytes)
        for p in POLICIES
    }
    base = results["leastOutstanding"]
    one = base["kv_blocks"] * base["block_size"]
    working_set = base["working_set"]
    print(
        f"KV cache per replica: {base['kv_blocks']} blocks of {base['block_size']} tokens = {one} tokens; "
        f"fleet: {one * args.replicas} tokens\n"
        f"working set (distinct prompt tokens, each conversation's last prompt): {working_set} tokens = "
        f"{working_set / one:.2f}x one replica's cache, {working_set / (one * args.replicas):.2f}x the fleet's\n"
    )
    print("| policy | prefix-cache hit rate | TTFT p50 (ms) | TTFT p99 (ms) | requests/s | max/mean load ", end="")
    print("| per replica |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for p, r in results.items():
        print(
            f"| {p} | {r['hit_rate']:.3f} | {ms(r['ttft_p50'], 2)} | {ms(r['ttft_p99'], 2)} | {r['rps']:.1f} | "
            f"{r['spread']:.2f} | {', '.join(str(int(x)) for x in r['served'])} |"
        )
    for p, r in results.items():
        print(f"{p} picks: " + ", ".join(f"{k} {int(v)}" for k, v in sorted(r["picks"].items()) if v))
    print(f"\nmean prompt: {base['prompt_tokens']:.0f} tokens\n")
    for p in POLICIES[1:]:
        r = results[p]
        print(
            f"{p} vs leastOutstanding: hit rate x{r['hit_rate'] / base['hit_rate']:.2f}, "
            f"TTFT p50 x{r['ttft_p50'] / base['ttft_p50']:.2f}, throughput x{r['rps'] / base['rps']:.2f}"
        )


if __name__ == "__main__":
    main()
