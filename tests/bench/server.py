"""Server benchmark: concurrent streaming clients against llmserve-server on stories260k (CPU).

Reports output tokens/s, TTFT and TPOT p50/p99 at concurrency 1, 8 and 32, with engine metrics on
and off (their ratio is the cost of metrics), all in one run on one machine; with --hf-python,
also Hugging Face transformers on CPU generating from the same model and prompts
(tests/bench/hf_baseline.py, batch sizes 1, 8, 32), the baseline. From the repository root:

    cargo build --release -p llmserve-server
    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.server [--seconds 10] \
        [--hf-python ~/.cache/llmserve/venv-hf/bin/python]
"""

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import openai

from llmserve_testing import procs
from llmserve_testing.paths import MODEL
from llmserve_testing.stats import ms, table_row
from llmserve_testing.stats import percentile as pct

PROMPTS = ["Once upon a time", "The cat", "Tom and Lily went", "Zoo", "One day, a little bird"]
LATENCY_COLUMNS = ["TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "TPOT p99 (ms)"]
HF_BASELINE = Path(__file__).resolve().parent / "hf_baseline.py"


def start(name, *extra):
    """The release server on stories260k (served as `stories260k`, its directory's name), healthy."""
    return procs.server(name, "--max-num-seqs", "64", *extra, profile="release", rust_log=None)


async def client_loop(client, deadline, max_tokens, out, i):
    n = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        first, stamps = None, []
        stream = await client.completions.create(
            model="stories260k",
            prompt=PROMPTS[(i + n) % len(PROMPTS)],
            max_tokens=max_tokens,
            temperature=0.8,
            seed=i * 1000 + n,
            stream=True,
            extra_body={"ignore_eos": True},
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
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(f"machine: {machine}; {args.seconds:.0f} s per row, {args.max_tokens} tokens per request\n")
    print(table_row("engine metrics", "concurrency", "output tok/s", *LATENCY_COLUMNS))
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {}
    for label, extra in [("on", []), ("off", ["--disable-engine-metrics"])]:
        with start(f"bench-{label}", *extra) as server:
            url = server.url + "/v1"
            asyncio.run(level(url, 4, 2, 8))  # warm-up
            for c in (1, 8, 32):
                tps, out = asyncio.run(level(url, c, args.seconds, args.max_tokens))
                results[(label, c)] = tps
                ttft = [ms(pct(out["ttft"], p), 1) for p in (50, 99)]
                tpot = [ms(pct(out["tpot"], p), 2) for p in (50, 99)]
                print(table_row(label, c, f"{tps:.0f}", *ttft, *tpot), flush=True)
    print()
    for c in (1, 8, 32):
        print(f"concurrency {c}: throughput with metrics off / on = {results[('off', c)] / results[('on', c)]:.3f}")
    if not args.hf_python:
        print("\nskipped: the Hugging Face transformers baseline (pass --hf-python, see docs/benchmarks.md)")
    else:
        print("\nHugging Face transformers, CPU, same model and prompts (batched generate):\n")
        print(table_row("batch", "output tok/s", *LATENCY_COLUMNS, "llmserve on / transformers"))
        print("|---:|---:|---:|---:|---:|---:|---:|")
        argv = [args.hf_python, str(HF_BASELINE), str(MODEL), str(args.seconds), str(args.max_tokens)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            ratio = results[("on", r["batch"])] / r["tok_s"]
            ttft = [ms(r["ttft_p50"], 1), ms(r["ttft_p99"], 1)]
            tpot = [ms(r["tpot_p50"], 2), ms(r["tpot_p99"], 2)]
            print(table_row(r["batch"], f"{r['tok_s']:.0f}", *ttft, *tpot, f"{ratio:.1f}x"), flush=True)
        print(f"\n(torch {r['torch']}, {r['threads']} threads)")


if __name__ == "__main__":
    main()
