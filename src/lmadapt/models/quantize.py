"""QLoRA (``lora.quantize: 4bit``): the frozen base in 4-bit NF4, the LoRA adapters in full precision.

The base loads through transformers' bitsandbytes integration (NF4 with double quantisation, bf16
compute: QLoRA's settings, Dettmers et al. 2023) straight onto this process's GPU (``device_map``:
a 4-bit model is quantised as it is placed), then peft's ``prepare_model_for_kbit_training`` casts the
layer norms and head to fp32 and enables input gradients (needed with gradient checkpointing when
the embeddings are frozen) before the adapters go in (``models.lora.apply_lora``). Memory: ~0.55
bytes per base parameter instead of 2 (bf16) or 4 (fp32); measured by benchmarks/gpu_speed.sh.
CUDA only: ``config.model.LoraConfig`` refuses it on a machine without a GPU.
"""

from __future__ import annotations

from typing import Any

from lmadapt.config.base import ConfigError


def bnb_config(quantize: str):
    """transformers' BitsAndBytesConfig for ``quantize`` ("4bit"), or None for "none"."""
    if quantize in (None, "none"):
        return None
    if quantize != "4bit":
        raise ConfigError(f"lora.quantize: unknown value {quantize!r} (none or 4bit)")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def quantized_load_kwargs(quantize: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a quantised base ({} for none)."""
    qcfg = bnb_config(quantize)
    if qcfg is None:
        return {}
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("lora.quantize: 4bit needs the bitsandbytes package (pip install 'lmadapt[speed]')")
    import torch

    # Quantised as placed: straight onto this process's GPU (LOCAL_RANK's under torchrun).
    return {"quantization_config": qcfg, "device_map": {"": torch.cuda.current_device()}}


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False))


def prepare_quantized(model):
    """peft's k-bit preparation (fp32 norms/head) for a quantised model, with input gradients on (so
    ``train.gradient_checkpointing``, which the Trainer turns on later, has a graph through the frozen
    embeddings); else ``model`` unchanged."""
    if not is_quantized(model):
        return model
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.enable_input_require_grads()
    return model
