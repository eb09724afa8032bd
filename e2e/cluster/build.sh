#!/usr/bin/env bash
# Builds the node and controller components of the end-to-end cluster from the Go module proxy
# at the control plane's pinned Kubernetes version: kube-controller-manager, kube-scheduler,
# kubelet; and containerd 2.x (Debian's 1.6 is too old for this kubelet). Cached outside the repo;
# prints the bin directory. (Work in progress: see the README's "Cluster end to end".)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="${K8S_VERSION:-1.35.4}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.1.4}"
CACHE="${LLMSERVE_CACHE:-$HOME/.cache/llmserve}"
CP_BIN="$(bash "$HERE/../../tests/harness/build-control-plane.sh" | tail -1)"
SRC="$(dirname "$CP_BIN")/src"
BIN="$CACHE/cluster-v$K8S_VERSION/bin"
mkdir -p "$BIN"
log() { echo "[cluster] $*" >&2; }

if [[ ! -x "$BIN/kubelet" || ! -x "$BIN/kube-scheduler" || ! -x "$BIN/kube-controller-manager" ]]; then
  log "building kube-controller-manager, kube-scheduler and kubelet v$K8S_VERSION (one-off, many minutes)"
  cd "$SRC"
  major="${K8S_VERSION%%.*}"; rest="${K8S_VERSION#*.}"; minor_n="${rest%%.*}"
  ver="-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor_n"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ver" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet >&2
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
echo "$BIN"
