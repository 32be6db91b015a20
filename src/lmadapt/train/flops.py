"""Model FLOPs per training token and model FLOPs utilisation (MFU) against the device's peak.

Per token, with N = the parameters that take part in matmuls (every parameter except token and
position embeddings; the output head counted once, also when it is tied to the embeddings),
L layers, hidden width H and sequence length S:

    full training   6 N + 12 L H S
    LoRA            4 F + 6 T + 12 L H S     F = frozen N (forward 2F + input gradients 2F, no weight
                                             gradients), T = trainable (LoRA A/B, new heads: 6T)

12 L H S is PaLM's attention term (appendix B: the QK^T and AV matmuls, forward and backward, over
the full S x S score matrix). Causal kernels skip the upper triangle and document packing skips
the blocks across documents, so the hardware does less than that; like PaLM, Megatron and
nanoGPT we count the model's nominal work, so MFU does not rise by cutting documents short.
Without a sequence length (fine-tuning's dynamic padding) the attention term is left out (a
lower bound). Masked LM counts the head on every token, as its forward does.

Peaks are dense (no sparsity) tensor-core numbers from the vendors' data sheets, per device name;
on CPU the peak is a measured fp32 matmul rate (once per machine and thread count, cached in
~/.cache/lmadapt/cpu_peak.json; LMADAPT_CPU_PEAK_FLOPS overrides it): MFU there says how close
training runs to what this CPU's BLAS does on a large matmul, not to a data-sheet number. On a
shared machine the measurement is as noisy as the training it is compared with.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

# (substring of torch.cuda.get_device_name(), dense bf16/fp16 tensor TFLOP/s, fp32 TFLOP/s without TF32).
# First match wins, so specific names come before the family name.
GPU_PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("GH200", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("H100", 989.0, 67.0),  # SXM
    ("H800", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),  # A10 and A10G
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),
]
_CPU_PEAK: dict[int, float] = {}


def _dims(model) -> tuple[int, int]:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if not layers or not hidden:
        raise ValueError(f"{type(cfg).__name__}: no num_hidden_layers/hidden_size to count attention FLOPs from")
    return int(layers), int(hidden)


def matmul_params(model) -> tuple[int, int]:
    """(frozen, trainable) parameters that take part in matmuls: all unique parameters except
    embedding tables, with the output head's weight counted once even when tied to them."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    frozen = trainable = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or (id(p) in embedding_ids and id(p) not in head_ids):
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return frozen, trainable


def flops_per_token(model, seq_len: int | None) -> float:
    """Training FLOPs per token (module docstring): 6N (+ attention) in full, 4F + 6T for LoRA."""
    frozen, trainable = matmul_params(model)
    layers, hidden = _dims(model)
    attention = 12 * layers * hidden * seq_len if seq_len else 0
    return float(4 * frozen + 6 * trainable + attention)


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a GPU by its name, for bf16/fp16 or fp32 training; None if unknown."""
    for key, half, single in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return (single if precision == "fp32" else half) * 1e12
    return None


def measure_cpu_peak(n: int = 1024, seconds: float = 0.3) -> float:
    """Best fp32 matmul FLOP/s of ``n x n`` matrices on this CPU with torch's current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: BLAS threads, caches
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_peak_flops(cache: Path | None = None) -> float:
    """The measured CPU peak (see :func:`measure_cpu_peak`), cached per CPU model and thread count."""
    if os.environ.get("LMADAPT_CPU_PEAK_FLOPS"):  # a known number, or one measured on an idle machine
        return float(os.environ["LMADAPT_CPU_PEAK_FLOPS"])
    threads = torch.get_num_threads()
    if threads in _CPU_PEAK:
        return _CPU_PEAK[threads]
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmadapt" / "cpu_peak.json"
    key = f"{_cpu_name()} | {threads} threads"
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure_cpu_peak()
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1))
            tmp.replace(cache)
        except OSError:  # a read-only home: measure again next time
            pass
    _CPU_PEAK[threads] = float(table[key])
    return _CPU_PEAK[threads]


def device_peak_flops(precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for this precision, where the number comes from)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = gpu_peak_flops(name, precision)
        return (
            peak,
            f"{name} {'fp32' if precision == 'fp32' else 'bf16'} data sheet" if peak else f"{name}: not in the table",
        )
    return cpu_peak_flops(), f"measured fp32 matmul, {torch.get_num_threads()} threads"


def mfu(tokens_per_second: float, flops_per_token_: float | None, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a peak); ``peak_flops`` of all devices together."""
    if not flops_per_token_ or not peak_flops:
        return None
    return tokens_per_second * flops_per_token_ / peak_flops


def speed_metrics(speed: dict, tokens_per_second: float) -> dict:
    """metrics.json's speed block from ``TrainOutcome.speed``: the settings used, FLOPs/token, MFU."""
    value = mfu(tokens_per_second, speed.get("flops_per_token"), speed.get("peak_flops"))
    out = {
        k: speed[k]
        for k in ("loss", "compiled_blocks", "liger_kernels", "flops_per_token", "peak_flops", "peak_source")
        if k in speed
    }
    out["mfu"] = round(value, 4) if value is not None else None
    return out


__all__ = [
    "speed_metrics",
    "GPU_PEAK_TFLOPS",
    "cpu_peak_flops",
    "device_peak_flops",
    "flops_per_token",
    "gpu_peak_flops",
    "matmul_params",
    "measure_cpu_peak",
    "mfu",
]
