"""Scratch model sizes as data, and the configs they turn into.

A preset names the *non-embedding* parameter count (the transformer blocks: attention, MLP,
norms, and for BERT the MLM head transform), the convention of scaling-law papers: it does not
depend on the tokenizer. The embeddings add ``vocab_size x hidden_size`` on top (once: the
output head is tied to the input embeddings), plus learned position embeddings for GPT-2/BERT.
``lmadapt presets`` prints both numbers for a given vocabulary.

All three architectures use about ``12 * layers * hidden**2`` block parameters at a given size:
GPT-2/BERT with a 4x MLP, Llama with grouped-query attention (kv heads = heads / 2) and a 3x
SwiGLU MLP.

    cfg = scratch_config("llama", "tiny", {"num_hidden_layers": 4}, tokenizer)
    count_params(cfg)                       # counted on the meta device: nothing is allocated
    count_params(cfg, non_embedding=True)
"""

from __future__ import annotations

import difflib
from typing import Any

from lmadapt.config.base import ConfigError

ARCHS = ("llama", "gpt2", "bert")

# Generic dims keys understood for every arch (translated to each config's own names).
GENERIC_DIMS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_key_value_heads",
    "max_position_embeddings",
)


def _preset(nominal: int, hidden: int, layers: int, heads: int, max_pos: int, doc: str) -> dict:
    common = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_pos,
    }
    return {
        "nominal_params": nominal,
        "doc": doc,
        "llama": {**common, "intermediate_size": 3 * hidden, "num_key_value_heads": max(1, heads // 2)},
        "gpt2": {**common, "intermediate_size": 4 * hidden},
        "bert": {**common, "intermediate_size": 4 * hidden},
    }


# name -> {"nominal_params": int, "doc": str, "llama"|"gpt2"|"bert": dims}
PRESETS: dict[str, dict] = {
    "1m": _preset(1_000_000, 128, 5, 4, 512, "smoke tests, seconds per step on CPU"),
    "tiny": _preset(2_700_000, 192, 6, 4, 512, "CPU experiments on a few MB of text"),
    "8m": _preset(8_000_000, 256, 10, 4, 1024, "small domain corpora (tens of MB), CPU feasible"),
    "30m": _preset(30_000_000, 512, 10, 8, 2048, "GPU; ~0.5-1B training tokens to be worthwhile"),
    "100m": _preset(100_000_000, 768, 14, 12, 2048, "GPU; GPT-2-small class, billions of tokens"),
}

# Per-arch translation of the generic names (GPT-2 has no attribute alias for the MLP width).
_KEY_ALIASES: dict[str, dict[str, str]] = {
    "gpt2": {"intermediate_size": "n_inner"},
}
# Arch defaults that differ from transformers' defaults.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # Small models: tying the head to the embeddings saves vocab x hidden parameters, as GPT-2/BERT do.
    "llama": {"tie_word_embeddings": True, "rope_theta": 10000.0},
    "gpt2": {},
    "bert": {},
}
# Dims keys that make no sense for an arch (GPT-2 and BERT have no grouped-query attention).
_NOT_FOR: dict[str, set[str]] = {"gpt2": {"num_key_value_heads"}, "bert": {"num_key_value_heads"}}


def _config_class(arch: str):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    try:
        return {"llama": LlamaConfig, "gpt2": GPT2Config, "bert": BertConfig}[arch]
    except KeyError:
        raise ConfigError(f"model.arch: {arch!r} is not one of {', '.join(ARCHS)}") from None


def preset_dims(size: str, arch: str) -> dict:
    """The dims of preset ``size`` for ``arch`` (a copy)."""
    _config_class(arch)
    if size not in PRESETS and str(size).lower() in PRESETS:
        size = str(size).lower()  # "8M" is "8m"
    if size not in PRESETS:
        near = difflib.get_close_matches(str(size), list(PRESETS), n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"model.size: unknown preset {size!r}{hint}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[size][arch])


def _valid_keys(cls, arch: str) -> list[str]:
    keys = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {})) | set(GENERIC_DIMS)
    keys -= _NOT_FOR.get(arch, set())
    keys -= {"model_type", "transformers_version", "architectures", "vocab_size"}
    return sorted(keys)


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for attr in (
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "cls_token_id",
        "sep_token_id",
        "mask_token_id",
    ):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids[attr] = value
    return ids


def scratch_config(arch: str, size: str | None, dims: dict | None, tokenizer) -> Any:
    """A transformers config for a fresh ``arch`` model: preset ``size`` overridden by ``dims``.

    ``vocab_size`` comes from the tokenizer (``len(tokenizer)``, added tokens included) and the
    special token ids (bos/eos/pad) are copied from it. An unknown ``dims`` key raises
    :class:`ConfigError` naming it.
    """
    cls = _config_class(arch)
    dims = dict(dims or {})
    if not size and not dims:
        raise ConfigError("model.size: init: scratch needs a size preset or explicit dims")
    valid = _valid_keys(cls, arch)
    for key in dims:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            if key in _NOT_FOR.get(arch, ()):
                hint = f"; {arch} has no such option"
            raise ConfigError(f"model.dims.{key}: unknown {arch} config key{hint}")
    if tokenizer is None:
        raise ConfigError("model.tokenizer: init: scratch needs a tokenizer (its vocabulary sizes the model)")
    # Every key in the arch's own spelling (GPT-2: n_embd, n_layer, n_inner, ...), so that a preset's
    # generic name and the user's native name for the same option cannot both end up in the config.
    aliases = {**getattr(cls, "attribute_map", {}), **_KEY_ALIASES.get(arch, {})}

    def canon(key: str) -> str:
        return aliases.get(key, key)

    values: dict[str, Any] = {canon(k): v for k, v in _ARCH_DEFAULTS[arch].items()}
    if size:
        values.update({canon(k): v for k, v in preset_dims(size, arch).items()})
    values.update({canon(k): v for k, v in dims.items()})
    values["vocab_size"] = len(tokenizer)
    special = _special_ids(tokenizer)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if attr in special:
            values[attr] = special[attr]
    if arch == "bert" and "pad_token_id" not in special:
        raise ConfigError("model.tokenizer: a BERT-style model needs a tokenizer with a pad token ([PAD])")
    hidden, heads = values.get(canon("hidden_size")), values.get(canon("num_attention_heads"))
    if hidden and heads and "head_dim" not in values and hidden % heads:
        raise ConfigError(f"model.dims: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    kv = values.get("num_key_value_heads")
    if kv and heads and heads % kv:
        raise ConfigError(f"model.dims: num_attention_heads {heads} is not divisible by num_key_value_heads {kv}")
    return cls(**values)


def _unique_params(model) -> list:
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from .registry import is_encoder

    auto = AutoModelForMaskedLM if is_encoder(config) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def count_params(config_or_model, *, non_embedding: bool = False, trainable_only: bool = False) -> int:
    """Number of (unique: tied weights once) parameters of a model, or of the LM model a config builds.

    A config is instantiated on the meta device, so even a large model costs no memory.
    ``non_embedding`` leaves out token/position embeddings and an untied output head.
    """
    model = config_or_model
    if not hasattr(model, "parameters"):
        model = meta_model(config_or_model)
    params = _unique_params(model)
    if trainable_only:
        params = [p for p in params if p.requires_grad]
    ids = {id(p) for p in params}
    total = sum(p.numel() for p in params)
    if non_embedding:
        import torch.nn as nn

        skip = set()
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                skip.update(id(p) for p in mod.parameters())
        out = getattr(model, "get_output_embeddings", lambda: None)()
        if out is not None:
            skip.update(id(p) for p in out.parameters())
        total -= sum(p.numel() for p in params if id(p) in skip and id(p) in ids)
    return int(total)


def describe_presets(vocab_size: int | None = None) -> list[dict]:
    """Rows for `lmadapt presets`: name, arch, dims, block params and (given a vocab) total params."""
    rows = []
    for name, spec in PRESETS.items():
        for arch in ARCHS:
            row = {
                "size": name,
                "arch": arch,
                "nominal_params": spec["nominal_params"],
                "doc": spec["doc"],
                **spec[arch],
            }
            if vocab_size:
                cfg = scratch_config(arch, name, {}, _FakeTokenizer(vocab_size))
                row["params"] = count_params(cfg)
                row["non_embedding_params"] = count_params(cfg, non_embedding=True)
            rows.append(row)
    return rows


class _FakeTokenizer:
    """Just enough of a tokenizer for sizing: a vocabulary length and token ids 0..2."""

    def __init__(self, vocab_size: int):
        self._n = vocab_size
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 0, 1, 2

    def __len__(self) -> int:
        return self._n


def preset_table(vocab_size: int = 32000) -> str:
    """Text table for ``lmadapt presets``: dims and parameter counts at ``vocab_size``."""
    rows = describe_presets(vocab_size)
    head = (
        f"{'size':<6} {'arch':<6} {'hidden':>6} {'layers':>6} {'heads':>5} {'kv':>3} {'mlp':>5} {'ctx':>5} "
        f"{'blocks':>8} {'total':>8}  use"
    )
    lines = [
        f"scratch size presets (total at vocab {vocab_size:,}; 'blocks' = non-embedding parameters, "
        "which the name refers to)",
        "",
        head,
    ]
    for r in rows:
        lines.append(
            f"{r['size']:<6} {r['arch']:<6} {r['hidden_size']:>6} {r['num_hidden_layers']:>6} "
            f"{r['num_attention_heads']:>5} {r.get('num_key_value_heads', '-'):>3} {r['intermediate_size']:>5} "
            f"{r['max_position_embeddings']:>5} {r['non_embedding_params'] / 1e6:>7.1f}M {r['params'] / 1e6:>7.1f}M  "
            f"{r['doc'] if r['arch'] == 'llama' else ''}"
        )
    lines += [
        "",
        "override any of them with model.dims (e.g. dims: {num_hidden_layers: 4}); "
        "vocab_size always comes from the tokenizer",
    ]
    return "\n".join(lines)
