"""Server benchmark: concurrent streaming clients against llmserve-server on stories260k (CPU).

Reports output tokens/s, TTFT and TPOT p50/p99 at concurrency 1, 8 and 32, with engine metrics on
and off (their ratio is the cost of metrics), all in one run on one machine; with --hf-python,
also Hugging Face transformers on CPU generating from the same model and prompts (e2e/hf_baseline.py,
batch sizes 1, 8, 32), the baseline.

    ~/.cache/llmserve/venv/bin/python e2e/bench-server.py [--seconds 10] [--hf-python ~/.cache/llmserve/venv-hf/bin/python]
"""

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
MODEL = (ROOT.parent / "shared" / "models" / "stories260k").resolve()
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/llmserve/target"))
PROMPTS = ["Once upon a time", "The cat", "Tom and Lily went", "Zoo", "One day, a little bird"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(extra):
    port = free_port()
    proc = subprocess.Popen(
        [str(TARGET / "release/llmserve-server"), "--model", str(MODEL), "--port", str(port), "--max-num-seqs", "64", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


async def client_loop(client, deadline, max_tokens, out, i):
    n = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        first, stamps = None, []
        stream = await client.completions.create(
            model="stories260k", prompt=PROMPTS[(i + n) % len(PROMPTS)], max_tokens=max_tokens,
            temperature=0.8, seed=i * 1000 + n, stream=True, extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text is not None:
                stamps.append(now)
                first = first or now
        n += 1
        if len(stamps) > 1:
            out["ttft"].append(first - t0)
            out["tpot"].append((stamps[-1] - first) / (len(stamps) - 1))
            out["tokens"] += len(stamps)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def level(url, concurrency, seconds, max_tokens):
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    out = {"ttft": [], "tpot": [], "tokens": 0}
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(client_loop(client, deadline, max_tokens, out, i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    return out["tokens"] / elapsed, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-python", help="Python with torch and transformers: also run the transformers baseline")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; {args.seconds:.0f} s per row, {args.max_tokens} tokens per request\n")
    print("| engine metrics | concurrency | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {}
    for label, extra in [("on", []), ("off", ["--disable-engine-metrics"])]:
        proc, url = start(extra)
        try:
            asyncio.run(level(url, 4, 2, 8))  # warm-up
            for c in (1, 8, 32):
                tps, out = asyncio.run(level(url, c, args.seconds, args.max_tokens))
                results[(label, c)] = tps
                print(f"| {label} | {c} | {tps:.0f} | {pct(out['ttft'], 50)*1e3:.1f} | {pct(out['ttft'], 99)*1e3:.1f} | {pct(out['tpot'], 50)*1e3:.2f} | {pct(out['tpot'], 99)*1e3:.2f} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print()
    for c in (1, 8, 32):
        print(f"concurrency {c}: throughput with metrics off / on = {results[('off', c)] / results[('on', c)]:.3f}")
    if args.hf_python:
        print("\nHugging Face transformers, CPU, same model and prompts (batched generate):\n")
        print("| batch | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) | llmserve on / transformers |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        out = subprocess.run([args.hf_python, str(ROOT / "e2e/hf_baseline.py"), str(MODEL), str(args.seconds), str(args.max_tokens)],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            r = __import__("json").loads(line)
            ratio = results[("on", r["batch"])] / r["tok_s"]
            print(f"| {r['batch']} | {r['tok_s']:.0f} | {r['ttft_p50']*1e3:.1f} | {r['ttft_p99']*1e3:.1f} | {r['tpot_p50']*1e3:.2f} | {r['tpot_p99']*1e3:.2f} | {ratio:.1f}x |", flush=True)
        print(f"\n(torch {r['torch']}, {r['threads']} threads)")


if __name__ == "__main__":
    main()
