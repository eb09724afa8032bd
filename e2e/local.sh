#!/usr/bin/env bash
# The README's main job, with no cluster and no GPU at hand: builds llmserve-server and serves the
# embedded default model (stories260k) on localhost with OpenAI routes and /metrics.
# LLMSERVE_MODEL, LLMSERVE_PORT and every other server flag's variable override the defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LLMSERVE_CACHE="${LLMSERVE_CACHE:-$HOME/.cache/llmserve}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLMSERVE_CACHE/target}"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked -p llmserve-server --bin llmserve-server)
export LLMSERVE_MODEL="${LLMSERVE_MODEL:-$ROOT/../shared/models/stories260k}"
export LLMSERVE_PORT="${LLMSERVE_PORT:-8000}"
export LLMSERVE_LOG_FORMAT="${LLMSERVE_LOG_FORMAT:-text}"
cat <<MSG
Serving $LLMSERVE_MODEL on http://127.0.0.1:$LLMSERVE_PORT (Ctrl-C to stop). Try:
  curl -s localhost:$LLMSERVE_PORT/v1/models
  curl -s localhost:$LLMSERVE_PORT/v1/completions -H 'content-type: application/json' \\
    -d '{"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}'
  curl -sN localhost:$LLMSERVE_PORT/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "stories260k", "messages": [{"role": "user", "content": "The cat"}], "stream": true}'
  curl -s localhost:$LLMSERVE_PORT/metrics | grep ^vllm:
MSG
exec "$CARGO_TARGET_DIR/release/llmserve-server" "$@"
