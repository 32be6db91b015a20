"""The one training loop every stage shares: a thin use of ``transformers.Trainer``.

Trainer already does what we would otherwise rewrite badly: gradient accumulation, mixed
precision, gradient checkpointing, checkpoint/resume (optimizer, scheduler, RNG and data
position), and running unchanged under ``accelerate launch`` / ``torchrun`` on several processes.
This module only translates our :class:`TrainConfig` into ``TrainingArguments`` and adds our
callbacks (JSONL log, tokens/s progress bar).

    outcome = run_training(model, tokenizer, train_ds, collator, cfg.train,
                           eval_datasets={"domain": ds}, tokens_per_example=512)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from ..config.base import ConfigError
from ..config.train import TrainConfig
from .callbacks import JsonlLogCallback, TokenProgressCallback
from .dist import is_main_process, timeout_seconds, use_cpu, world_size

CHECKPOINT_DIR = "checkpoints"
# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "gradient_checkpointing")


def resolve_precision(precision: str) -> str:
    """'auto' -> bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (CPU bf16 is slow here)."""
    if precision != "auto":
        if precision in ("bf16", "fp16") and not torch.cuda.is_available():
            # bf16 on CPU works but can be ~80x slower than fp32 on CPUs without AMX/AVX512-BF16.
            return precision
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def steps_for_tokens(max_tokens: int, tokens_per_example: int, cfg: TrainConfig) -> int:
    per_step = tokens_per_example * cfg.batch_size * cfg.grad_accum * world_size()
    return max(1, math.ceil(max_tokens / per_step))


def training_arguments(cfg: TrainConfig, *, tokens_per_example: int | None = None, has_eval: bool = False,
                       metric_for_best_model: str | None = None, greater_is_better: bool | None = None,
                       eval_each_epoch: bool = False, **extra: Any) -> TrainingArguments:
    max_steps = cfg.max_steps
    if max_steps is None and cfg.max_tokens is not None:
        if not tokens_per_example:
            raise ConfigError("train.max_tokens: this stage cannot count tokens per example; use train.max_steps")
        max_steps = steps_for_tokens(cfg.max_tokens, tokens_per_example, cfg)
    precision = resolve_precision(cfg.precision)
    if eval_each_epoch:
        eval_kwargs = dict(eval_strategy="epoch", save_strategy="epoch")
    else:
        eval_kwargs = dict(
            eval_strategy="steps" if (has_eval and cfg.eval_every) else "no",
            eval_steps=cfg.eval_every,
            save_strategy="steps" if cfg.save_every else "no",
            save_steps=cfg.save_every or 500,
        )
    if metric_for_best_model:
        eval_kwargs.update(load_best_model_at_end=True, metric_for_best_model=metric_for_best_model,
                           greater_is_better=greater_is_better)
    return TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / CHECKPOINT_DIR),
        num_train_epochs=cfg.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=getattr(cfg, "eval_batch_size", None) or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type=cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps > 0 else cfg.warmup_ratio,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **{_CHECKPOINTING_ARG: cfg.gradient_checkpointing},
        logging_steps=cfg.log_every,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers,
        # TensorBoard is attached by run_training so its events land in <output_dir>/tensorboard.
        report_to=[r for r in cfg.report_to if r not in ("jsonl", "tensorboard")] or "none",
        remove_unused_columns=False,   # our collators read custom columns (position_ids, word_starts)
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,             # replaced by TokenProgressCallback
        save_only_model=False,
        use_cpu=use_cpu(),
        ddp_find_unused_parameters=False,
        ddp_timeout=timeout_seconds(),  # the same as a group lmadapt started itself (train/dist.py)
        **eval_kwargs,
        **extra,
    )


@dataclass
class TrainOutcome:
    trainer: Trainer
    global_step: int
    train_loss: float | None
    resumed_from: str | None
    log_history: list[dict] = field(default_factory=list)


def latest_checkpoint(output_dir: str | Path) -> str | None:
    ckpt_dir = Path(output_dir) / CHECKPOINT_DIR
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def _add_tensorboard(trainer: Trainer, log_dir: Path) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:  # tensorboard is optional (the `logging` extra); logs.jsonl is always written
        print("[lmadapt] tensorboard not installed; writing logs.jsonl only")
        return
    writer = SummaryWriter(log_dir=str(log_dir)) if is_main_process() else None
    trainer.add_callback(TensorBoardCallback(tb_writer=writer))


def run_training(model, tokenizer, train_dataset, collator, cfg: TrainConfig, *,
                 eval_datasets: dict | None = None, eval_collator=None,
                 tokens_per_example: int | None = None,
                 compute_metrics: Callable | None = None, metric_for_best_model: str | None = None,
                 greater_is_better: bool | None = None, eval_each_epoch: bool = False,
                 callbacks: list | None = None, trainer_cls: type[Trainer] = Trainer,
                 trainer_kwargs: dict | None = None) -> TrainOutcome:
    """Train ``model`` on ``train_dataset``; returns once done (or max_steps reached)."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    args = training_arguments(cfg, tokens_per_example=tokens_per_example, has_eval=bool(eval_datasets),
                              metric_for_best_model=metric_for_best_model, greater_is_better=greater_is_better,
                              eval_each_epoch=eval_each_epoch,
                              # without metrics, keeping every eval logit (vocab x tokens) only costs memory
                              prediction_loss_only=compute_metrics is None)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        **(trainer_kwargs or {}),
    )
    if eval_collator is not None:
        trainer.eval_data_collator = eval_collator  # used by the thin subclass in stages that need it
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(JsonlLogCallback(Path(cfg.output_dir) / "logs.jsonl"))
    trainer.add_callback(TokenProgressCallback())
    if "tensorboard" in cfg.report_to:
        _add_tensorboard(trainer, Path(cfg.output_dir) / "tensorboard")
    for cb in callbacks or []:
        trainer.add_callback(cb)

    resume = None
    if cfg.resume:
        resume = latest_checkpoint(cfg.output_dir)
        if resume is None and is_main_process():
            print(f"[lmadapt] resume: no checkpoint in {Path(cfg.output_dir) / CHECKPOINT_DIR}; starting fresh")
    result = trainer.train(resume_from_checkpoint=resume)
    return TrainOutcome(trainer=trainer, global_step=trainer.state.global_step,
                        train_loss=getattr(result, "training_loss", None), resumed_from=resume,
                        log_history=list(trainer.state.log_history))
