#!/usr/bin/env bash
# The README's main job, with no cluster and no GPU at hand.
#
# As root (the default on these machines): assembles a single-node Kubernetes here
# (e2e/cluster/cluster.sh: kubelet, containerd, kube-proxy, Prometheus Operator, prometheus-adapter,
# the llmserve chart), applies the example LlmApplication (stories260k, autoscaling 1..2), waits
# until it is Ready and prints the OpenAI URL and the Prometheus URL. The cluster stays up;
# `bash e2e/cluster/cluster.sh down` removes it.
#
# `bash e2e/local.sh --process` (or not root): builds llmserve-server and serves stories260k on
# localhost with OpenAI routes and /metrics, in the foreground. LLMSERVE_MODEL, LLMSERVE_PORT and
# every other server flag's variable override the defaults there.
set -euo pipefail
LOG_TAG=local
source "$(dirname "${BASH_SOURCE[0]}")/../tests/harness/lib.sh"

if [[ "${1:-}" != --process && $EUID -eq 0 ]]; then
  bash "$ROOT/e2e/cluster/cluster.sh" up
  # shellcheck source=/dev/null  # written by `cluster.sh up` just now: nothing to follow here
  source "$LLMSERVE_CLUSTER_DIR/env"
  "$K" apply -f "$ROOT/e2e/cluster/example-app.yaml"
  log "waiting for the LlmApplication to be Ready"
  "$K" wait --for=condition=Ready llmapp/demo --timeout=300s >/dev/null
  "$K" get llmapp demo
  router="http://$("$K" get service demo-router -o jsonpath='{.spec.clusterIP}'):8000"
  cat <<MSG

The cluster is up with the example app (llmserve.dev/v1alpha1 LlmApplication "demo", stories260k).
  OpenAI URL:      $router/v1
  Prometheus URL:  $PROMETHEUS_URL
Try:
  curl -s $router/v1/completions -H 'content-type: application/json' \\
    -d '{"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}'
  curl -s '$PROMETHEUS_URL/api/v1/query?query=vllm:num_requests_running'
  source $LLMSERVE_CLUSTER_DIR/env && \$K get llmapp,deploy,pods,hpa,servicemonitors
Tear down: bash e2e/cluster/cluster.sh down
MSG
  exit 0
fi
[[ "${1:-}" == --process ]] && shift
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
(cd "$ROOT" && cargo build --release --locked -p llmserve-server --bin llmserve-server)
export LLMSERVE_MODEL="${LLMSERVE_MODEL:-$LLMSERVE_TEST_MODEL}"
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
