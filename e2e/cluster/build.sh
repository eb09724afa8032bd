#!/usr/bin/env bash
# Builds the components of the end-to-end cluster from the Go module proxy, at pinned versions:
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy at the control plane's Kubernetes
# version; containerd 2.x (Debian's 1.6 is too old for this kubelet); prometheus-operator and its
# prometheus-config-reloader; prometheus-adapter; Prometheus. Cached outside the repo; prints the bin directory.
set -euo pipefail
LOG_TAG=cluster
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/harness/lib.sh"
K8S_VERSION="${K8S_VERSION:-1.35.4}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.1.4}"
PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.85.0}"
ADAPTER_VERSION="${ADAPTER_VERSION:-v0.12.0}"
# Prometheus v3.5.0 (its Go module numbers releases v0.<minor><patch>). Debian's 2.42 is built
# without Kubernetes service discovery, which every ServiceMonitor needs.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.5.0}"
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.305.0}"
CACHE="$LLMSERVE_CACHE"
CP_BIN="$(bash "$ROOT/tests/harness/build-control-plane.sh" | tail -1)"
SRC="$(dirname "$CP_BIN")/src"
BIN="$CACHE/cluster-v$K8S_VERSION/bin"
mkdir -p "$BIN"

if [[ ! -x "$BIN/kubelet" || ! -x "$BIN/kube-scheduler" || ! -x "$BIN/kube-controller-manager" || ! -x "$BIN/kube-proxy" ]]; then
  log "building kube-controller-manager, kube-scheduler, kubelet and kube-proxy v$K8S_VERSION (one-off, many minutes)"
  cd "$SRC"
  major="${K8S_VERSION%%.*}"; rest="${K8S_VERSION#*.}"; minor_n="${rest%%.*}"
  ver="-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor_n"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ver" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy >&2
fi

if [[ ! -x "$BIN/containerd" ]]; then
  log "building containerd $CONTAINERD_VERSION"
  d="$CACHE/cluster-v$K8S_VERSION/containerd-src"
  mkdir -p "$d" && cd "$d"
  [[ -f go.mod ]] || { printf 'module llmserve.dev/containerd\n\ngo 1.24\n' > go.mod; }
  GOFLAGS=-mod=mod go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" >&2
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" -o "$BIN/" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr >&2
fi
# A module built as its own main module (its go.mod, go.sum and replace directives as released).
build_module() {  # MODULE VERSION TAGS LDFLAGS PKG...
  local module="$1" version="$2" tags="$3" ldflags="$4"; shift 4
  local src; src="$CACHE/cluster-v$K8S_VERSION/src-$(basename "$module")-$version"
  if [[ ! -f "$src/go.mod" ]]; then
    local dir
    dir="$(cd "$CACHE" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$src.tmp" && cp -r "$dir" "$src.tmp" && chmod -R u+w "$src.tmp"
    # Nested modules are not in a module's zip: their replace-to-a-subfolder gives way to the
    # same version as published on the proxy.
    (cd "$src.tmp" && for m in $(go mod edit -json | python3 -c 'import json,sys; print(" ".join(r["Old"]["Path"] for r in json.load(sys.stdin).get("Replace") or [] if r["New"]["Path"].startswith("./")))'); do
      go mod edit -dropreplace "$m"; done)
    mv "$src.tmp" "$src"
  fi
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$BIN/" "$@" >&2)
}

if [[ ! -x "$BIN/prometheus-operator" || ! -x "$BIN/prometheus-config-reloader" ]]; then
  log "building prometheus-operator and prometheus-config-reloader $PROM_OPERATOR_VERSION"
  build_module github.com/prometheus-operator/prometheus-operator "$PROM_OPERATOR_VERSION" "" "" ./cmd/operator ./cmd/prometheus-config-reloader
  mv "$BIN/operator" "$BIN/prometheus-operator"
fi

if [[ ! -x "$BIN/prometheus-adapter" ]]; then
  log "building prometheus-adapter $ADAPTER_VERSION"
  build_module sigs.k8s.io/prometheus-adapter "$ADAPTER_VERSION" "" "" ./cmd/adapter
  mv "$BIN/adapter" "$BIN/prometheus-adapter"
fi
if [[ ! -x "$BIN/prometheus" ]]; then
  log "building prometheus $PROMETHEUS_VERSION (Kubernetes service discovery only)"
  build_module github.com/prometheus/prometheus "$PROMETHEUS_MODULE_VERSION" remove_all_sd,enable_kubernetes_sd \
    "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" ./cmd/prometheus
fi
echo "$BIN"
