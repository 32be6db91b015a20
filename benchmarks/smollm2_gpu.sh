#!/usr/bin/env bash
# SmolLM2-135M pipeline IN FULL on one GPU: LoRA continued pretraining on 20M computing tokens (5%
# general replay), then FOLDOC classification with LoRA on all 3,330 labels, 5 epochs, 3 seeds;
# compared with fine-tuning SmolLM2 directly (benchmarks/recipes/smollm2_pipeline.yaml).
#
#   bash benchmarks/smollm2_gpu.sh [GGUF] [DATA] [key=value ...]   # RUN_DIR=<folder> for the results
#
# Further key=value overrides follow the full-run ones and win over them. JOBS=N (default 4) runs
# up to N independent stages at once (`lmadapt run --jobs`): the three ft_only fine-tunes beside
# continued pretraining, then the three dapt_ft fine-tunes together; a 135M model fills a small
# part of an H100, so they share it. A CPU rehearsal of this very script (GGUF parts joined,
# converted, both arms, report), on a DATA copy whose FOLDOC dev and test keep their first 60 rows,
# is recorded in benchmarks/results/smollm2_gpu_rehearsal.md.
#
# On the lent device machine (no network, at most 64 MiB carried per call), the 98 MB GGUF travels
# in two parts over consecutive calls while the machine stays warm (it keeps ignored files); the
# calls are in benchmarks/smollm2_device.sh, with the wheels the image lacks in .whl (see there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GGUF=${1:-}
DATA=${2:-../shared/data}
shift $(( $# < 2 ? $# : 2 ))
RUN_DIR=${RUN_DIR:-runs/smollm2_gpu}
MODEL=${MODEL_DIR:-/tmp/smollm2}
if [ -z "$GGUF" ] && ls .gguf_parts/part_* >/dev/null 2>&1; then
  cat .gguf_parts/part_* > /tmp/smollm2.gguf && GGUF=/tmp/smollm2.gguf
fi
[ -f "$MODEL/config.json" ] || "$PY" -m lmadapt.cli convert "${GGUF:-smollm2}" --output "$MODEL"
"$PY" -m lmadapt.cli run --jobs "${JOBS:-4}" benchmarks/recipes/smollm2_pipeline.yaml \
  output_dir="$RUN_DIR" vars.model="$MODEL" vars.data="$DATA" \
  vars.dapt_tokens=20000000 vars.ft_max_examples=null vars.ft_epochs=5 vars.batch_size=32 \
  vars.dapt_batch_size=8 vars.dapt_grad_accum=4 \
  vars.block_size=1024 vars.eval_tokens=65536 "seeds=[0,1,2]" "$@"
