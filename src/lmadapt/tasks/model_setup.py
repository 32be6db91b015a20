"""What every task's model loading shares: ``from_pretrained`` keyword arguments from the recipe's ``model:``
section (dtype, attention, revision, GGUF, QLoRA) and the pad id a task pads with."""

from __future__ import annotations

import torch

from ..config.finetune import FinetuneConfig
from ..models.attention import resolve_attention
from ..models.quantize import quantized_load_kwargs


def pad_id_of(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def model_kwargs(cfg: FinetuneConfig, *, causal: bool = False) -> dict:
    """from_pretrained keyword arguments from the recipe's ``model:`` section (``causal``: a decoder LM
    head, which ``attn_implementation: auto`` may give varlen flash attention)."""
    m = cfg.model
    kw: dict = {}
    if m.dtype == "auto":
        kw["dtype"] = "auto"
    elif m.dtype:
        kw["dtype"] = getattr(torch, m.dtype)
    attn = resolve_attention(m.attn_implementation, causal=causal)
    if attn:
        kw["attn_implementation"] = attn
    if m.trust_remote_code:
        kw["trust_remote_code"] = True
    if m.revision:
        kw["revision"] = m.revision
    if m.gguf_file:
        kw["gguf_file"] = m.gguf_file
    lora = cfg.lora
    if lora.enabled and lora.quantize != "none":  # QLoRA: the frozen base in NF4
        kw.update(quantized_load_kwargs(lora.quantize))
    return kw
