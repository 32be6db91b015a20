"""Recipe sections for the model: where it comes from, its objective, and LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ConfigError, opt


@dataclass
class ModelConfig:
    """The model to adapt: a local folder, a hub id, a GGUF file, or a fresh model from a preset."""

    init: Literal["pretrained", "scratch"] = opt(
        "pretrained", "load existing weights, or build a fresh randomly initialised model"
    )
    path: str | None = opt(None, "model folder or hub id (init: pretrained)")
    gguf_file: str | None = opt(None, "GGUF file inside `path` (or a full path): dequantised into a trainable model")
    arch: Literal["llama", "gpt2", "bert"] | None = opt(None, "architecture for init: scratch")
    size: str | None = opt(None, "scratch size preset (see `lmadapt presets`), e.g. 'tiny', '8m', '30m'")
    dims: dict = opt(
        doc="explicit config values for init: scratch (hidden_size, num_hidden_layers, ...); override the preset",
        factory=dict,
    )
    tokenizer: str | None = opt(None, "tokenizer folder (default: the model's own; required for init: scratch)")
    objective: Literal["auto", "causal", "masked"] = opt(
        "auto", "training objective; auto: causal for decoder models, masked for encoders"
    )
    attn_implementation: (
        Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None
    ) = opt(
        "auto",
        "attention kernel. auto: flash_attention_2 for decoders on a GPU with flash-attn installed (packed "
        "documents padding-free, varlen), else sdpa (a document mask over the full block); flex_attention "
        "(block-sparse document mask, compiled; GPU only); eager (materialised scores)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "float32", "weights dtype when loading (train in float32 on CPU)"
    )
    trust_remote_code: bool = opt(False, "allow custom modelling code from the hub")
    revision: str | None = opt(None, "hub revision (branch, tag or commit)")

    def __post_init__(self):
        if self.init == "pretrained" and not self.path:
            raise ConfigError("path: required with init: pretrained (a model folder or hub id)")
        if self.init == "scratch":
            if not self.arch:
                raise ConfigError("arch: required with init: scratch (llama, gpt2 or bert)")
            if not self.tokenizer:
                raise ConfigError("tokenizer: required with init: scratch (train one with `lmadapt tokenizer train`)")
            if not self.size and not self.dims:
                raise ConfigError("size: init: scratch needs a size preset or explicit dims")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). Off by default: full fine-tuning."""

    enabled: bool = opt(False, "train LoRA adapters instead of all weights")
    r: int = opt(16, "adapter rank")
    alpha: int = opt(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = opt(0.05, "dropout on the adapter input")
    target_modules: list[str] | None = opt(None, "module names to adapt (default: chosen per architecture)")
    train_embeddings: bool = opt(
        False, "also train the input embeddings and LM head in full (useful for new domain vocabulary)"
    )
    merge: bool = opt(False, "save a full model with the adapters merged in (else an adapter folder)")
    quantize: Literal["none", "4bit"] = opt(
        "none",
        "QLoRA: 4bit loads the frozen base in NF4 (bitsandbytes, double quantisation, "
        "bf16 compute; CUDA only; extra lmadapt[speed]); the adapters train in full precision",
    )

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"r: must be >= 1, got {self.r}")
        if self.quantize != "none":
            if not self.enabled:
                raise ConfigError(
                    f"quantize: {self.quantize} quantises the frozen base under LoRA; set lora.enabled: true"
                )
            if self.merge:
                raise ConfigError(
                    f"merge: not with quantize: {self.quantize} (merging into a quantised base loses the "
                    "adapter's precision); save the adapter and merge it into the full-precision base"
                )
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    f"quantize: {self.quantize} (bitsandbytes NF4) needs a CUDA GPU; this machine has none "
                    "(use quantize: none)"
                )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
