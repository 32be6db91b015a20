#!/usr/bin/env bash
# Create .venv and install lmadapt into it. torch is pinned and installed FIRST: an unpinned
# torch (or one pulled in as a dependency) would download a multi-GB CUDA build on a CPU box.
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${LMADAPT_TORCH_VERSION:-2.13.0}"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import torch, transformers, lmadapt; print(f'lmadapt {lmadapt.__version__} | torch {torch.__version__} | transformers {transformers.__version__}')"
