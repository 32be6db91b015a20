#!/usr/bin/env bash
# Issues 17 and 18's GPU measurements in ONE device call of under 10 minutes (the lease is 15 minutes
# all told, start included): each section under its own timeout, so one that fails or overruns costs
# only its own numbers. Results land in $OUT (the device tool's folder) or benchmarks/results.
#
#   1. FSDP2 (issue 17): benchmarks/fsdp_gpu.py, a ~1B Llama (TinyLlama-1.1B shape), unsharded on the
#      whole GPU, unsharded capped at 16 GiB (it needs 21), FSDP2 + CPU offload under the same cap; planner beside
#      the measured peak.
#   2. Speed (issue 18): benchmarks/gpu_speed.py, Llama-3.2-1B shape then SmolLM2-135M at 2,048 x 8,
#      lmadapt before / after / bare loop: tokens/s, MFU, peak memory.
#   3. The issue's own configuration: SmolLM2 LoRA, 32 x 1,024, before vs after (peak memory).
#
# The device image has torch, triton, accelerate, peft but other versions of the Hugging Face stack and
# no datasets or liger-kernel: the exact versions this repo is tested with travel as wheels in .whl
# (git-ignored), fetched here once with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     liger-kernel==0.8.5 transformers==5.25.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 \
#     accelerate==1.16.0 huggingface_hub==2.4.0 tokenizers==0.23.3 fsspec==2026.9.0 httpx2==2.16.2 \
#     httpcore2==2.16.2 truststore kernels==0.19.1 tomlkit click==8.4.2
# Device call: carry [".whl"], command `bash benchmarks/gpu_all.sh`, timeout_s 600.
# CPU rehearsal of every section (tiny shapes, ~6 min on 2 loaded cores): REHEARSE=1 bash benchmarks/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ls .whl/*.whl >/dev/null 2>&1 && [ -z "${REHEARSE:-}" ]; then
  timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
LOG=$RES/gpu_all.log
# a section killed by its timeout must not leave a launcher or worker holding the GPU for the next one
reap() { pkill -f memory_worker.py; pkill -f torch.distributed.run; pkill -f gpu_speed.py; sleep 1; } 2>/dev/null
say() { echo "== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
say "start"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, transformers, datasets, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'transformers', transformers.__version__, 'datasets', datasets.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)
try:
    import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))
except Exception as e: print('liger-kernel: not available', e)" 2>&1 | tee -a "$LOG"

if [ -n "${REHEARSE:-}" ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  FSDP_ARGS=(--size tiny --steps 3); FSDP_TAG=cpu_rehearsal_all
  BIG=(--models 8m --layers 2 --seq 128 --batch 2 --steps 1 --warmup 1)
  SMALL=(--models smollm2 --layers 2 --seq 128 --batch 2 --steps 1 --warmup 1)
  LORA=(--models smollm2 --layers 2 --lora --seq 128 --batch 2 --steps 1 --warmup 0)
  TF=200; TB=200; TS=200; TL=120
else
  FSDP_ARGS=(--size 1b --steps 6 --cap-gib 16); FSDP_TAG=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
  BIG=(--models llama1b --seq 2048 --batch 8 --steps 8 --warmup 3)
  SMALL=(--models smollm2 --seq 2048 --batch 8 --steps 15 --warmup 3)
  LORA=(--models smollm2 --lora --seq 1024 --batch 32 --steps 4 --warmup 2)
  TF=190; TB=190; TS=110; TL=60
fi

say "1. FSDP2, ~1B Llama: unsharded vs capped vs fsdp+offload"
timeout "$TF" "$PY" benchmarks/fsdp_gpu.py "${FSDP_ARGS[@]}" --out "$RES/fsdp_gpu_$FSDP_TAG.json" 2>&1 \
  | grep -v -E "Warning|warn\(|Writing model shards" | tee -a "$LOG"
reap
say "2a. speed, Llama-3.2-1B shape: before / after / bare"
timeout "$TB" "$PY" benchmarks/gpu_speed.py "${BIG[@]}" --out "$RES" --tag gpu_llama1b 2>&1 | grep -v Warning | tee -a "$LOG"
reap
say "2b. speed, SmolLM2-135M: before / after / bare"
timeout "$TS" "$PY" benchmarks/gpu_speed.py "${SMALL[@]}" --out "$RES" --tag gpu_smollm2 2>&1 | grep -v Warning | tee -a "$LOG"
reap
say "3. SmolLM2 LoRA, the issue's configuration: before / after"
timeout "$TL" "$PY" benchmarks/gpu_speed.py "${LORA[@]}" --variants before,after --out "$RES" --tag gpu_smollm2_lora 2>&1 \
  | grep -v Warning | tee -a "$LOG"
say "done"
