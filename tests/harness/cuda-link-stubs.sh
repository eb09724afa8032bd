#!/usr/bin/env bash
# Link-only stand-ins for the CUDA libraries cudarc links against (driver, cuBLAS, cuBLASLt, cuRAND,
# NVRTC), so the `cuda` build can be linked on a machine without a driver or those libraries. Each
# stub defines every function cudarc declares, under the soname the real CUDA 13 library has; the
# binary then starts only where the real libraries are installed (a GPU machine), and loads them by
# soname. With CUDA_HOME set (tests/harness/cuda-toolchain.sh), the stubs are also placed in
# $CUDA_HOME/lib, where cudarc's build script already points the linker. Prints the stub directory.
set -euo pipefail
LOG_TAG=cuda
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT="$LLMSERVE_CACHE/cuda-link-stubs"
CUDARC="$(printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)"
[[ -d "$CUDARC" ]] || die "cudarc sources not found; run cargo fetch first"
mkdir -p "$OUT"
# name:soname:cudarc module
for spec in cuda:libcuda.so.1:driver cublas:libcublas.so.13:cublas cublasLt:libcublasLt.so.13:cublaslt \
            curand:libcurand.so.10:curand nvrtc:libnvrtc.so.13:nvrtc; do
  IFS=: read -r name soname module <<<"$spec"
  [[ -f "$OUT/lib$name.so" ]] && continue
  grep -oE '^pub unsafe fn [A-Za-z_0-9]+\(' "$CUDARC/src/$module/sys/mod.rs" \
    | sed -E 's/^pub unsafe fn ([A-Za-z_0-9]+)\(/void \1(void) {}/' | sort -u > "$OUT/$name.c"
  cc -shared -fPIC -Wl,-soname,"$soname" -o "$OUT/lib$name.so" "$OUT/$name.c"
done
if [[ -n "${CUDA_HOME:-}" && -d "$CUDA_HOME/lib" ]]; then
  cp -f "$OUT"/lib*.so "$CUDA_HOME/lib/"
fi
echo "$OUT"
