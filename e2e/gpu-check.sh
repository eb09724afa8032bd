#!/usr/bin/env bash
# One prepared check for a GPU machine (no Rust toolchain, no network there), printing what it
# measured:
#   1. greedy decoding of stories260k on the device equals llama2.c's references (as on CPU);
#   2. a random-weight model of Qwen2.5-0.5B's shapes (made by `make-random-model`, since no hub is
#      reachable): decode throughput at batch 1, 8 and 64, and TTFT.
#
# Prepare here with `bash e2e/gpu-prepare.sh`, then carry `.device` (git-ignored) and run it there:
#   (device) bash e2e/gpu-check.sh
# It also runs on CPU with the CPU build, to check the script itself:
#   DEVICE=cpu PRESET=tiny-qwen2 LLMSERVE_BIN_DIR=$CARGO_TARGET_DIR/release bash e2e/gpu-check.sh
set -euo pipefail
LOG_TAG=gpu-check
source "$(dirname "${BASH_SOURCE[0]}")/../tests/harness/lib.sh"
BIN="${LLMSERVE_BIN_DIR:-$ROOT/.device/bin}"
DEVICE="${DEVICE:-cuda}"
PRESET="${PRESET:-qwen2.5-0.5b}"
STORIES="${STORIES:-$LLMSERVE_TEST_MODEL}"
WORK="$(mktemp -d)"
PORT=18555
SERVER=""
trap '[[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT

# The CUDA build loads cuBLAS, cuRAND and the runtime by soname: the toolkit's, or PyTorch's wheels'.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
  [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done

echo "== machine"
if [[ "$DEVICE" == cuda ]]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; else uname -m; nproc; fi

serve() { # model dir, extra flags...
  local model="$1"; shift
  [[ -n "$SERVER" ]] && { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }
  "$BIN/llmserve-server" --model "$model" --served-model-name m --port "$PORT" --device "$DEVICE" --log-format text "$@" 2> "$WORK/server.log" &
  SERVER=$!
  wait_until --every 0.2 --alive "$SERVER" --log "$WORK/server.log" 120 "the server to become healthy" \
    curl -fs "localhost:$PORT/health"
}

echo "== 1. greedy stories260k on $DEVICE vs llama2.c references"
serve "$STORIES" --dtype float32
python3 - "$PORT" "$STORIES" <<'PY'
import json, sys, urllib.request
port, model = sys.argv[1], sys.argv[2]
cases = {"once_upon_a_time.txt": "Once upon a time", "the_cat.txt": "The cat", "tom_and_lily_went.txt": "Tom and Lily went", "zoo.txt": "Zoo"}
bad = 0
for f, prompt in cases.items():
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 400, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"content-type": "application/json"})
    out = json.load(urllib.request.urlopen(req))["choices"][0]["text"]
    ref = open(f"{model}/reference/{f}").read().rstrip()
    # run.c stops at 256 positions; we may go on past them, but must reproduce all of the reference.
    ok = (prompt + out).rstrip() == ref or (prompt + out).startswith(ref)
    bad += not ok
    print(f"{f}: {'match' if ok else 'MISMATCH'} ({len(out)} chars)")
print("greedy:", "all match" if bad == 0 else f"{bad} mismatches")
sys.exit(1 if bad else 0)
PY

echo "== 2. random $PRESET on $DEVICE: decode throughput and TTFT"
"$BIN/make-random-model" --preset "$PRESET" --out "$WORK/model" --tokenizer "$STORIES/tokenizer.json"
serve "$WORK/model" --max-num-seqs 64 --max-model-len 1024 --kv-cache-bytes $((4 << 30))
python3 - "$PORT" <<'PY'
import json, statistics, sys, threading, time, urllib.request
port = sys.argv[1]
def one(results, i, max_tokens=128):
    body = json.dumps({"model": "m", "prompt": [1] + [(i * 7 + k) % 500 + 3 for k in range(31)], "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"content-type": "application/json"})
    t0 = time.perf_counter(); first = None; n = 0
    with urllib.request.urlopen(req) as r:
        for line in r:
            if line.startswith(b"data: {"):
                n += 1; first = first or time.perf_counter()
    results.append((first - t0, n, time.perf_counter() - t0))
print("| batch | decode tok/s (all streams) | TTFT p50 (ms) | TTFT max (ms) |")
print("|---:|---:|---:|---:|")
for batch in (1, 8, 64):
    one([], 0, 8)  # warm-up
    results = []
    threads = [threading.Thread(target=one, args=(results, i)) for i in range(batch)]
    t0 = time.perf_counter(); [t.start() for t in threads]; [t.join() for t in threads]; wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results); tokens = sum(r[1] for r in results)
    print(f"| {batch} | {tokens / wall:.0f} | {statistics.median(ttft) * 1e3:.1f} | {ttft[-1] * 1e3:.1f} |")
PY
echo "== done"
