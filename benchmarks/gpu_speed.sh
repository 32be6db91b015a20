#!/usr/bin/env bash
# Issue 18's GPU measurement on one H100/H200, in one call of under 10 minutes: SmolLM2-135M and a
# Llama-3.2-1B-shaped model (random init), full training at sequence 2,048, micro-batch 8:
# lmadapt before (standard loss, eager) vs after (its defaults: fused loss, compiled blocks, Liger
# kernels where installed) vs the bare reference loop; tokens/s, MFU, peak memory; then SmolLM2 with
# LoRA (the configuration of the 73.7k tokens/s / 52.8 GB measurement in the issue).
#
#   bash benchmarks/gpu_speed.sh            # results: $OUT (or benchmarks/results)/gpu_speed_*.{json,md}
#   bash benchmarks/gpu_speed.sh extra      # a second call (~3 min): QLoRA (NF4 base, lora.quantize: 4bit)
#                                           # memory and speed beside the LoRA row, and flex_attention
#                                           # (block-sparse document mask) beside sdpa for SmolLM2 at 2,048
#
# On the lent device machine (no network): the image has torch, triton, transformers 5.17, peft,
# accelerate, tokenizers, safetensors, pyarrow but not datasets or liger-kernel. Carry wheels in .whl
# (git-ignored via .git/info/exclude), fetched here once with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     liger-kernel==0.8.5 transformers==5.25.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# (for `extra` add bitsandbytes==0.50.2 with --platform manylinux_2_24_x86_64: a 43 MB wheel; carry stays < 64 MiB
# only without datasets' and liger's companions if it is tight)
# and call: carry [".whl"], command: bash benchmarks/gpu_speed.sh, timeout_s 590 (240 + 220 + 100 s).
# Rehearsed on CPU (the same script path, CPU shapes): benchmarks/results/gpu_speed_cpu*.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
RES=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)
try:
    import liger_kernel; print('liger-kernel', getattr(liger_kernel, '__version__', 'installed'))
except Exception as e: print('liger-kernel: not available', e)"
if [ "${1:-}" = extra ]; then
  # QLoRA: the same shape and adapters as the LoRA row below, the frozen base in NF4 (peak memory is the point)
  timeout 100 "$PY" benchmarks/gpu_speed.py --models smollm2 --qlora --seq 1024 --batch 32 --steps 10 --warmup 4 \
    --variants before,after --out "$RES" --tag gpu_smollm2_qlora 2>&1 | grep -v Warning
  # padding-free attention without flash-attn (no PyPI wheel): flex_attention's document BlockMask vs sdpa's
  # full-block mask (the sdpa 'after' row is in gpu_speed_gpu_smollm2.md)
  timeout 150 "$PY" benchmarks/gpu_speed.py --models smollm2 --attn flex_attention --seq 2048 --batch 8 --steps 20 \
    --warmup 5 --variants after,bare --out "$RES" --tag gpu_smollm2_flex 2>&1 | grep -v Warning
  exit 0
fi
# ~2-3 min each: 3 variants x (5 warm-up + 20 timed steps), compilation included
timeout 240 "$PY" benchmarks/gpu_speed.py --models smollm2 --seq 2048 --batch 8 --steps 20 --warmup 5 \
  --out "$RES" --tag gpu_smollm2 2>&1 | tee "$RES/gpu_speed_smollm2.log" | grep -v Warning
timeout 220 "$PY" benchmarks/gpu_speed.py --models llama1b --seq 2048 --batch 8 --steps 10 --warmup 4 \
  --out "$RES" --tag gpu_llama1b 2>&1 | tee "$RES/gpu_speed_llama1b.log" | grep -v Warning
# the issue's configuration: SmolLM2 LoRA, 32 x 1,024 (memory: the logits were most of 52.8 GB)
timeout 100 "$PY" benchmarks/gpu_speed.py --models smollm2 --lora --seq 1024 --batch 32 --steps 10 --warmup 4 \
  --variants before,after --out "$RES" --tag gpu_smollm2_lora 2>&1 | grep -v Warning
