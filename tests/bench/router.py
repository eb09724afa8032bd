"""Router overhead: the same requests to llmserve-server directly and through llmserve-router, in
one run on one machine, interleaved so both paths see the same conditions.

Per request: non-streaming completions of one token, one at a time (the backend's own time is
small, so the router's share shows). Per stream chunk: streaming completions of 64 tokens, the
gap between consecutive chunks as the client sees it, at concurrency 1 and 8.

From the repository root:

    cargo build --release -p llmserve-server -p llmserve-router
    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.router [--requests 2000]
"""

import argparse
import asyncio
import os
import platform
import time

import httpx

from bench.server import start
from llmserve_testing import procs
from llmserve_testing.stats import ms
from llmserve_testing.stats import percentile as pct


def start_router(backend):
    """The release router in front of `backend`, serving stories260k, healthy."""
    return procs.router("bench-router", [("stories260k", backend)], profile="release", rust_log=None)


def per_request(urls, n):
    lat = {k: [] for k in urls}
    body = {"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            for k, base in urls.items():
                t0 = time.perf_counter()
                r = c.post(f"{base}/v1/completions", json=body)
                lat[k].append(time.perf_counter() - t0)
                r.raise_for_status()
    return lat


async def stream_gaps(base, concurrency, streams_each):
    body = {
        "model": "stories260k",
        "prompt": "Once upon a time",
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    gaps, ttfts = [], []

    async def one(c):
        for _ in range(streams_each):
            t0 = time.perf_counter()
            last = None
            async with c.stream("POST", f"{base}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttfts.append(now - t0)
                    else:
                        gaps.append(now - last)
                    last = now

    async with httpx.AsyncClient(timeout=60) as c:
        await asyncio.gather(*(one(c) for _ in range(concurrency)))
    return gaps, ttfts


def row(label, xs):
    return f"{pct(xs, 50) * 1e3:.3f} | {pct(xs, 99) * 1e3:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=40)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}\n")
    with start("bench-server") as server, start_router(server.url) as router:
        urls = {"direct": server.url, "router": router.url}
        per_request(urls, 50)  # warm-up
        lat = per_request(urls, args.requests)
        print(f"Per request ({args.requests} sequential one-token completions per path, interleaved):\n")
        print("| path | p50 (ms) | p99 (ms) |")
        print("|---|---:|---:|")
        for k in urls:
            print(f"| {k} | {row(k, lat[k])} |")
        added = {p: ms(pct(lat["router"], p) - pct(lat["direct"], p), 3) for p in (50, 99)}
        print(f"\nadded by the router: p50 {added[50]} ms, p99 {added[99]} ms\n")
        print("Per stream chunk (64-token streams; gap between consecutive chunks at the client; TTFT):\n")
        print("| concurrency | path | chunk gap p50 (ms) | chunk gap p99 (ms) | TTFT p50 (ms) | TTFT p99 (ms) |")
        print("|---:|---|---:|---:|---:|---:|")
        for conc in (1, 8):
            res = {}
            for k in ("direct", "router", "direct", "router"):  # twice each, interleaved
                g, t = asyncio.run(stream_gaps(urls[k], conc, max(1, args.streams // conc // 2)))
                res.setdefault(k, ([], []))
                res[k][0].extend(g)
                res[k][1].extend(t)
            for k in ("direct", "router"):
                print(f"| {conc} | {k} | {row(k, res[k][0])} | {row(k, res[k][1])} |")
            d, r = res["direct"], res["router"]
            added = [ms(pct(r[i], p) - pct(d[i], p), 3) for i in (0, 1) for p in (50, 99)]
            print(f"| {conc} | added | {' | '.join(added)} |")


if __name__ == "__main__":
    main()
