#!/usr/bin/env bash
# Installs a CUDA 13.0 toolchain (nvcc and headers) from PyPI into the cache, so the `cuda` feature
# builds on machines without a GPU or a CUDA install. Prints `export` lines to eval.
# 13.0 matches the driver (580) of the H100/H200 machines we target; newer nvcc emits PTX that
# driver may refuse to JIT.
set -euo pipefail
LOG_TAG=cuda
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR="$LLMSERVE_CACHE/cuda-13.0"
if [[ ! -x "$DIR/nvidia/cu13/bin/nvcc" || ! -e "$DIR/nvidia/cu13/include/nv/target" ]]; then
  log "installing nvcc 13.0 from PyPI into $DIR"
  python3 -m pip install -q --no-deps --upgrade --target "$DIR" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 >&2
fi
CU="$DIR/nvidia/cu13"
# The wheel ships only the versioned runtime; `-lcudart` needs the development name too.
[[ -e "$CU/lib/libcudart.so" ]] || ln -sf libcudart.so.13 "$CU/lib/libcudart.so"
# nvcc looks for nvvm and crt beside itself.
[[ -e "$CU/nvvm" ]] || { [[ -d "$DIR/nvidia/cu13/nvvm" ]] || ln -sf "$(find "$DIR" -maxdepth 4 -type d -name nvvm | head -1)" "$CU/nvvm"; }
echo "export CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU PATH=$CU/bin:\$PATH CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
