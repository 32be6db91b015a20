"""Fine-tuning's model surgery: where the weights come from (:class:`ModelSource`: a base, and a LoRA
adapter on top), which modules the base checkpoint lacks (a new head, a pooler: trained in full), and
attaching adapters (``adapter_mode: stack``: merge then a new LoRA; ``continue``: keep training it).
stages/finetune.py calls :func:`attach_adapters` once the task has built its model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config.base import ConfigError
from ..config.finetune import FinetuneConfig
from ..runtime.dist import log


@dataclass
class ModelSource:
    base: str  # folder or hub id holding full weights
    adapter: str | None  # LoRA folder to apply on top of `base`
    tokenizer: str  # folder or hub id of the tokenizer


def checkpoint_keys(folder: str | Path) -> set[str] | None:
    """Parameter names stored in a local model folder (safetensors headers only), else None."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_")]
    if not files:
        return None
    from safetensors import safe_open

    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    return keys


def new_modules(model, base: str) -> list[str]:
    """Modules whose weights the base checkpoint does not have (the new head, BERT's pooler after
    masked-LM pretraining, ...): they are trained in full next to LoRA. Without a local
    checkpoint to compare with, the registry's head names decide."""
    keys = checkpoint_keys(base) if Path(base).is_dir() else None
    prefix = getattr(model, "base_model_prefix", "")
    found: list[str] = []
    for name, _ in model.named_parameters():
        if keys is not None:
            alt = {name, name[len(prefix) + 1 :] if name.startswith(prefix + ".") else f"{prefix}.{name}"}
            if alt & keys:
                continue
        else:
            from ..models.registry import HEAD_MODULE_PREFIXES

            if name.split(".", 1)[0] not in HEAD_MODULE_PREFIXES:
                continue
        module = name.rsplit(".", 1)[0]
        if module not in found:
            found.append(module)
    return found


def _lora_target_names(model, targets: list[str] | str | None, exclude: list[str]) -> list[str] | str:
    """Full names of the modules to adapt: leaf ``targets`` (default: the registry's), minus new modules."""
    if isinstance(targets, str):
        return targets  # a regex: the user decides
    if not targets:
        from ..models.registry import lora_targets

        targets = lora_targets(model)
    leaves = set(targets)
    names = [
        n
        for n, _ in model.named_modules()
        if n
        and (n in leaves or n.rsplit(".", 1)[-1] in leaves)
        and not any(n == e or n.startswith(e + ".") for e in exclude)
    ]
    if not names:
        raise ConfigError(f"lora.target_modules: none of {sorted(leaves)} found in the model")
    return names


def load_adapter(model, folder: str, *, modules_to_save: list[str], task_type: str | None, trainable: bool):
    """Wrap ``model`` in the LoRA adapter saved in ``folder`` (same r, alpha, targets), with
    ``modules_to_save`` trained in full. Saved weights of modules this model lacks (an LM head)
    are ignored; new modules keep their fresh initialisation."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    pc = PeftConfig.from_pretrained(folder)
    present = {n for n, _ in model.named_modules()}
    saved_extra = [m for m in (pc.modules_to_save or []) if any(n == m or n.endswith("." + m) for n in present)]
    pc.modules_to_save = saved_extra + [m for m in modules_to_save if m not in saved_extra] or None
    targets = pc.target_modules
    pc.target_modules = _lora_target_names(
        model,
        sorted(targets) if isinstance(targets, (set, list)) else targets,
        [m for m in modules_to_save if m not in saved_extra],
    )
    pc.task_type, pc.inference_mode = task_type, not trainable
    model = get_peft_model(model, pc)
    state = get_peft_model_state_dict(model)  # the saved-file layout, filled with the current weights
    saved = load_peft_weights(folder)
    matched = [k for k in saved if k in state]
    if not any("lora_" in k for k in matched):
        raise ConfigError(
            f"{folder}: none of the adapter's weights fit this model (does it adapt another architecture?)"
        )
    state.update({k: saved[k] for k in matched})
    set_peft_model_state_dict(model, state)
    ignored = sorted(k for k in saved if k not in state)
    if ignored:
        log(f"adapter {folder}: {len(ignored)} saved tensors not used by this model (e.g. {ignored[0]})")
    return model


def attach_adapters(model, task, src: ModelSource, cfg: FinetuneConfig):
    """stack: merge the given adapter into the weights; continue: keep training it; then a fresh LoRA
    if asked. New modules (the head) are trained in full (``modules_to_save``)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    fresh = new_modules(model, src.base)
    task_type = getattr(task, "peft_task_type", None)
    if src.adapter and cfg.model.adapter_mode == "stack":
        model = load_adapter(model, src.adapter, modules_to_save=[], task_type=None, trainable=False).merge_and_unload()
        for p in model.parameters():  # loaded for inference (frozen): the merged model trains like any other
            p.requires_grad_(True)
        log(f"merged adapter {src.adapter} into {src.base}")
    elif src.adapter:
        model = load_adapter(model, src.adapter, modules_to_save=fresh, task_type=task_type, trainable=True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(
            f"continuing adapter {src.adapter}: {trainable:,} trainable parameters; trained in full: "
            f"{', '.join(model.peft_config['default'].modules_to_save or [])}"
        )
        return model
    if cfg.lora.enabled:
        lc = cfg.lora
        extra = []
        if lc.train_embeddings:
            emb = model.get_input_embeddings()
            extra = [n for n, mod in model.named_modules() if mod is emb]
        pc = PeftLoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            task_type=task_type,
            target_modules=_lora_target_names(model, lc.target_modules, fresh + extra),
            modules_to_save=fresh + extra,
        )
        model = get_peft_model(model, pc)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"LoRA r={lc.r}: {trainable:,} trainable parameters; trained in full: {', '.join(fresh + extra) or 'none'}")
    return model
