"""Router overhead: the same requests to llmserve-server directly and through llmserve-router, in
one run on one machine, interleaved so both paths see the same conditions.

Per request: non-streaming completions of one token, one at a time (the backend's own time is
small, so the router's share shows). Per stream chunk: streaming completions of 64 tokens, the
gap between consecutive chunks as the client sees it, at concurrency 1 and 8.

    cargo build --release -p llmserve-server -p llmserve-router
    ~/.cache/llmserve/venv/bin/python e2e/bench-router.py [--requests 2000]
"""

import argparse
import asyncio
import os
import platform
import subprocess
import time

import httpx

from importlib import util as _util

_spec = _util.spec_from_file_location("bench_server", os.path.join(os.path.dirname(__file__), "bench-server.py"))
bench_server = _util.module_from_spec(_spec)
_spec.loader.exec_module(bench_server)
free_port, pct, TARGET, MODEL = bench_server.free_port, bench_server.pct, bench_server.TARGET, bench_server.MODEL


def start_router(backend):
    port = free_port()
    proc = subprocess.Popen(
        [str(TARGET / "release/llmserve-router"), "--port", str(port), "--backend", f"stories260k={backend}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("router did not start")


def per_request(urls, n):
    lat = {k: [] for k in urls}
    body = {"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 1, "temperature": 0}
    with httpx.Client(timeout=30) as c:
        for i in range(n):
            for k, base in urls.items():
                t0 = time.perf_counter()
                r = c.post(f"{base}/v1/completions", json=body)
                lat[k].append(time.perf_counter() - t0)
                r.raise_for_status()
    return lat


async def stream_gaps(base, concurrency, streams_each):
    body = {"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "stream": True, "ignore_eos": True}
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
    return f"{pct(xs, 50)*1e3:.3f} | {pct(xs, 99)*1e3:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=40)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}\n")
    server, api = bench_server.start([])
    backend = api.removesuffix("/v1")
    router, front = start_router(backend)
    try:
        urls = {"direct": backend, "router": front}
        per_request(urls, 50)  # warm-up
        lat = per_request(urls, args.requests)
        print(f"Per request ({args.requests} sequential one-token completions per path, interleaved):\n")
        print("| path | p50 (ms) | p99 (ms) |")
        print("|---|---:|---:|")
        for k in urls:
            print(f"| {k} | {row(k, lat[k])} |")
        print(f"\nadded by the router: p50 {(pct(lat['router'], 50) - pct(lat['direct'], 50))*1e3:.3f} ms, p99 {(pct(lat['router'], 99) - pct(lat['direct'], 99))*1e3:.3f} ms\n")
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
            print(f"| {conc} | added | {(pct(r[0], 50) - pct(d[0], 50))*1e3:.3f} | {(pct(r[0], 99) - pct(d[0], 99))*1e3:.3f} | {(pct(r[1], 50) - pct(d[1], 50))*1e3:.3f} | {(pct(r[1], 99) - pct(d[1], 99))*1e3:.3f} |")
    finally:
        router.terminate()
        server.terminate()
        router.wait(timeout=30)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
