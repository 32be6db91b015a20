"""LoRA adapters (peft) and saving a trained model, adapter or merged.

    model = apply_lora(model, cfg.lora, objective)       # a peft model; only adapters trainable
    save_model(model, tokenizer, out_dir, merge=cfg.lora.merge)

Targets default to :func:`registry.lora_targets` (all attention + MLP projections). Output heads
are never adapted (BERT's MLM head has a ``dense`` layer too): they are task specific. With
``train_embeddings`` the input embeddings and the output head are trained in full
(``modules_to_save``); when the model ties them, peft keeps them tied (``ensure_weight_tying``)
where it recognises the names (Llama, GPT-2); BERT's head is then trained as an untied copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmadapt.config.base import ConfigError
from lmadapt.config.model import LoraConfig

from .quantize import prepare_quantized
from .registry import all_linear_targets, is_head_module, is_linear_like, lora_targets

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _module_name(model, module) -> str | None:
    if module is None:
        return None
    for name, mod in model.named_modules():
        if mod is module and name:
            return name
    return None


def embedding_module_names(model) -> list[str]:
    """Full dotted names of the input embeddings and the output head (when it is a separate module)."""
    names = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, getter, lambda: None)()
        name = _module_name(model, mod)
        if name and name not in names:
            names.append(name)
    return names


def _peft_embedding_names() -> list[str]:
    try:
        from peft.utils.constants import EMBEDDING_LAYER_NAMES
    except ImportError:  # pragma: no cover
        return ["embed_tokens", "lm_head"]
    return list(EMBEDDING_LAYER_NAMES)


def _ties_embeddings(model) -> bool:
    inp = getattr(model, "get_input_embeddings", lambda: None)()
    out = getattr(model, "get_output_embeddings", lambda: None)()
    return inp is not None and out is not None and inp.weight is out.weight


def apply_lora(model, lcfg: LoraConfig, objective: str):
    """Wrap ``model`` with LoRA adapters as ``lcfg`` says; returns the peft model.

    ``objective`` "causal" uses peft's CAUSAL_LM task type; "masked" none (a plain PeftModel,
    whose forward passes every argument through, 4D masks included).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = list(lcfg.target_modules) if lcfg.target_modules else lora_targets(model)
    if targets == ["all-linear"]:  # peft's shorthand: every Linear/Conv1D except the output layer
        targets = all_linear_targets(model)
    named = [(n, m) for n, m in model.named_modules() if n]
    leaves = {n.rsplit(".", 1)[-1] for n, _ in named}
    unknown = [t for t in targets if t not in leaves and not any(n.endswith("." + t) or n == t for n, _ in named)]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in named if is_linear_like(m)})
        raise ConfigError(
            f"lora.target_modules: {', '.join(map(repr, unknown))} not found in "
            f"{type(model).__name__}; its linear layers are: {', '.join(linear)}"
        )

    def targeted(name: str) -> bool:
        return any(name == t or name.endswith("." + t) for t in targets)

    chosen = [(n, m) for n, m in named if targeted(n)]
    # Heads are left alone unless the user named them explicitly (full name).
    exclude = [n for n, _ in chosen if is_head_module(n) and n not in targets]
    fan_in_fan_out = any(isinstance(m, Conv1D) for n, m in chosen if n not in exclude)

    modules_to_save = embedding_module_names(model) if lcfg.train_embeddings else None
    kwargs: dict[str, Any] = {}
    if modules_to_save and _ties_embeddings(model):
        # peft can keep a tied head tied only when it recognises the module names (embed_tokens /
        # lm_head); otherwise (BERT: word_embeddings / cls.predictions.decoder) both are trained as
        # separate copies and the merged model is saved untied (tie_word_embeddings: false).
        if any(n.rsplit(".", 1)[-1] in _peft_embedding_names() for n in modules_to_save):
            kwargs["ensure_weight_tying"] = True
        else:
            log.warning(
                "lora.train_embeddings: %s ties its output head to the input embeddings, but peft "
                "cannot keep them tied for modules %s; both are trained as separate copies",
                type(model).__name__,
                modules_to_save,
            )
    pcfg = PeftLoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=targets,
        exclude_modules=exclude or None,
        modules_to_save=modules_to_save,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM" if objective == "causal" else None,
        bias="none",
        **kwargs,
    )
    model = prepare_quantized(model)  # QLoRA (lora.quantize): fp32 norms, input gradients; else a no-op
    peft_model = get_peft_model(model, pcfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d on %s: %d of %d parameters trainable (%.2f%%)",
        lcfg.r,
        ", ".join(targets),
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return peft_model


def adapter_vocab_rows(folder: str | Path, model) -> int | None:
    """Rows of the embeddings an adapter folder carries (``modules_to_save`` after a vocabulary
    extension), when more than ``model`` has: the base must be resized to them before the adapter
    loads (peft does not; the load fails on the shape). None when nothing needs resizing."""
    from safetensors import safe_open

    path = Path(folder) / "adapter_model.safetensors"
    leaves = {n.rsplit(".", 1)[-1] for n in embedding_module_names(model)}
    rows = model.get_input_embeddings().num_embeddings
    if not path.is_file() or not leaves:
        return None
    found = None
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            parts = key.split(".")
            if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in leaves:
                shape = fh.get_slice(key).get_shape()
                if len(shape) == 2 and shape[0] > rows:
                    found = max(found or 0, int(shape[0]))
    return found


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_model(model, tokenizer, output_dir: str, *, merge: bool) -> None:
    """Save ``model`` (safetensors) and ``tokenizer`` into ``output_dir`` (created if needed).

    A peft model is saved as an adapter folder (``adapter_config.json`` +
    ``adapter_model.safetensors``), or with ``merge`` the adapters are merged into the weights and
    a full model is saved. Merging happens *in place* (``merge_and_unload``): the wrapped model
    then computes exactly what the merged one does. A plain model is saved in full; ``merge`` is
    ignored for it. Other files in ``output_dir`` (recipe, meta, metrics) are left alone.
    """
    with staged_folder(output_dir) as out:
        if is_peft_model(model):
            if merge:
                merged = model.merge_and_unload()
                merged.save_pretrained(str(out))
            else:
                model.save_pretrained(str(out), safe_serialization=True)
        else:
            model.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        stray = sorted(p.name for p in out.glob("*.bin"))
        if stray:  # pragma: no cover - transformers/peft write safetensors by default
            raise RuntimeError(f"{out}: unexpected pickle weight files {stray}; expected safetensors only")


@contextmanager
def staged_folder(output_dir: str | Path):
    """Yields a temporary folder inside ``output_dir``; once the block succeeds its files are renamed
    into ``output_dir``. A kill or a full disk while writing (the slow part) leaves ``output_dir`` as it
    was: never an empty config.json, or weights without their tokenizer (seen before). Each rename is
    atomic; only a kill within the few renames at the end can leave a mix of old and new files."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".saving-*"):  # left by a save that was killed
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=out))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())  # the bytes are on disk before the names are
        for f in sorted(tmp.iterdir()):
            dest = out / f.name
            if dest.is_dir() and not f.is_dir():
                shutil.rmtree(dest)
            elif f.is_dir() and dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
