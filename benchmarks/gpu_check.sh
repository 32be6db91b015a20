#!/usr/bin/env bash
# One short GPU session: the throughput benchmark on a GPU (bf16) and a CLI smoke run of
# pretrain -> finetune with precision auto (bf16). Used with the device tool; wheels for packages
# the GPU image lacks travel in .whl/. Writes results to $OUT (or /tmp/gpu_out).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, datasets, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())"
S=src/lmadapt/sample_data
python3 benchmarks/pretrain_throughput.py --data $S/computing/train.jsonl.gz --docs 243 --size 30m \
  --block-size 1024 --batch-size 16 --steps 20 --warmup 3 --bf16 --device cuda --json "$OUT/throughput_gpu_30m.json" 2>&1 \
  | grep -v -E "Warning|Map" | tee "$OUT/throughput_gpu.log"
# CLI smoke: tokenizer -> scratch pretrain (bf16 auto) -> continued pretrain with replay -> finetune
W=/tmp/smoke; rm -rf $W; mkdir -p $W
python3 -m lmadapt.cli tokenizer train --data $S/general/train.jsonl.gz --vocab-size 4000 --output $W/tok
python3 -m lmadapt.cli pretrain model.init=scratch model.arch=llama model.size=tiny model.tokenizer=$W/tok \
  "data.sources=[{path: $S/general/train.jsonl.gz}]" "data.eval_sources=[{path: $S/general/valid.jsonl.gz, name: general}]" \
  data.block_size=512 train.max_steps=150 train.batch_size=32 train.lr=1e-3 train.output_dir=$W/base train.report_to=[] 2>&1 | grep -v Warning | tail -25
python3 -m lmadapt.cli pretrain model.path=$W/base \
  "data.sources=[{path: $S/computing/train.jsonl.gz, name: computing}, {path: $S/general/train.jsonl.gz, name: general, share: 0.05}]" \
  "data.eval_sources=[{path: $S/computing/valid.jsonl.gz, name: computing}, {path: $S/general/valid.jsonl.gz, name: general}]" \
  data.block_size=512 train.max_steps=100 train.batch_size=32 train.lr=5e-4 train.output_dir=$W/dapt train.report_to=[] 2>&1 | grep -v Warning | tail -25
python3 -m lmadapt.cli finetune model.path=$W/dapt task.type=classification data.train=$S/foldoc/train.jsonl \
  data.dev=$S/foldoc/dev.jsonl data.test=$S/foldoc/test.jsonl train.epochs=3 train.lr=1e-3 train.batch_size=32 \
  train.output_dir=$W/ft train.report_to=[] model.max_length=512 data.allow_truncation=true 2>&1 | grep -v Warning | tail -30
cp $W/base/metrics.json "$OUT/smoke_base_metrics.json" 2>/dev/null; cp $W/dapt/metrics.json "$OUT/smoke_dapt_metrics.json" 2>/dev/null
cp $W/ft/metrics.json "$OUT/smoke_ft_metrics.json" 2>/dev/null
