"""What the advice measures on this machine: optimizer steps timed on one small batch, the activation
memory a token costs (bytes autograd saves for backward), the memory plan for training, and the cost
of an epoch from them. advise/measure.py calls these inside its time budget.
"""

from __future__ import annotations

import os
import time
from typing import Any

LORA_R = 16  # the LoRA rank the estimates assume (lmadapt's default)


def probe_ids(tok, texts: list[str], n: int) -> list[int]:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        if len(ids) >= n:
            break
    if not ids:
        ids = [0]
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def activation_bytes_per_token(loaded, ids: list[int]) -> int:
    """Bytes of the tensors autograd saves for backward in one training-mode forward pass, per token
    (parameters excluded): the activation memory of training, measured on a short sequence."""
    import torch

    model = loaded.model
    dev = next(model.parameters()).device
    x = torch.tensor(ids, dtype=torch.long)[None].to(dev)
    kwargs = _train_kwargs(loaded, x)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            if st.data_ptr() not in param_ptrs:
                saved[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**kwargs).loss
        del loss
    finally:
        model.train(was_training)
    return int(sum(saved.values()) / x.numel())


def _train_kwargs(loaded, x):
    import torch

    if loaded.objective == "causal":
        return {"input_ids": x, "labels": x}
    g = torch.Generator().manual_seed(0)
    sel = (torch.rand(x.shape, generator=g) < 0.15).to(x.device)
    sel[:, 0] = True
    return {"input_ids": x.masked_fill(sel, loaded.tokenizer.mask_token_id), "labels": x.masked_fill(~sel, -100)}


def time_steps(loaded, ids: list[int], *, batch_size: int, block_size: int, steps: int, seconds: float) -> dict:
    """Time full-training optimizer steps (AdamW, fp32) on one small batch: 1 warm-up + up to ``steps``
    (at least one), stopping early when ``seconds`` are spent. The learning rate is 0, so the weights
    do not change."""
    import torch

    model = loaded.model
    dev = next(model.parameters()).device
    x = torch.tensor(ids[: batch_size * block_size], dtype=torch.long).view(batch_size, block_size).to(dev)
    kwargs = _train_kwargs(loaded, x)
    was_training = model.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)

    def step():
        model(**kwargs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    try:
        t0 = time.perf_counter()
        step()  # warm-up: allocates the Adam states
        warm = time.perf_counter() - t0
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        for _ in range(max(1, steps)):
            s0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - s0)
            if time.perf_counter() > deadline:
                break
    finally:
        opt.zero_grad(set_to_none=True)
        opt.state.clear()  # the Adam moments go now, not when step()'s closure does
        model.train(was_training)
    per_step = sum(times) / len(times)
    tokens = batch_size * block_size
    return {
        "device": str(dev),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "block_size": block_size,
        "steps": len(times),
        "warmup_seconds": round(warm, 3),
        "seconds_per_step": round(per_step, 4),
        "tokens_per_second": round(tokens / per_step, 1),
        "method": "timed optimizer steps (AdamW, lr 0)",
    }


def memory_plan(model, dev, max_pos, train_batch_tokens: int) -> dict:
    """Bytes per parameter and GPUs needed for full / LoRA / sharded training (advise/memory.py),
    at blocks of 512 tokens (fewer where the model's context is shorter) making train_batch_tokens."""
    from ..runtime.dist import resolve_precision
    from .memory import advise_plan

    block = min(512, max_pos or 512)
    precision = resolve_precision("auto") if dev.type == "cuda" else "fp32"
    return advise_plan(
        model, precision=precision, batch_size=max(1, train_batch_tokens // block), block_size=block, lora_r=LORA_R
    )


def available_memory(dev) -> int | None:
    """Total memory of the training device: GPU memory, else physical RAM."""
    try:
        if dev.type == "cuda":
            import torch

            return int(torch.cuda.get_device_properties(dev).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def epoch_cost(model_info, dom_info, task_info, probe_info, train_batch_tokens: int, dev) -> dict:
    params, lora_n = model_info["params"], model_info["lora_trainable_params"]
    tokens = (dom_info or {}).get("estimated_tokens") or (task_info or {}).get("tokens")
    out: dict[str, Any] = {
        "tokens": tokens,
        "tokens_from": "domain" if dom_info else "task" if task_info else None,
        "flops_per_epoch": float(6 * params * tokens) if tokens else None,
        "probe": probe_info,
        "seconds_per_epoch": None,
    }
    tps = (probe_info or {}).get("tokens_per_second")
    if tokens and tps:
        out["seconds_per_epoch"] = round(tokens / tps, 1)
    per_tok = (probe_info or {}).get("activation_bytes_per_token")
    act = int(per_tok * train_batch_tokens) if per_tok else None
    out["memory"] = {
        "train_batch_tokens": train_batch_tokens,
        "activation_bytes": act,
        "full_bytes": int(16 * params + (act or 0)),
        "lora_bytes": int(4 * params + 16 * lora_n + (act or 0)),
        "available_bytes": available_memory(dev),
        "device": str(dev),
        "note": "full: fp32 weights + grads + 2 Adam states (16 B/param); LoRA: frozen fp32 weights (4 B/param) + "
        "16 B per adapter param; both + activations measured by the probe, scaled linearly to train_batch_tokens",
    }
    return out
