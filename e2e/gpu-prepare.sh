#!/usr/bin/env bash
# Prepares `.device/` (git-ignored) for `e2e/gpu-check.sh` on a GPU machine, from a machine with no
# GPU: the `cuda` build of llmserve-server (nvcc 13.0 from PyPI, linked against stand-in CUDA
# libraries) and a CPU build of make-random-model (stories260k travels with the repo, in
# tests/fixtures). Then, with the device tool:
#   run(command="bash e2e/gpu-check.sh", carry=[".device"])
set -euo pipefail
LOG_TAG=gpu-prepare
source "$(dirname "${BASH_SOURCE[0]}")/../tests/harness/lib.sh"
cd "$ROOT"
(
  eval "$(bash tests/harness/cuda-toolchain.sh)"
  bash tests/harness/cuda-link-stubs.sh >/dev/null
  CARGO_TARGET_DIR="$LLMSERVE_CACHE/target-cuda" cargo build --release --locked -p llmserve-server --features cuda
)
cargo build --release --locked -p llmserve-engine --bin make-random-model
mkdir -p .device/bin
strip -o .device/bin/llmserve-server "$LLMSERVE_CACHE/target-cuda/release/llmserve-server"
strip -o .device/bin/make-random-model "$CARGO_TARGET_DIR/release/make-random-model"
rm -rf .device/stories260k  # a copy earlier versions made; the model is now read from tests/fixtures
du -sh .device
