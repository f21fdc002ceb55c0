#!/usr/bin/env bash
# Create .venv and install recsys with its test tools.
# torch is installed first as the CPU build (2.13.0), so that pip does not pull a multi-GB CUDA build;
# on a machine with a GPU, install the torch build you want first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # PyPI's default Linux wheel is the CUDA build; PyTorch's CPU index has the CPU one. Where that index
  # cannot be reached, fall back to whatever pip resolves (a local wheel folder, or PyPI's default).
  .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    --retries 0 --timeout 15 \
    || .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import torch, recsys; print("torch", torch.__version__)')"
