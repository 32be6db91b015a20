"""One GPU: full continued pretraining of a ~1B Llama-shaped model (random init, blocks of 2,048 tokens),
FSDP2 with CPU offload vs unsharded, peak memory per process and tokens/s, beside the planner's
prediction for each. Called by benchmarks/fsdp_gpu.sh (see there for the commands).

    python benchmarks/fsdp_gpu.py --size 1b --out benchmarks/results/fsdp_gpu_h200.json   # GPU, < 10 min
    python benchmarks/fsdp_gpu.py --size tiny                                           # CPU rehearsal

Three `lmadapt pretrain` runs, each under benchmarks/memory_worker.py (torchrun, one process):
unsharded on the whole GPU; unsharded again on a GPU capped at --cap-gib (torch's per-process
memory fraction stands in for a smaller card: out of memory is expected where the planner says it
does not fit); FSDP2 + cpu_offload under the same cap (the sharded state lives in host RAM). The
model: TinyLlama-1.1B's shape (hidden 2048, 22 layers, MLP 5632, 32 heads / 4 kv heads) with a
vocabulary trained on the bundled computing sample; bf16 mixed precision on the GPU, fp32 on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "src" / "lmadapt" / "sample_data" / "computing" / "train.jsonl.gz"
GIB = 2 ** 30
SIZES = {
    "1b": {"dims": {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
                    "num_key_value_heads": 4, "max_position_embeddings": 2048}, "vocab": 32000, "block": 2048},
    "tiny": {"dims": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 176, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "max_position_embeddings": 256}, "vocab": 1000, "block": 128},
}


def recipe(work: Path, name: str, args, spec: dict, sharding: str, offload: bool) -> list[str]:
    dims = "{" + ", ".join(f"{k}: {v}" for k, v in spec["dims"].items()) + "}"
    precision = "bf16" if args.gpu else "fp32"
    return ["model.init=scratch", "model.arch=llama", f"model.dims={dims}", f"model.tokenizer={work / 'tok'}",
            f"data.sources=[{{path: {SAMPLE}, max_documents: {args.docs}}}]", f"data.block_size={spec['block']}",
            f"data.cache_dir={work / 'cache'}", f"train.output_dir={work / name}", f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}", f"train.precision={precision}", "train.report_to=[]", "train.log_every=1",
            f"train.gradient_checkpointing={str(args.checkpointing).lower()}", f"train.sharding={sharding}",
            f"train.fsdp.cpu_offload={str(offload).lower()}", "train.warmup_steps=1"]


def planned(overrides: list[str]) -> dict:
    """The plan `lmadapt pretrain ... --dry-run` prints for these overrides (one process)."""
    from lmadapt.advise.memory import recipe_setup
    from lmadapt.config.base import load_recipe
    from lmadapt.config.pretrain import PretrainConfig
    from lmadapt.models.memory_plan import plan

    cfg = load_recipe(PretrainConfig, None, overrides)
    shape, setup, _ = recipe_setup(cfg, block_size=cfg.data.block_size, processes=1)
    p = plan(shape, setup)
    return {"params": shape.params, "device_bytes": p.device_bytes, "host_bytes": p.host_bytes,
            "state_bytes": p.state_bytes, "bytes_per_param": round(p.bytes_per_param, 2)}


def run(work: Path, name: str, overrides: list[str], cap: float | None) -> dict:
    out = work / f"{name}.mem.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
           "--master_port", str(29500 + random.randint(0, 900)), str(ROOT / "benchmarks" / "memory_worker.py"), str(out)]
    if cap:
        cmd += ["--cap-gib", str(cap)]
    cmd += ["--", "pretrain", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    rec = json.loads(out.read_text()) if out.exists() else {"oom": False, "exit_code": proc.returncode}
    rec["wall_seconds"] = round(time.time() - t0, 1)
    if not rec.get("oom") and proc.returncode != 0:
        said = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln.lower()]
        rec["error"] = "\n".join(said[:5]) or (proc.stderr or proc.stdout)[-1500:]
    metrics = work / name / "metrics.json"
    if metrics.exists():
        rec["train"] = json.loads(metrics.read_text()).get("train")
    shutil.rmtree(work / name, ignore_errors=True)   # a 1B model folder is 4 GB: do not keep it
    return rec


def measured_peak(rec: dict) -> int | None:
    if rec.get("oom") or rec.get("error"):
        return None
    return rec.get("cuda_peak_allocated_bytes") or (rec["peak_rss_bytes"] - rec["baseline_rss_bytes"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--docs", type=int, default=2000, help="documents of the computing sample to read")
    ap.add_argument("--cap-gib", type=float, default=16.0, help="the smaller GPU the capped runs stand in for")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in every run")
    ap.add_argument("--work", default="/tmp/lmadapt_bench/fsdp_gpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    args.gpu = torch.cuda.is_available()
    spec = SIZES[args.size]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from lmadapt.config.data import SourceConfig
    from lmadapt.data.sources import read_source
    from lmadapt.models.tokenizers import train_tokenizer
    docs, _ = read_source(SourceConfig(path=str(SAMPLE), max_documents=args.docs))
    train_tokenizer([d.text for d in docs], kind="bpe", vocab_size=spec["vocab"], output_dir=str(work / "tok"))
    runs = [("unsharded", "none", False, None), ("unsharded_capped", "none", False, args.cap_gib),
            ("fsdp_offload_capped", "fsdp", True, args.cap_gib)]
    if not args.gpu:   # lmadapt refuses cpu_offload without a GPU (the shards are in host RAM already)
        runs[-1] = ("fsdp_no_offload", "fsdp", False, None)
    result = {"size": args.size, "device": torch.cuda.get_device_name() if args.gpu else "cpu",
              "args": {k: v for k, v in vars(args).items()}, "runs": {}}
    try:
        for name, sharding, offload, cap in runs:
            overrides = recipe(work, name, args, spec, sharding, offload)
            rec = run(work, name, overrides, cap if args.gpu else None)
            rec["planned"] = planned(overrides)
            rec["overrides"] = overrides
            result["runs"][name] = rec
            print(f"{name}: done in {rec['wall_seconds']} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    unit = "GPU peak allocated" if args.gpu else "peak RSS above baseline (CPU rehearsal: caps not applied)"
    params = next(iter(result["runs"].values()))["planned"]["params"]
    print(f"\n{params / 1e6:,.1f}M-parameter Llama ({args.size}), micro-batch {args.batch} x {spec['block']}, "
          f"{args.steps} steps, {'bf16' if args.gpu else 'fp32'}; memory = {unit}")
    print(f"{'run':<22} {'cap GiB':>7} {'planned GiB':>11} {'measured GiB':>12} {'host GiB (plan)':>15} {'tokens/s':>9}  status")
    for name, rec in result["runs"].items():
        peak, pl = measured_peak(rec), rec["planned"]
        status = "out of memory" if rec.get("oom") else "error" if rec.get("error") else "ok"
        if rec.get("cap_gib"):
            fits = pl["device_bytes"] <= rec["cap_gib"] * GIB
            status += f" (planner: {'fits' if fits else 'does not fit'} {rec['cap_gib']:g} GiB)"
        tps = (rec.get("train") or {}).get("tokens_per_second")
        print(f"{name:<22} {str(rec.get('cap_gib') or '-'):>7} {pl['device_bytes'] / GIB:>11.2f} "
              f"{(peak / GIB if peak else float('nan')):>12.2f} {pl['host_bytes'] / GIB:>15.2f} "
              f"{(tps or float('nan')):>9.0f}  {status}")
        if rec.get("error"):
            print("   " + rec["error"].strip().splitlines()[-1][:300])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
