"""Model-specific facts, kept as data so that stages never branch on the architecture.

    lora_targets(model)                  -> module names that get LoRA adapters by default
    is_encoder(model_or_config)          -> True for BERT-style (bidirectional) models
    objective_for(model, "auto")         -> "causal" | "masked" (ConfigError for impossible pairs)

Adding support for a new family means adding a row to a table here, not an ``if`` elsewhere.
"""

from __future__ import annotations

from typing import Any

from lmadapt.config.base import ConfigError
from lmadapt.config.pretrain import ENCODER_MODEL_TYPES

_DECODER_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_BERT_LIKE = ["query", "key", "value", "dense"]

# model_type -> default LoRA target modules (all attention and MLP projections: adapting the MLP
# too is what makes LoRA competitive with full fine-tuning for continued pretraining).
LORA_TARGETS: dict[str, list[str]] = {
    **{
        mt: list(_DECODER_PROJ)
        for mt in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
            "stablelm",
            "helium",
            "ministral",
        )
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    **{
        mt: list(_BERT_LIKE)
        for mt in (
            "bert",
            "roberta",
            "xlm-roberta",
            "camembert",
            "electra",
            "ernie",
            "megatron-bert",
            "roformer",
            "mpnet",
            "albert",
        )
    },
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "modernbert": ["Wqkv", "Wo", "Wi"],
}

# Module names (full dotted path segments) that belong to an output head. They are never given
# LoRA adapters by default (e.g. BERT's `cls.predictions.transform.dense` also ends in "dense"):
# a head is task specific and a later stage may replace it, which would orphan its adapter.
HEAD_MODULE_PREFIXES: tuple[str, ...] = (
    "cls",
    "lm_head",
    "pooler",
    "classifier",
    "qa_outputs",
    "score",
    "vocab_transform",
    "vocab_projector",
    "pre_classifier",
    "generator_predictions",
    "generator_lm_head",
    "head",
)

# Positions a model's embeddings reserve before the first token (RoBERTa's family numbers
# positions from padding_idx + 1): its usable context is max_position_embeddings minus this.
POSITION_OFFSET: dict[str, int] = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}

# Pad-token fallback for tokenizers that ship without one (most decoder tokenizers), in order of
# preference. Reusing EOS is harmless for training because padded positions get label -100 and
# attention_mask 0; packing (the default) needs no padding except in the last block.
PAD_TOKEN_FALLBACKS: tuple[str, ...] = ("eos_token", "unk_token")


def _config_of(model_or_config: Any) -> Any:
    cfg = getattr(model_or_config, "config", model_or_config)
    # A peft model: its .config is the base model's config already; nothing else to unwrap.
    return cfg


def model_type_of(model_or_config: Any) -> str:
    """The ``model_type`` string of a model, a config, or the name itself."""
    if isinstance(model_or_config, str):
        return model_or_config
    cfg = _config_of(model_or_config)
    mt = getattr(cfg, "model_type", None)
    if mt is None and isinstance(cfg, dict):
        mt = cfg.get("model_type")
    if not mt:
        raise ConfigError(f"cannot tell the model type of {type(model_or_config).__name__}")
    return mt


def is_encoder(model_or_config: Any) -> bool:
    """True for encoder-only (bidirectional, masked-LM) models, from ``ENCODER_MODEL_TYPES``."""
    return model_type_of(model_or_config) in ENCODER_MODEL_TYPES


def objective_for(model_or_config: Any, requested: str = "auto") -> str:
    """Resolve the training objective: ``auto`` follows the model; impossible pairs raise ConfigError."""
    mt = model_type_of(model_or_config)
    enc = mt in ENCODER_MODEL_TYPES
    if requested in (None, "auto"):
        return "masked" if enc else "causal"
    if requested == "masked" and not enc:
        raise ConfigError(
            f"model.objective: masked LM needs an encoder (BERT-style) model; {mt!r} is decoder-only "
            "and attends causally, so it cannot see the right context of a masked token. Use objective: causal."
        )
    if requested == "causal" and enc:
        raise ConfigError(
            f"model.objective: {mt!r} is an encoder without a causal LM head; use objective: masked "
            "(its pretraining objective)"
        )
    if requested not in ("causal", "masked"):
        raise ConfigError(f"model.objective: {requested!r} is not one of 'auto', 'causal', 'masked'")
    return requested


def is_head_module(name: str) -> bool:
    first = name.split(".", 1)[0]
    return first in HEAD_MODULE_PREFIXES or any(
        f".{p}." in f".{name}." for p in ("lm_head", "cls", "classifier", "score", "pooler")
    )


def is_linear_like(module: Any) -> bool:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _output_module_names(model: Any) -> set[str]:
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is None:
        return set()
    return {name for name, mod in model.named_modules() if mod is out}


def lora_targets(model: Any) -> list[str]:
    """Default LoRA target module names for ``model`` (only names that exist in it).

    Order of preference: the ``LORA_TARGETS`` table, peft's own per-architecture mapping, and
    finally every Linear/Conv1D layer outside the output head.
    """
    mt = model_type_of(model)
    named = [(n, m) for n, m in model.named_modules() if n]
    present = {n.rsplit(".", 1)[-1] for n, m in named if not is_head_module(n)}
    candidates: list[str] | None = LORA_TARGETS.get(mt)
    if candidates is None:
        try:
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_map
        except ImportError:  # pragma: no cover - peft is a hard dependency
            peft_map = {}
        mapped = peft_map.get(mt)
        candidates = list(mapped) if isinstance(mapped, (list, tuple, set)) else None
    if candidates:
        found = [c for c in candidates if c in present]
        if found:
            return found
    # Fallback: all linear layers except the head.
    names = all_linear_targets(model)
    if not names:
        raise ConfigError(f"no linear layers found to adapt in {mt!r}; set lora.target_modules explicitly")
    return names


def all_linear_targets(model: Any) -> list[str]:
    """Leaf names of every Linear/Conv1D layer outside the output head (peft's "all-linear")."""
    head = _output_module_names(model)
    names: list[str] = []
    for n, m in model.named_modules():
        if n and is_linear_like(m) and n not in head and not is_head_module(n):
            leaf = n.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names
