#!/usr/bin/env bash
# Proves the device tier on a machine with a CUDA GPU (never run by CI or tests):
# builds with HYPERRAG_CUDA=ON, runs the C++ tests (the CUDA backend's fake-runtime
# tests and the real device queries), installs the module into .venv-gpu and runs
# scripts/gpu_check.py (device pool, engine bandwidth vs cudaMemcpyAsync, a model's
# reuse on the GPU), which prints the summary table. Exits non-zero on any failure.
# Sized for under 8 minutes on one H200. CUDA_ARCH (default 90) picks the GPU arch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
ARCH="${CUDA_ARCH:-90}"
JOBS="${JOBS:-$(nproc)}"
start=$SECONDS
section() { printf '\n======== %s (%ds) ========\n' "$*" "$((SECONDS - start))"; }

section "C++ build with CUDA (build/gpu, sm_$ARCH)"
cmake -S . -B build/gpu -G Ninja -DHYPERRAG_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DHYPERRAG_BUILD_TESTS=ON -DHYPERRAG_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/gpu -j"$JOBS"

section "C++ tests"
ctest --test-dir build/gpu --output-on-failure -j"$JOBS"

section "Python module with CUDA (.venv-gpu)"
[ -x .venv-gpu/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu
CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" .venv-gpu/bin/pip install -q --no-deps --no-build-isolation \
  --config-settings=cmake.define.HYPERRAG_CUDA=ON \
  --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -e .

section "GPU checks"
.venv-gpu/bin/python scripts/gpu_check.py
section "gpu_check passed"
