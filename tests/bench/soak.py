"""Hostile-traffic soak: llmserve-router in front of two llmserve-server replicas (stories260k), all on
loopback, fed a seeded mix of what clients get wrong: random Unicode prompts (empty, huge, invalid
UTF-8 bytes), parameters in and out of range, unsupported and unknown fields, stop strings, streams
the client drops at a random point, malformed JSON, oversized bodies, slow clients that trickle their
headers, unknown models and paths.

It passes when no process exited; every answer is 2xx, a 4xx in OpenAI's error envelope, or a
429/503 with `Retry-After`; afterwards each replica's `vllm:num_requests_running`,
`vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` are 0; each replica's resident memory
is within 1.5x of its value after the warm-up; and a greedy completion still equals llama2.c's
reference text. Bounded in requests and in time; traffic goes to 127.0.0.1 only.

From the repository root (the benchmark; the test command runs a short one with debug builds):

    cargo build --release -p llmserve-server -p llmserve-router
    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.soak --requests 100000 --seconds 600
"""

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx

from llmserve_testing import procs
from llmserve_testing.net import get, post_json
from llmserve_testing.paths import reference

MODEL = "stories260k"
# Characters prompts and stop strings are drawn from: ASCII, accents, CJK, emoji, controls, joiners.
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz ABC .,!?'\"\n\t\\{}"
    + "éèàçœüßñ"
    + "日本語中文"
    + "🙂🚀👩‍👩‍👧"
    + "\u0000\u0007\u200d\ufeff"
)
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def text(rng, n):
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def sampling(rng):
    """Sampling fields, mostly in range, sometimes not."""
    body = {}
    if rng.random() < 0.6:
        body["temperature"] = rng.choice([0, 1e-38, 0.7, 1.0, 2.0, -1, 3, "hot", None])
    if rng.random() < 0.3:
        body["top_p"] = rng.choice([0.9, 1, 0, 1.5, None])
    if rng.random() < 0.2:
        body["top_k"] = rng.choice([-1, 1, 5, -7, 10**12])
    if rng.random() < 0.3:
        body["seed"] = rng.choice([0, 1, 2**63 - 1, -5, "x"])
    if rng.random() < 0.4:
        stops = [text(rng, rng.randint(0, 4)) for _ in range(rng.randint(0, 6))]
        body["stop"] = stops if rng.random() < 0.7 else (stops[0] if stops else "")
    if rng.random() < 0.1:
        body["stop_token_ids"] = rng.choice([[1, 2], [2**40], list(range(100)), "2"])
    if rng.random() < 0.1:
        body["presence_penalty"] = rng.choice([0.5, -2, 9])
    if rng.random() < 0.08:
        body[rng.choice(["logprobs", "n", "tools", "response_format", "temperatur", "best_of"])] = rng.choice(
            [3, True, [{"type": "function"}], {"type": "json_object"}, 0.5]
        )
    body["max_tokens"] = rng.choice([1, 2, 4, 8, 16, 0, -1, 10**9, None]) if rng.random() < 0.9 else 32
    return {k: v for k, v in body.items() if v is not None}


def generation(rng, kind, path, body, stream_share, stream_tokens, last_drop):
    """A generation request, streamed for `stream_share` of them (with `stream_tokens` tokens), half
    of those dropped by the client after 0 to `last_drop` events."""
    stream = rng.random() < stream_share
    if stream:
        body["stream"] = True
        body["max_tokens"] = rng.randint(*stream_tokens)
    drop = rng.randint(0, last_drop) if stream and rng.random() < 0.5 else None
    return kind, "POST", path, json.dumps(body).encode(), stream, drop


def request(rng):
    """(kind, method, path, body bytes, stream?, drop after N chunks or None)."""
    r = rng.random()
    if r < 0.40:
        prompt = text(rng, rng.choice([0, 1, 5, 20, 60]))
        body = {"model": MODEL, "prompt": prompt, **sampling(rng)}
        return generation(rng, "completion", "/v1/completions", body, 0.4, (4, 24), 3)
    if r < 0.60:
        content = rng.choice([text(rng, rng.randint(0, 40)), [{"type": "text", "text": "hi"}], None, 5])
        role = rng.choice(["user", "user", "system", "robot"])
        body = {"model": MODEL, "messages": [{"role": role, "content": content}], **sampling(rng)}
        return generation(rng, "chat", "/v1/chat/completions", body, 0.3, (2, 12), 2)
    if r < 0.68:
        raw = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2})
        broken = rng.choice([raw[: rng.randint(0, len(raw) - 1)], "{", "[]", "null", "{'a': 1}", raw + "}"])
        return "malformed-json", "POST", "/v1/completions", broken.encode(), False, None
    if r < 0.74:
        body = b'{"model": "stories260k", "prompt": "\xff\xfe\xc3(' + bytes(rng.randrange(256) for _ in range(8))
        return "invalid-utf8", "POST", "/v1/completions", body + b'", "max_tokens": 2}', False, None
    if r < 0.80:
        body = {"model": rng.choice(["gpt-4", "", "🙂", "a" * 300]), "prompt": "x"}
        return "unknown-model", "POST", "/v1/completions", json.dumps(body).encode(), False, None
    if r < 0.85:
        return (
            "unknown-path",
            rng.choice(["GET", "POST", "DELETE"]),
            rng.choice(["/v2/x", "/%ff", "/v1/"]),
            b"",
            False,
            None,
        )
    if r < 0.88:
        # A long prompt: over the context, so a 400, after tokenizing about 30 KB.
        body = {"model": MODEL, "prompt": text(rng, 30_000), "max_tokens": 4}
        return "huge-prompt", "POST", "/v1/completions", json.dumps(body).encode(), False, None
    if r < 0.885:
        body = {"model": MODEL, "prompt": "x" * (5 << 20)}
        return "oversized", "POST", "/v1/completions", json.dumps(body).encode(), False, None
    if r < 0.90:
        return (
            "trickle",
            "POST",
            "/v1/completions",
            json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2}).encode(),
            False,
            None,
        )
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": rng.randint(1, 8), "temperature": 0}
    return "valid", "POST", "/v1/completions", json.dumps(body).encode(), False, None


def acceptable(status, headers, body):
    """None when the answer is one of the allowed kinds, else why not."""
    if 200 <= status < 300:
        return None
    if status in (429, 503):
        return None if headers.get("retry-after") else f"{status} without Retry-After"
    if 400 <= status < 500:
        try:
            err = json.loads(body)["error"]
            return (
                None if isinstance(err.get("message"), str) and "type" in err else f"{status} envelope: {body[:200]!r}"
            )
        except (ValueError, KeyError, TypeError):
            return f"{status} without OpenAI's envelope: {body[:200]!r}"
    return f"status {status}: {body[:200]!r}"


async def trickle(url, path, body):
    """A client that sends its request head one byte every 20 ms, then the body."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    head += "connection: close\r\n\r\n"
    try:
        for b in head.encode()[:80]:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(head.encode()[80:] + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        payload = b"".join(payload.split(b"\r\n")[1::2])
    return status, headers, payload


async def one(client, url, req, tally, problems):
    kind, method, path, body, stream, drop = req
    try:
        if kind == "trickle":
            status, hdrs, payload = await trickle(url, path, body)
        elif stream:
            async with client.stream(method, url + path, content=body) as r:
                status, hdrs, chunks = r.status_code, r.headers, []
                async for chunk in r.aiter_text():
                    chunks.append(chunk)
                    if drop is not None and len(chunks) > drop:
                        break  # the client goes away mid-stream
                payload = "".join(chunks).encode()
            if status == 200 and drop is None and b"data: [DONE]" not in payload:
                problems.append(f"{kind}: a stream ended without [DONE]: {payload[-200:]!r}")
        else:
            r = await client.request(method, url + path, content=body)
            status, hdrs, payload = r.status_code, r.headers, r.content
    except (TimeoutError, httpx.HTTPError, OSError) as e:
        problems.append(f"{kind}: transport error {type(e).__name__}: {e}")
        tally[(kind, "error")] += 1
        return
    tally[(kind, status)] += 1
    why = acceptable(status, hdrs, payload)
    if why:
        problems.append(f"{kind}: {why}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def gauges(url):
    text = get(url + "/metrics")[1].decode()
    return {g: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() for g in GAUGES if line.startswith(g + "{")}


async def drive(url, requests, seconds, concurrency, seed, tally, problems, on_progress=None):
    rng = random.Random(seed)
    deadline = time.time() + seconds
    queue = iter(range(requests))
    trickles = asyncio.Semaphore(4)  # slow clients are few at once, as in life
    slow = []

    async def trickle_one(client, req):
        async with trickles:
            await one(client, url, req, tally, problems)

    async def worker(client):
        for i in queue:
            if time.time() > deadline:
                return
            req = request(rng)
            if req[0] == "trickle":
                # A slow client holds a connection, not a worker: the others keep the load up.
                slow.append(asyncio.create_task(trickle_one(client, req)))
            else:
                await one(client, url, req, tally, problems)
            if on_progress:
                on_progress(i)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        await asyncio.gather(*slow)


def soak(requests, seconds, concurrency=16, seed=1, profile="debug", warmup=None):
    """Runs the soak; returns its report (a dict) and the list of problems found (empty: passed).
    The warm-up (2% of the requests, at least 500) lets allocators and caches settle before memory is
    first read; a leak grows with the requests whatever it is. Memory is read again halfway, so the
    report tells a plateau from growth."""
    warmup = warmup or max(500, requests // 50)
    tally, problems = collections.Counter(), []
    with ExitStack() as stack:
        replicas = [stack.enter_context(procs.server(f"soak-{i}", profile=profile)) for i in range(2)]
        router = stack.enter_context(procs.router("soak-router", [(MODEL, r.url) for r in replicas], profile=profile))
        everyone = [*replicas, router]
        asyncio.run(drive(router.url, warmup, seconds, concurrency, seed + 1, collections.Counter(), []))
        rss_warm = [rss_kib(p.process.pid) for p in everyone]
        rss_half = {}

        def halfway(i):
            if i == requests // 2 and not rss_half:
                rss_half.update({p.name: rss_kib(p.process.pid) for p in everyone if p.process.poll() is None})

        started = time.time()
        asyncio.run(drive(router.url, requests, seconds, concurrency, seed, tally, problems, halfway))
        elapsed = time.time() - started
        time.sleep(1.0)  # dropped streams are aborted at the next engine step
        for p in everyone:
            if p.process.poll() is not None:
                problems.append(f"{p.name} exited with {p.process.returncode}: {p.log_text()[-1000:]}")
        rss_end = [rss_kib(p.process.pid) for p in everyone if p.process.poll() is None]
        for r in replicas:
            for g, v in gauges(r.url).items():
                if v != 0:
                    problems.append(f"{r.name}: {g} is {v} after the soak")
        for p, warm, end in zip(everyone, rss_warm, rss_end, strict=False):
            if end > 1.5 * warm:
                problems.append(f"{p.name}: resident memory grew from {warm} KiB to {end} KiB")
        status, answer = post_json(
            router.url + "/v1/completions",
            {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 60, "temperature": 0},
        )
        text_out = json.loads(answer)["choices"][0]["text"] if status == 200 else answer
        if not reference("once_upon_a_time.txt").startswith("Once upon a time" + text_out):
            problems.append(f"the greedy completion after the soak differs from llama2.c's: {text_out!r}")
    done = sum(tally.values())
    report = {
        "requests": done,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(done / elapsed, 1),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(tally.items(), key=str)},
        "warmup_requests": warmup,
        "rss_kib_after_warmup": dict(zip([p.name for p in everyone], rss_warm, strict=True)),
        "rss_kib_halfway": rss_half,
        "rss_kib_at_end": dict(zip([p.name for p in everyone], rss_end, strict=False)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "profile": profile,
    }
    return report, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    args = ap.parse_args()
    report, problems = soak(args.requests, args.seconds, args.concurrency, args.seed, args.profile)
    print(json.dumps(report, indent=2))
    for p in problems[:50]:
        print("PROBLEM:", p)
    print(f"{len(problems)} problems")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
