#!/usr/bin/env bash
# The operator demo, with no cluster and no GPU at hand: a real local control plane (etcd +
# kube-apiserver from the test harness), the CRD, the operator, and Ray's example LlmApplication.
# Prints what the operator made and how to look around; Ctrl-C tears it all down.
set -euo pipefail
LOG_TAG=operator-demo
source "$(dirname "${BASH_SOURCE[0]}")/../tests/harness/lib.sh"
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null || apt_install "$tool"
done

BIN="$(bash "$ROOT/tests/harness/control-plane.sh" bin)"
(cd "$ROOT" && cargo build --release --locked -p llmserve-operator --bin llmserve-operator)
STATE="$(mktemp -d -t llmserve-local-XXXX)"
exec 3< <(bash "$ROOT/tests/harness/control-plane.sh" up "$STATE/cp" $$)
read -r ready kubeconfig <&3
[[ "$ready" == ready ]] || die "control plane failed to start"
export KUBECONFIG="$kubeconfig"
K="$BIN/kubectl"

"$K" apply --server-side -f "$ROOT/crds/llmapplications.yaml" >/dev/null
"$K" wait --for condition=established --timeout=60s crd/llmapplications.llmserve.dev >/dev/null
"$K" create namespace llmserve-system >/dev/null
"$CARGO_TARGET_DIR/release/llmserve-operator" --namespace llmserve-system --metrics-addr 127.0.0.1:18080 \
  --log-format text --usage-interval-seconds 5 2> "$STATE/operator.log" &
OP=$!
trap 'kill $OP 2>/dev/null; wait $OP 2>/dev/null' EXIT

"$K" apply --server-side -f "$ROOT/operator/tests/fixtures/ray-example.yaml"
observed() { [[ -n "$("$K" get llmapp ray-example -o jsonpath='{.status.observedGeneration}')" ]]; }
# Shown either way: a slow first reconcile only leaves the status below empty.
(wait_until --every 0.2 20 "the operator to reconcile ray-example" observed) || true
echo
"$K" get llmapp
echo
"$K" get deployments,services,hpa -l app.kubernetes.io/instance=ray-example
echo
"$K" get llmapp ray-example -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
cat <<MSG

A real kube-apiserver is running with the llmserve operator (no nodes, so no pods start).
  export KUBECONFIG=$KUBECONFIG
  $K get llmapp -o yaml                 # status, conditions
  $K explain llmapp.spec.models         # every field, documented
  $K get events                         # what the operator did
  curl -s 127.0.0.1:18080/metrics       # operator metrics and usage data
  operator log: $STATE/operator.log
Ctrl-C stops everything.
MSG
wait $OP
