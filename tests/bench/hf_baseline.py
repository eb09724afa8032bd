"""Hugging Face transformers on CPU, generating from stories260k with the prompts of
bench/server.py: the baseline the server's figures are compared with. Run as a script by the Python
of a virtual environment holding torch and transformers (`python -m bench.server --hf-python PY`
does); it imports nothing of the repository. Prints one JSON line per batch size:

    ~/.cache/llmserve/venv-hf/bin/python tests/bench/hf_baseline.py tests/fixtures/stories260k SECONDS MAX_TOKENS

For each batch size B in 1, 8, 32: B prompts (the same five, cycled) are generated together with
`generate` (left padding, sampling at temperature 0.8, exactly MAX_TOKENS new tokens), repeated
for SECONDS; output tok/s = tokens / wall time. TTFT is the time of a one-token `generate` of the
same batch; TPOT is (full time - TTFT) / (MAX_TOKENS - 1)."""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, seconds, max_tokens = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
PROMPTS = ["Once upon a time", "The cat", "Tom and Lily went", "Zoo", "One day, a little bird"]

tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.unk_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
torch.manual_seed(0)


def gen(batch, n):
    enc = tok([PROMPTS[i % len(PROMPTS)] for i in range(batch)], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=True,
            temperature=0.8,
            top_p=1.0,
            top_k=0,
            pad_token_id=tok.pad_token_id,
        )
    return out.shape[1] - enc["input_ids"].shape[1]


gen(4, 4)  # warm-up
for batch in (1, 8, 32):
    ttfts, tpots, tokens = [], [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        gen(batch, 1)
        t1 = time.perf_counter()
        made = gen(batch, max_tokens)
        t2 = time.perf_counter()
        ttfts.append(t1 - t0)
        tpots.append((t2 - t1 - (t1 - t0)) / max(1, made - 1))
        tokens += batch * made
    elapsed = time.perf_counter() - start
    # The one-token runs are part of the wall time but produced tokens too.
    tokens += batch * len(ttfts)
    ttfts.sort()
    tpots.sort()
    print(
        json.dumps(
            {
                "batch": batch,
                "tok_s": tokens / elapsed,
                "ttft_p50": ttfts[len(ttfts) // 2],
                "ttft_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
                "tpot_p50": tpots[len(tpots) // 2],
                "tpot_p99": tpots[min(len(tpots) - 1, int(0.99 * len(tpots)))],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
