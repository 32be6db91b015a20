#!/usr/bin/env bash
# FSDP2 on ONE H100/H200-class GPU, under 10 minutes: full continued pretraining of a ~1B Llama-shaped
# model (TinyLlama-1.1B's shape, random init, blocks of 2,048 tokens, bf16 mixed precision), peak memory
# per process and tokens/s of three `lmadapt pretrain` runs, each beside the planner's prediction:
#   unsharded             the whole GPU
#   unsharded_capped      the GPU capped at CAP_GIB (default 16; the unsharded run peaked at 21 GiB on an H200): out of memory where the planner says it cannot fit
#   fsdp_offload_capped   train.sharding=fsdp train.fsdp.cpu_offload=true under the same cap: fits
#
#   bash benchmarks/fsdp_gpu.sh                    # GPU: writes benchmarks/results/fsdp_gpu_<gpu>.{json,log}
#   SIZE=tiny bash benchmarks/fsdp_gpu.sh          # CPU rehearsal of the same code path (tiny model, ~2 min)
#
# Extra arguments go to benchmarks/fsdp_gpu.py (--steps, --batch, --cap-gib, --checkpointing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SIZE=${SIZE:-1b}
if [ "$SIZE" = tiny ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  TAG=cpu_rehearsal
else
  TAG=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else 'cpu')")
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"
"$PY" benchmarks/fsdp_gpu.py --size "$SIZE" --cap-gib "${CAP_GIB:-16}" --out "$OUT/fsdp_gpu_$TAG.json" "$@" 2>&1 \
  | grep -v -E "Warning|warn\(|Writing model shards" | tee "$OUT/fsdp_gpu_$TAG.log"
