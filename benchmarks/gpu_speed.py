"""Training speed near the hardware limit: lmadapt before / after vs a bare reference loop, one run.

Same model (random init, a real architecture's shape), same packed random documents (positions
restart per document, so attention stays inside documents; first tokens unlabelled), same micro-
batch, accumulation and optimizer; timed after warm-up steps (compilation), the device
synchronised only at the two timing points.

  before   lmadapt's loop with yesterday's settings: train.loss standard, compile false, no Liger kernels
  after    lmadapt's loop with its defaults (train.loss/compile/liger_kernels: auto)
  bare     a plain PyTorch loop: the decoder's hidden states into the fused loss (Liger on a GPU where
           installed, else lmadapt's chunked loss), blocks compiled on a GPU, sdpa, fused AdamW,
           bf16 autocast, no per-step host sync

Prints tokens/s, MFU (train/flops.py: 6N + 12 L H S per token against the device's peak) and peak
memory per variant, and writes JSON + a markdown table under --out.

    python benchmarks/gpu_speed.py                       # CPU: 8m lmadapt vs bare, SmolLM2 memory
    python benchmarks/gpu_speed.py --models smollm2,llama1b --seq 2048 --batch 8   # GPU
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmadapt.train.flops import device_peak_flops, flops_per_token  # noqa: E402

# Shapes (random weights: speed and memory depend on the shape only).
SHAPES = {
    # lmadapt's 8m scratch preset (models/presets.py), with an 8k-token vocabulary
    "8m": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=10, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True, rope_theta=10000.0),
    # HuggingFaceTB/SmolLM2-135M's config.json
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    # meta-llama/Llama-3.2-1B's shape (1.24 B parameters)
    "llama1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
}
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def build_model(shape: str, seq: int, attn: str = "sdpa", layers: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    cfg = LlamaConfig(**dims, max_position_embeddings=max(seq, 2048), rms_norm_eps=1e-5,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def packed_blocks(n: int, seq: int, vocab: int, mean_doc: int = 300, seed: int = 0) -> list[dict]:
    """Random token blocks laid out as lmadapt's document packing does (data/packing.py)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        pos, left = [], seq
        while left:
            k = min(left, 1 + int(torch.empty(1).exponential_(1 / mean_doc, generator=g)))
            pos.append(torch.arange(k))
            left -= k
        rows.append({"input_ids": torch.randint(0, vocab, (seq,), generator=g), "position_ids": torch.cat(pos)})
    return rows


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _peak_mb() -> float:
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Timer:
    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.t = warmup, steps, {0: time.perf_counter()}   # warmup 0: from here

    def mark(self, step: int):
        if step in (self.warmup, self.warmup + self.steps):
            _sync()
            self.t[step] = time.perf_counter()

    def seconds(self) -> float:
        return self.t[self.warmup + self.steps] - self.t[self.warmup]


def run_lmadapt(model, rows, a, **speed) -> dict:
    """lmadapt's training loop (train.loop.run_training) on the blocks; speed keys -> TrainConfig."""
    from transformers import TrainerCallback

    from lmadapt.config.train import TrainConfig
    from lmadapt.data.collators import CausalCollator
    from lmadapt.train.loop import run_training

    timer = _Timer(a.warmup, a.steps)

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            timer.mark(state.global_step)

    with tempfile.TemporaryDirectory(prefix="gpu_speed_") as out:
        cfg = TrainConfig(output_dir=out, max_steps=a.warmup + a.steps, batch_size=a.batch, grad_accum=a.accum,
                          lr=1e-4, warmup_steps=1, log_every=10**6, report_to=[], gradient_checkpointing=a.ckpt,
                          **speed)
        outcome = run_training(model, None, rows, CausalCollator("document"), cfg, tokens_per_example=a.seq,
                               callbacks=[Mark()])
    return {"seconds": timer.seconds(), "settings": outcome.speed}


def run_bare(model, rows, a) -> dict:
    """The reference loop: what a hand-written training script does with the best settings here."""
    from lmadapt.train.loss import liger_available, linear_cross_entropy
    from lmadapt.train.speed import compile_blocks

    model.to(DEVICE).train()
    impl = "liger" if liger_available() else "chunked"
    compiled = compile_blocks(model) if CUDA else 0   # CPU: inductor compiles for minutes, then does not pay
    if a.ckpt:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.01, fused=True)
    amp = torch.autocast("cuda", torch.bfloat16) if CUDA else contextlib.nullcontext()
    timer, i = _Timer(a.warmup, a.steps), 0
    for step in range(1, a.warmup + a.steps + 1):
        micro = [rows[(i + k) % len(rows)] for k in range(a.batch * a.accum)]
        i += len(micro)
        ids = torch.stack([r["input_ids"] for r in micro])
        pos = torch.stack([r["position_ids"] for r in micro])
        labels = ids.masked_fill(pos == 0, -100)
        n_items = int((labels[:, 1:] != -100).sum())        # counted on the host: no sync
        for k in range(a.accum):
            sl = slice(k * a.batch, (k + 1) * a.batch)
            with amp:
                h = model.model(input_ids=ids[sl].to(DEVICE, non_blocking=True),
                                position_ids=pos[sl].to(DEVICE, non_blocking=True), use_cache=False).last_hidden_state
                loss = linear_cross_entropy(h, model.lm_head.weight, labels[sl].to(DEVICE, non_blocking=True),
                                            shift=True, num_items=n_items, impl=impl, select_labelled=not CUDA)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.mark(step)
    return {"seconds": timer.seconds(), "settings": {"loss": impl, "compiled_blocks": compiled}}


def qlora_model(model, attn: str):
    """lmadapt's QLoRA (lora.quantize: 4bit): the random model saved and reloaded in NF4 on the GPU
    (bitsandbytes quantises at load), then the same LoRA adapters (r 16, every projection)."""
    from transformers import AutoModelForCausalLM

    from lmadapt.config.model import LoraConfig
    from lmadapt.models.lora import apply_lora
    from lmadapt.models.quantize import quantized_load_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        model = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation=attn, **quantized_load_kwargs("4bit"))
    return apply_lora(model, LoraConfig(enabled=True, r=16, alpha=32, dropout=0.0, quantize="4bit"), "causal")


def measure(variant: str, shape: str, a) -> dict:
    model = build_model(shape, a.seq, a.attn, a.layers)
    if a.qlora:
        model = qlora_model(model, a.attn)
    elif a.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    rows = packed_blocks(max(8, a.batch * a.accum * 2), a.seq, SHAPES[shape]["vocab_size"])
    fpt = flops_per_token(model, a.seq)
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    if variant == "bare":
        r = run_bare(model, rows, a)
    elif variant == "before":
        r = run_lmadapt(model, rows, a, loss="standard", compile=False, liger_kernels=False)
    else:
        r = run_lmadapt(model, rows, a, loss=a.loss)
    tokens = a.steps * a.batch * a.accum * a.seq
    peak, source = device_peak_flops("bf16" if CUDA else "fp32")
    tps = tokens / r["seconds"]
    out = {"model": shape + (f" ({a.layers} layers)" if a.layers else ""), "variant": variant, "seq": a.seq, "batch": a.batch, "accum": a.accum,
           "lora": "qlora" if a.qlora else a.lora, "gradient_checkpointing": a.ckpt, "tokens_per_s": round(tps, 1),
           "flops_per_token": fpt, "mfu": round(tps * fpt / peak, 4) if peak else None, "peak_source": source,
           "peak_memory_mb": round(_peak_mb(), 1), "memory_above_start_mb": None if CUDA else round(_peak_mb() - rss0, 1),
           "settings": {k: v for k, v in r["settings"].items() if k in ("loss", "compiled_blocks", "liger_kernels")}}
    del model
    gc.collect()
    torch._dynamo.reset()
    return out


def in_subprocess(variant: str, shape: str, a, **extra) -> dict:
    """One measurement in a fresh process: CPU peak RSS is a process-lifetime maximum."""
    args = [sys.executable, __file__, "--one", variant, "--models", shape, "--seq", str(a.seq), "--batch",
            str(a.batch), "--accum", str(a.accum), "--steps", str(a.steps), "--warmup", str(a.warmup),
            "--loss", extra.get("loss", a.loss), "--attn", a.attn] + (["--layers", str(a.layers)] if a.layers else []) + (["--lora"] if a.lora else []) + (["--ckpt"] if a.ckpt else [])
    # glibc keeps large freed blocks in the heap once its dynamic mmap threshold has grown (up to 32 MB),
    # so peak RSS then measures the allocator's history, not what training holds: the standard loss's
    # freed logits stayed resident and the 30-layer SmolLM2 ratio read 0.83x; with the threshold fixed,
    # 0.29x (benchmarks/results/gpu_speed_cpu.md). fsdp_memory.py fixes it the same way.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode:
        raise RuntimeError(f"{variant} {shape} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = "| model | variant | loss | compiled blocks | seq x batch x accum | tokens/s | MFU | peak MB | MB above start |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        s = r["settings"]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['model']}{' QLoRA (NF4)' if r['lora'] == 'qlora' else ' LoRA' if r['lora'] else ''}{' ckpt' if r['gradient_checkpointing'] else ''} "
                     f"| {r['variant']} | {s.get('loss')} | {s.get('compiled_blocks', 0)} "
                     f"| {r['seq']} x {r['batch']} x {r['accum']} | {r['tokens_per_s']:,.0f} | {mfu} "
                     f"| {r['peak_memory_mb']:,.0f} | {r['memory_above_start_mb'] or '-'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--variants", default="before,after,bare")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation)")
    ap.add_argument("--loss", default="auto", help="train.loss of the 'after' variant")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--qlora", action="store_true", help="LoRA on an NF4 base (lora.quantize: 4bit; CUDA + bitsandbytes)")
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--memory", default=None, help="CPU: SHAPE whose peak memory to compare standard vs chunked")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default=None, help="result file name: gpu_speed_<tag>.{json,md} (default gpu|cpu)")
    a = ap.parse_args()
    if a.qlora and not CUDA:
        sys.exit("--qlora: bitsandbytes NF4 needs a CUDA GPU")
    a.seq = a.seq or (2048 if CUDA else 256)
    a.batch = a.batch or (8 if CUDA else 8)
    a.steps = a.steps or (20 if CUDA else 8)
    a.warmup = a.warmup if a.warmup is not None else (5 if CUDA else 2)
    if a.one:
        print(json.dumps(measure(a.one, a.models, a)))
        return
    rows = []
    for shape in (a.models or ("smollm2,llama1b" if CUDA else "8m")).split(",") if a.models != "none" else []:
        for variant in a.variants.split(","):
            try:
                rows.append(measure(variant, shape, a) if CUDA else in_subprocess(variant, shape, a))
            except Exception as exc:  # noqa: BLE001 - one failing variant must not cost the others' numbers
                print(f"{shape} {variant}: FAILED {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
                gc.collect()
                if CUDA:
                    torch.cuda.empty_cache()
                continue
            print(json.dumps(rows[-1]), flush=True)
    if a.memory and not CUDA:
        for loss in ("standard", "chunked"):
            rows.append(in_subprocess("after", a.memory, a, loss=loss))
            print(json.dumps(rows[-1]), flush=True)
    md = table(rows)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = a.tag or ("gpu" if CUDA else "cpu")
    (out / f"gpu_speed_{tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / f"gpu_speed_{tag}.md").write_text(
        f"# benchmarks/gpu_speed.py on {torch.cuda.get_device_name() if CUDA else 'CPU'}\n\n"
        f"`{' '.join(sys.argv)}`, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n\n{md}\n")


if __name__ == "__main__":
    main()
