"""`lmadapt finetune`: supervised fine-tuning for any task in ``TASKS``; setup -> train -> evaluate -> save.

    cfg = load_recipe(FinetuneConfig, "finetune.yaml", ["data.max_examples=300", "train.seed=1"])
    metrics = run_finetune(cfg, to_dict(cfg))

The stage is task-agnostic: the task (tasks/classification.py is the reference) reads the
labeled files, defines the label space, builds the model with its head, encodes, collates and
scores. This file only wires them to the shared training loop and writes the output folder:

    model.safetensors (or adapter_model.safetensors + config.json), tokenizer files,
    lmadapt_recipe.yaml, lmadapt_meta.json (stage "finetune", task, parent), metrics.json (dev/test)

Starting points (``model.path`` / ``model.adapter``): a plain model folder or hub id, a full
model from `lmadapt pretrain`, or a LoRA adapter folder from it. An adapter is either merged into
its base and trained further (``adapter_mode: stack``; a new LoRA when ``lora.enabled``) or kept
training as it is (``continue``). Either way the task head is new and is trained in full, as is
any module the base checkpoint did not have (e.g. BERT's pooler after masked-LM pretraining).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import set_seed

from .. import metrics as M
from ..config.base import ConfigError, to_dict
from ..config.finetune import ADAPTER_FILE, FinetuneConfig
from ..models.load import reading_weights
from ..models.on_main import model_on_main
from ..tasks import TASKS
from ..tasks.base import DataError, Example, ReadReport
from ..runtime.dist import is_main_process, log
from ..train.fsdp import check_launch
from ..train.fsdp import save_whole, wants_sharding
from ..train.loop import CHECKPOINT_DIR, run_training
from ..train.flops import speed_metrics
from ..runtime.run_folder import prepare_output_dir
from ..runtime.outputs import read_json, read_meta, update_metrics, write_meta, write_recipe
from .finetune_adapters import ModelSource, attach_adapters
from .finetune_data import log_splits, read_splits, report_dict
from .finetune_training import FinetuneTrainer, select_metric, trainer_options


# --- where the model comes from ----------------------------------------------------------------


def _has_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def base_of_adapter(folder: str | Path) -> str:
    """The base model under a LoRA folder: our meta (``lora_base``, else ``parent``), else peft's
    ``base_model_name_or_path``; the first one that exists locally wins."""
    meta = read_meta(folder)
    peft_cfg = read_json(Path(folder) / ADAPTER_FILE, default={}) or {}
    candidates = [c for c in (meta.get("lora_base"), meta.get("parent"), peft_cfg.get("base_model_name_or_path")) if c]
    if not candidates:
        raise ConfigError(
            f"{folder}: a LoRA adapter without a known base model (no parent in {folder}/lmadapt_meta.json "
            f"and no base_model_name_or_path in {ADAPTER_FILE}); give the base as model.path and "
            "this folder as model.adapter"
        )
    return next((c for c in candidates if Path(c).is_dir()), candidates[0])


def resolve_source(cfg: FinetuneConfig) -> ModelSource:
    m = cfg.model
    path_is_adapter = (Path(m.path) / ADAPTER_FILE).is_file()
    if path_is_adapter and m.adapter:
        raise ConfigError(
            f"model.path: {m.path} is itself a LoRA adapter folder; give its base as model.path or drop model.adapter"
        )
    adapter = m.adapter or (m.path if path_is_adapter else None)
    base = base_of_adapter(adapter) if path_is_adapter else m.path
    tokenizer = m.tokenizer or (adapter if adapter and _has_tokenizer(adapter) else base)
    return ModelSource(base=base, adapter=adapter, tokenizer=tokenizer)


def load_tokenizer(path: str, cfg: FinetuneConfig):
    try:
        from ..models.load import load_tokenizer as shared
    except ImportError:
        shared = None
    m = cfg.model
    kw = {k: v for k, v in (("revision", m.revision), ("gguf_file", m.gguf_file if path == m.path else None)) if v}
    if m.trust_remote_code:
        kw["trust_remote_code"] = True
    if shared is not None:
        return shared(path, **kw)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kw)


def align_pad_token(tokenizer, model) -> None:
    """Give the tokenizer a pad token (decoder tokenizers often lack one: EOS, else UNK, per the
    registry) and copy its id into the model config: sequence heads of decoders pool the last
    token that is not padding, so the two must agree. Saved with the output folder."""
    if tokenizer.pad_token is None:
        try:
            from ..models.registry import PAD_TOKEN_FALLBACKS
        except ImportError:
            PAD_TOKEN_FALLBACKS = ("eos_token", "unk_token")
        for attr in PAD_TOKEN_FALLBACKS:
            if getattr(tokenizer, attr, None) is not None:
                tokenizer.pad_token = getattr(tokenizer, attr)
                break
        else:
            raise ConfigError("the tokenizer has no pad, eos or unk token to pad batches with")
    emb = model.get_input_embeddings()
    if emb is not None and len(tokenizer) > emb.num_embeddings:  # a pad token added by the loader
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def load_task_model(task, src: ModelSource, space: dict, cfg: FinetuneConfig, tokenizer):
    """The task's model on ``src.base``, its pad token aligned with ``tokenizer``. Sharded, the main
    process alone loads and the others hold an empty copy until sharding fills it (models.on_main);
    an existing adapter (``src.adapter``) is loaded into the whole model on every process instead."""

    def load():
        model = task.load_model(src.base, space, cfg)
        align_pad_token(tokenizer, model)  # any resize happens before the others copy the shapes
        return model

    if not (wants_sharding(cfg.train) and not src.adapter):
        return load()
    model = model_on_main(load, "loading the model")
    align_pad_token(tokenizer, model)  # the others' tokenizer (the shapes are the main process's already)
    return model


# --- saving -------------------------------------------------------------------------------------


def save_output(model, tokenizer, out: Path, *, keep_adapter: bool) -> bool:
    """Full model (LoRA merged) or, with ``keep_adapter``, the adapter plus the config (label maps,
    head class) needed to rebuild it on its base. Returns whether an adapter folder was written."""
    from peft import PeftModel

    from ..models.lora import staged_folder

    with staged_folder(out) as tmp:  # files appear complete or not at all
        if isinstance(model, PeftModel):
            if keep_adapter:
                model.save_pretrained(str(tmp))
                base = model.get_base_model()
                base.config.architectures = [type(base).__name__]  # else still the parent's class (e.g. ...ForMaskedLM)
                base.config.save_pretrained(str(tmp))
                tokenizer.save_pretrained(str(tmp))
                return True
            model = model.merge_and_unload()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return False


# --- the stage ----------------------------------------------------------------------------------


def run_finetune(cfg: FinetuneConfig, recipe_dict: dict | None = None) -> dict:
    """Fine-tune one model on one task; returns the metrics written to metrics.json."""
    check_launch(cfg.train)
    t_start = time.time()
    task = TASKS[cfg.task.type]
    out = prepare_output_dir(
        cfg.train.output_dir,
        resume=cfg.train.resume,
        overwrite=cfg.train.overwrite,
        recipe=recipe_dict if recipe_dict is not None else to_dict(cfg),
    )
    set_seed(cfg.train.seed)

    # --- setup: data, model, encoded splits --------------------------------------------------
    splits, reports, space = read_splits(task, cfg)
    log_splits(task, splits, reports, space)
    src, tokenizer, model = _setup_model(task, space, cfg)
    train_ds, dev_ds = _encode(task, splits, tokenizer, space, cfg, reports)
    collator = task.collator(tokenizer, cfg)
    if is_main_process():
        write_recipe(out, recipe_dict if recipe_dict is not None else to_dict(cfg))

    # --- train -------------------------------------------------------------------------------
    metric, greater = select_metric(task, cfg)
    opts = trainer_options(
        task, cfg, splits["train"], splits.get("dev"), space, tokenizer, metric, has_dev=dev_ds is not None
    )
    t_train = time.time()
    outcome = run_training(
        model,
        tokenizer,
        train_ds,
        collator,
        cfg.train,
        eval_datasets={"dev": dev_ds} if dev_ds is not None else None,
        compute_metrics=opts.compute_metrics if dev_ds is not None else None,
        metric_for_best_model=f"dev_{metric}" if dev_ds is not None else None,
        greater_is_better=greater,
        eval_each_epoch=dev_ds is not None,
        callbacks=opts.callbacks,
        trainer_cls=FinetuneTrainer,
        trainer_kwargs=opts.kwargs,
    )
    # The whole run: the parts before a resume (up to the checkpoint it resumed from) count too.
    train_seconds = time.time() - t_train + outcome.run.get("earlier_seconds", 0.0)
    model = outcome.trainer.model
    state = outcome.trainer.state

    # --- evaluate ----------------------------------------------------------------------------
    kept = opts.dev_scores.for_checkpoint(state.best_model_checkpoint)
    results = _evaluate(task, model, tokenizer, splits, space, cfg, reports, kept, state.best_model_checkpoint)
    metrics = _metrics(
        task,
        cfg,
        space,
        splits,
        reports,
        results,
        selection=_selection(state, metric, greater, kept),
        train=_train_summary(outcome, cfg, train_seconds, t_start),
    )
    _save(model, tokenizer, out, cfg, task=task, src=src, space=space, metric=metric, metrics=metrics)
    return metrics


# --- the steps, in the order run_finetune takes them -------------------------------------------


def _setup_model(task, space: dict, cfg: FinetuneConfig) -> tuple[ModelSource, object, object]:
    """Where the weights come from, the tokenizer, and the task's model with any adapters attached."""
    src = resolve_source(cfg)
    tokenizer = load_tokenizer(src.tokenizer, cfg)
    with reading_weights(src.adapter or src.base):  # a damaged weights file: one line naming the folder
        model = load_task_model(task, src, space, cfg, tokenizer)
        model = attach_adapters(model, task, src, cfg)
    if cfg.train.gradient_checkpointing:
        model.config.use_cache = False
    return src, tokenizer, model


def _encode(
    task, splits: dict[str, list[Example]], tokenizer, space: dict, cfg: FinetuneConfig, reports: dict[str, ReadReport]
):
    """The train and dev datasets (dev None without a dev split); truncation counted in the reports."""
    train, dev = splits["train"], splits.get("dev")
    train_ds = task.encode(train, tokenizer, space, cfg, reports["train"])
    dev_ds = task.encode(dev, tokenizer, space, cfg, reports["dev"]) if dev else None
    for name in ("train", "dev"):
        if reports.get(name) and reports[name].truncated:
            log(f"{name}: {reports[name].truncated} examples cut to model.max_length={cfg.model.max_length}")
    return train_ds, dev_ds


def _evaluate(
    task,
    model,
    tokenizer,
    splits: dict[str, list[Example]],
    space: dict,
    cfg: FinetuneConfig,
    reports: dict[str, ReadReport],
    kept: dict | None,
    best_checkpoint: str | None,
) -> dict:
    """dev and test metrics; dev is the best checkpoint's evaluation when it was kept (DevScores)."""
    results: dict = {}
    for name, examples in (("dev", splits.get("dev")), ("test", splits.get("test"))):
        if not examples:
            continue
        if name == "dev" and kept is not None:
            results[name] = {**kept, "truncated": kept.get("truncated", reports["dev"].truncated)}
            log(
                f"dev metrics (the best checkpoint's, {Path(best_checkpoint).name}):\n"
                + M.format_metrics(results[name], title=name)
            )
            continue
        results[name] = task.evaluate(model, tokenizer, examples, space, cfg)
        log(f"{name} metrics:\n" + M.format_metrics(results[name], title=name))
    return results


def _metrics(
    task,
    cfg: FinetuneConfig,
    space: dict,
    splits: dict[str, list[Example]],
    reports: dict[str, ReadReport],
    results: dict,
    *,
    selection: dict,
    train: dict,
) -> dict:
    """metrics.json: the stage, its selection, the dev/test results, the labels, the data read, the training."""
    return {
        "stage": "finetune",
        "task": task.name,
        "problem": cfg.task.problem if task.name == "classification" else None,
        "selection": selection,
        **results,
        "labels": space.get("labels"),
        "data": {
            "examples": {k: len(v) for k, v in splits.items()},
            "max_examples": cfg.data.max_examples,
            "reports": report_dict(reports),
        },
        "train": train,
    }


def _selection(state, metric: str, greater: bool, kept: dict | None) -> dict:
    """How the kept checkpoint was chosen."""
    epochs_run = [round(e["epoch"], 3) for e in state.log_history if "eval_dev_loss" in e]
    return {
        "metric": metric,
        "greater_is_better": greater,
        "best_value": state.best_metric,
        "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        "evaluated_epochs": epochs_run,
        "dev_scored": "at the best checkpoint's evaluation" if kept is not None else "after training",
    }


def _train_summary(outcome, cfg: FinetuneConfig, train_seconds: float, t_start: float) -> dict:
    state = outcome.trainer.state
    return {
        "steps": outcome.global_step,
        "epochs": state.epoch,
        "train_loss": outcome.train_loss,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.time() - t_start, 2),
        "resumed_from": outcome.resumed_from,
        "parts": outcome.run.get("parts", 1),
        "tokens_seen": int(state.num_input_tokens_seen or 0),  # non-padding input tokens
        "speed": speed_metrics(outcome.speed, (state.num_input_tokens_seen or 0) / max(train_seconds, 1e-9)),
        "stopped_early": bool(cfg.train.early_stopping_patience)
        and state.epoch is not None
        and state.epoch < cfg.train.epochs - 1e-6
        and cfg.train.max_steps is None,
    }


def _save(
    model, tokenizer, out: Path, cfg: FinetuneConfig, *, task, src: ModelSource, space: dict, metric: str, metrics: dict
) -> None:
    merged_base_only_in_memory = bool(src.adapter) and cfg.model.adapter_mode == "stack"
    keep_adapter = not cfg.lora.merge and not merged_base_only_in_memory
    written: list = []  # sharded: streamed shard by shard (a LoRA adapter gathered to the main process)
    save_whole(
        model, tokenizer, out, lambda m: written.append(save_output(m, tokenizer, out, keep_adapter=keep_adapter))
    )
    if is_main_process():
        is_adapter = bool(written and written[0])
        write_meta(
            out,
            stage="finetune",
            task=task.name,
            problem=metrics["problem"],
            model_type=getattr(model.config, "model_type", None),
            parent=cfg.model.path,
            adapter=src.adapter,
            adapter_mode=cfg.model.adapter_mode if src.adapter else None,
            lora=is_adapter,
            lora_base=src.base if is_adapter else None,
            labels=space.get("labels"),
            metric=metric,
        )
        update_metrics(out, _json_safe(metrics))
        if not cfg.train.keep_checkpoints:
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        log(f"saved {out}")


def _json_safe(x):
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


__all__ = [
    "run_finetune",
    "resolve_source",
    "read_splits",
    "attach_adapters",
    "save_output",
    "ModelSource",
    "DataError",
]
