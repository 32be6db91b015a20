"""Load the model and tokenizer a recipe names: a folder, a hub id, a GGUF file, or a scratch preset.

    loaded = load_model(cfg.model)               # LoadedModel(model, tokenizer, objective, model_type, source)
    tok = load_tokenizer("HuggingFaceTB/SmolLM2-135M")
    supports_document_packing(loaded.model, loaded.objective)

* **Folder / hub id**: ``AutoModelForCausalLM`` or ``AutoModelForMaskedLM`` by objective (see
  :func:`registry.objective_for`), in ``cfg.dtype``, with ``cfg.attn_implementation`` (``auto``
  resolved by :func:`attention.resolve_attention`; falling back to sdpa, then eager, with a warning,
  when the model or machine does not support it).
* **LoRA adapter folder** (``adapter_config.json``, e.g. the output of a LoRA pretrain stage): its
  base model is loaded the same way, the adapter is merged in, and the result is a plain model.
* **GGUF**: dequantised once into a plain model folder under ``$LMADAPT_CACHE/gguf`` (default
  ``~/.cache/lmadapt``), keyed by file path, size and mtime; later loads reuse it.
* **Scratch**: :func:`presets.scratch_config` + ``from_config``, initialised under ``seed`` without
  touching the global RNG.

Causal models get ``config.use_cache = False``: a KV cache is useless in training, and while
one is active transformers does not detect packed documents from ``position_ids`` (they would
silently attend to each other). ``generate()`` still uses a cache via ``generation_config``.

Tokenizers without a pad token get one (see :func:`load_tokenizer`); if that grows the vocabulary,
the embeddings are resized. ``model.config.pad_token_id`` is set from the tokenizer when missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmadapt.config.base import ConfigError
from lmadapt.config.model import ModelConfig
from lmadapt.runtime import dist

from .attention import resolve_attention
from .checks import ModelLoadError, check_block_size, context_length, reading_weights
from .on_main import loaded_on_main
from .packing_probe import block_diagonal_mask, supports_document_packing  # re-exported: callers import them from here
from .quantize import quantized_load_kwargs
from .registry import PAD_TOKEN_FALLBACKS, is_encoder, model_type_of, objective_for

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    objective: str  # "causal" | "masked"
    model_type: str  # config.model_type, e.g. "llama"
    source: str  # folder, hub id, GGUF path, or "scratch:<arch>:<size>"


# --------------------------------------------------------------------------- locating things


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("org/name" or "name")."""
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or os.path.isabs(name)
        or name.count("/") > 1
        or name.endswith((".gguf", ".json", ".safetensors", ".bin"))
        or name in (".", "..")
    )


def _hub_error(what: str, name: str, exc: BaseException) -> ModelLoadError:
    try:
        from huggingface_hub import constants

        offline = constants.is_offline_mode()
    except (ImportError, AttributeError):  # pragma: no cover
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline:
        why = "and hub downloads are disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
    else:
        why = "and the hub is unreachable or has no such repository (or it is gated/private: set HF_TOKEN)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"could not load {what} {name!r}: not a local folder {why}. ({first})")


def resolve_local(name: str, what: str) -> str | None:
    """The local path for ``name``, None for a hub id; a missing local-looking path raises."""
    p = Path(os.path.expanduser(name))
    if p.exists():
        return str(p)
    if _looks_local(name):
        raise ModelLoadError(f"could not load {what} {name!r}: no such file or folder")
    return None


def hub_options(cfg: ModelConfig) -> dict:
    kw: dict[str, Any] = {}
    if cfg.revision:
        kw["revision"] = cfg.revision
    if cfg.trust_remote_code:
        kw["trust_remote_code"] = True
    return kw


# --------------------------------------------------------------------------- tokenizer


def fix_pad_token(tokenizer) -> str | None:
    """Give a tokenizer without a pad token one; returns what was done (None if nothing).

    Decoder tokenizers usually have no pad token. We reuse EOS (then UNK): padded positions are
    masked out of attention and loss, so which id fills them does not matter, and no new
    embedding row is needed. Only if neither exists is a new ``<pad>`` token added (the model's
    embeddings are then resized by :func:`load_model`).
    """
    if getattr(tokenizer, "pad_token", None) is not None:
        return None
    for attr in PAD_TOKEN_FALLBACKS:
        token = getattr(tokenizer, attr, None)
        if token is not None:
            tokenizer.pad_token = token
            return f"pad_token := {attr} {token!r}"
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return "pad_token := new token '<pad>'"


def load_tokenizer(path_or_id: str, **hub_kwargs):
    """``AutoTokenizer.from_pretrained`` with a pad token guaranteed (see :func:`fix_pad_token`).

    ``hub_kwargs`` go to ``from_pretrained`` (revision, trust_remote_code, gguf_file, ...).
    A missing folder, or a hub id that cannot be fetched, raises :class:`ModelLoadError`.
    """
    from transformers import AutoTokenizer

    name = str(path_or_id)
    local = resolve_local(name, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(local or name, **hub_kwargs)
    except (OSError, ValueError) as exc:
        if local is None:
            raise _hub_error("tokenizer", name, exc) from exc
        raise ModelLoadError(f"could not load tokenizer from {local}: {exc}") from exc
    what = fix_pad_token(tok)
    if what:
        log.info("tokenizer %s has no pad token: %s", name, what)
    return tok


# --------------------------------------------------------------------------- model


def _torch_dtype(name: str | None):
    import torch

    if name in (None, "float32"):
        return torch.float32
    if name == "auto":
        return "auto"
    return getattr(torch, _DTYPES[name])


def _attn_candidates(requested: str | None) -> list[str | None]:
    if requested is None:
        return [None]
    return [requested] + [x for x in ("sdpa", "eager") if x != requested]


def _with_attn_fallback(build, requested: str | None, what: str):
    """Call ``build(attn_implementation)``; on an unsupported kernel fall back to sdpa, then eager."""
    last: BaseException | None = None
    for impl in _attn_candidates(requested):
        try:
            model = build(impl)
        except (ValueError, ImportError, NotImplementedError, RuntimeError) as exc:
            msg = str(exc).lower()
            if not any(k in msg for k in ("attn", "attention", "flash", "sdpa", "kernel")):
                raise
            last = exc
            log.debug("attn_implementation=%s failed for %s: %s", impl, what, exc)
            continue
        if impl != requested:
            warnings.warn(
                f"{what}: attn_implementation {requested!r} is not supported here "
                f"({str(last).splitlines()[0] if last else ''}); using {impl!r}",
                stacklevel=3,
            )
        return model
    assert last is not None
    raise last


def _auto_class(objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if objective == "masked" else AutoModelForCausalLM


def _cache_root() -> Path:
    return Path(os.environ.get("LMADAPT_CACHE") or Path.home() / ".cache" / "lmadapt")


def _gguf_source(cfg: ModelConfig) -> str:
    """Local path of the GGUF file the recipe names (downloaded from the hub if needed)."""
    gguf = os.path.expanduser(cfg.gguf_file)
    if os.path.isabs(gguf) or (not cfg.path and os.path.exists(gguf)):
        if not os.path.isfile(gguf):
            raise ModelLoadError(f"model.gguf_file: GGUF file not found: {gguf}")
        return gguf
    if cfg.path:
        local = resolve_local(cfg.path, "model")
        if local is not None:
            full = Path(local) / cfg.gguf_file
            if not full.is_file():
                raise ModelLoadError(f"model.gguf_file: {cfg.gguf_file!r} not found in {local}")
            return str(full)
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(cfg.path, cfg.gguf_file, revision=cfg.revision)
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
            raise _hub_error("GGUF file", f"{cfg.path}/{cfg.gguf_file}", exc) from exc
    if os.path.isfile(gguf):
        return gguf
    raise ModelLoadError(f"model.gguf_file: GGUF file not found: {gguf}")


def gguf_cache_folder(gguf_path: str) -> Path:
    """Where the dequantised model of ``gguf_path`` is kept (by path, size and mtime)."""
    p = Path(gguf_path).resolve()
    st = p.stat()
    key = hashlib.sha1(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return _cache_root() / "gguf" / f"{p.stem}-{key}"


def _converted_gguf(gguf_path: str) -> str:
    from .convert import gguf_to_model_folder

    folder = gguf_cache_folder(gguf_path)
    if (folder / "config.json").is_file():
        return str(folder)
    log.info("dequantising %s into %s (once)", gguf_path, folder)
    return gguf_to_model_folder(gguf_path, str(folder), overwrite=True)  # our own cache folder


def adapter_base(folder: str) -> str | None:
    f = Path(folder) / "adapter_config.json"
    if not f.is_file():
        return None
    try:
        base = json.loads(f.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{f}: unreadable adapter config: {exc}") from exc
    if not base:
        raise ModelLoadError(f"{f}: adapter has no base_model_name_or_path; cannot tell which model it adapts")
    return base


def _load_pretrained(path: str, cfg: ModelConfig, requested: str, quantize: str = "none"):
    """(model, objective, model_type, source) for a folder or hub id."""
    from transformers import AutoConfig

    hub = hub_options(cfg)
    local = resolve_local(path, "model")
    if local is not None and Path(local).is_file():
        raise ModelLoadError(f"model.path: {local} is a file; give the model folder (and gguf_file for a GGUF file)")
    where = local or path

    base = adapter_base(local) if local else None
    if base is not None:
        from peft import PeftModel

        from .lora import adapter_vocab_rows

        if quantize != "none":
            raise ConfigError(
                f"lora.quantize: {quantize}: {local} is a LoRA adapter folder (merged into its base on "
                "load); quantise the base itself (model.path: the base)"
            )
        model, objective, model_type, source = _load_pretrained(base, cfg, requested)
        rows = adapter_vocab_rows(local, model)
        if rows:  # an extended vocabulary: the adapter carries the grown embeddings and head
            model.resize_token_embeddings(rows, mean_resizing=False)
        with reading_weights(local):
            model = PeftModel.from_pretrained(model, local).merge_and_unload()
        return model, objective, model_type, f"{local} (LoRA merged into {source})"

    try:
        config = AutoConfig.from_pretrained(where, **hub)
    except (OSError, ValueError) as exc:
        if local is None:
            raise _hub_error("model", path, exc) from exc
        raise ModelLoadError(f"could not load model from {local}: {exc}") from exc
    objective = objective_for(config, requested)
    auto = _auto_class(objective)
    dtype = _torch_dtype(cfg.dtype)

    def build(impl):
        kw = dict(hub, dtype=dtype, **quantized_load_kwargs(quantize))
        if impl is not None:
            kw["attn_implementation"] = impl
        return auto.from_pretrained(where, config=config, **kw)

    attn = resolve_attention(cfg.attn_implementation, causal=objective == "causal")
    try:
        with reading_weights(where):
            model = _with_attn_fallback(build, attn, where)
    except OSError as exc:
        if local is None:
            raise _hub_error("model", path, exc) from exc
        raise ModelLoadError(f"could not load model weights from {local}: {exc}") from exc
    return model, objective, config.model_type, where


def _load_scratch(cfg: ModelConfig, tokenizer, requested: str, seed: int):
    import torch

    from .presets import scratch_config

    config = scratch_config(cfg.arch, cfg.size, cfg.dims, tokenizer)
    objective = objective_for(config, requested)
    auto = _auto_class(objective)
    dtype = _torch_dtype(cfg.dtype)
    if dtype == "auto":
        dtype = torch.float32

    def build(impl):
        kw: dict[str, Any] = {"dtype": dtype}
        if impl is not None:
            kw["attn_implementation"] = impl
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return auto.from_config(config, **kw)

    attn = resolve_attention(cfg.attn_implementation, causal=objective == "causal")
    model = _with_attn_fallback(build, attn, f"scratch {cfg.arch}")
    return model, objective, config.model_type, f"scratch:{cfg.arch}:{cfg.size or 'dims'}"


def _align_with_tokenizer(model, tokenizer) -> None:
    emb = model.get_input_embeddings()
    n = len(tokenizer)
    if emb is not None and n > emb.num_embeddings:
        log.info("resizing embeddings %d -> %d for the tokenizer", emb.num_embeddings, n)
        model.resize_token_embeddings(n)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad
        gen = getattr(model, "generation_config", None)
        if gen is not None and getattr(gen, "pad_token_id", None) is None:
            gen.pad_token_id = pad


def load_model(
    cfg: ModelConfig,
    *,
    objective: str | None = None,
    for_task: None = None,
    seed: int = 42,
    quantize: str = "none",
    weights_on_main: bool = False,
) -> LoadedModel:
    """Load (or build) the model and tokenizer ``cfg`` describes; see the module doc.

    ``objective`` overrides ``cfg.objective``. ``seed`` initialises scratch models. ``quantize``
    ("4bit": ``lora.quantize``) loads a pretrained base in NF4 on this process's GPU (models.quantize).
    ``for_task`` is reserved for task heads (fine-tuning) and must be None here. ``weights_on_main``
    (a sharded run): the main process alone loads; the others get an empty model (models.on_main).
    """
    if weights_on_main and dist.world_size() > 1:
        return loaded_on_main(
            lambda: load_model(cfg, objective=objective, seed=seed, quantize=quantize), "loading the model"
        )
    if for_task is not None:
        raise NotImplementedError(
            "load_model(for_task=...) is not supported yet: task heads are built by the finetune stage"
        )
    requested = objective or cfg.objective or "auto"
    hub = hub_options(cfg)
    if quantize != "none" and cfg.init == "scratch":
        raise ConfigError(f"lora.quantize: {quantize} quantises pretrained weights; a scratch model has none to freeze")
    if cfg.init == "scratch":
        tokenizer = load_tokenizer(cfg.tokenizer)
        model, obj, mt, source = _load_scratch(cfg, tokenizer, requested, seed)
    elif cfg.gguf_file:
        gguf = _gguf_source(cfg)
        folder = _converted_gguf(gguf)
        model, obj, mt, _ = _load_pretrained(folder, cfg, requested, quantize)
        tokenizer = load_tokenizer(cfg.tokenizer or folder, **({} if cfg.tokenizer is None else hub))
        source = gguf
    else:
        model, obj, mt, source = _load_pretrained(cfg.path, cfg, requested, quantize)
        tok_from = cfg.tokenizer or (resolve_local(cfg.path, "model") or cfg.path)
        tokenizer = load_tokenizer(tok_from, **hub)
    _align_with_tokenizer(model, tokenizer)
    if obj == "causal" and getattr(model.config, "use_cache", None):
        # Training never needs a KV cache, and with one transformers ignores packed position_ids
        # (documents would attend to each other). generate() still caches (generation_config).
        model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, objective=obj, model_type=mt, source=source)


__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "check_block_size",
    "context_length",
    "reading_weights",
    "block_diagonal_mask",
    "fix_pad_token",
    "gguf_cache_folder",
    "load_model",
    "load_tokenizer",
    "model_type_of",
    "is_encoder",
    "supports_document_packing",
]
