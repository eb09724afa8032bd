#!/usr/bin/env bash
# Prepares `.device/` (git-ignored) for `e2e/gpu-check.sh` on a GPU machine, from a machine with no
# GPU: the `cuda` build of llmserve-server (nvcc 13.0 from PyPI, linked against stand-in CUDA
# libraries), a CPU build of make-random-model, and stories260k. Then, with the device tool:
#   run(command="bash e2e/gpu-check.sh", carry=[".device"])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LLMSERVE_CACHE="${LLMSERVE_CACHE:-$HOME/.cache/llmserve}"
cd "$ROOT"
(
  eval "$(bash tests/harness/cuda-toolchain.sh)"
  bash tests/harness/cuda-link-stubs.sh >/dev/null
  CARGO_TARGET_DIR="$LLMSERVE_CACHE/target-cuda" cargo build --release --locked -p llmserve-server --features cuda
)
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLMSERVE_CACHE/target}" cargo build --release --locked -p llmserve-engine --bin make-random-model
mkdir -p .device/bin
strip -o .device/bin/llmserve-server "$LLMSERVE_CACHE/target-cuda/release/llmserve-server"
strip -o .device/bin/make-random-model "${CARGO_TARGET_DIR:-$LLMSERVE_CACHE/target}/release/make-random-model"
rm -rf .device/stories260k && cp -r ../shared/models/stories260k .device/ && chmod -R u+w .device/stories260k
du -sh .device
