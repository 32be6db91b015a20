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

from ..config.base import ConfigError
from ..config.train import TrainConfig
from .callbacks import JsonlLogCallback, TokenProgressCallback
from .resume_state import DatasetEpoch, ResumeExactly, RunSegments, find_callback
from .checkpoints import AtomicCheckpoints, newest_complete_checkpoint, resumable_by
from .guard import GuardedTrainer, RollBack, StepGuard, TrainingDiverged
from .schedules import StableEndCheckpoint, extension_checkpoint, scheduler_arguments, stable_end
from ..runtime.dist import broadcast, is_main_process, log, resolve_precision, timeout_seconds, use_cpu, world_size
from .fsdp import ShardedCheckpoints, is_sharded, loss_across_processes, shard_model, wants_sharding
from .flops import device_peak_flops, flops_per_token
from .loss import LMHeadLoss
from .micro_batch import choose_micro_batch
from .speed import fast_trainer_class, prepare_speed
from .zero3 import remember

CHECKPOINT_DIR = "checkpoints"
# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
_CHECKPOINTING_ARG = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def steps_for_tokens(max_tokens: int, tokens_per_example: int, cfg: TrainConfig) -> int:
    per_step = tokens_per_example * cfg.batch_size * cfg.grad_accum * world_size()
    return max(1, math.ceil(max_tokens / per_step))


def training_arguments(
    cfg: TrainConfig,
    *,
    tokens_per_example: int | None = None,
    has_eval: bool = False,
    metric_for_best_model: str | None = None,
    greater_is_better: bool | None = None,
    eval_each_epoch: bool = False,
    **extra: Any,
) -> TrainingArguments:
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
        eval_kwargs.update(
            load_best_model_at_end=True,
            metric_for_best_model=metric_for_best_model,
            greater_is_better=greater_is_better,
        )
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
        **scheduler_arguments(cfg, max_steps),
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
        remove_unused_columns=False,  # our collators read custom columns (position_ids, word_starts)
        include_num_input_tokens_seen="non_padding",
        # A resume restores the callbacks' saved state too (early-stopping patience, the run's segments):
        # without it a resumed fine-tune could stop at another epoch than the uninterrupted run.
        restore_callback_states_from_checkpoint=True,
        disable_tqdm=True,  # replaced by TokenProgressCallback
        save_only_model=False,
        # The filter hides a NaN loss behind the running mean (logged "loss 0.0") and syncs the host every
        # micro-batch; the step guard (guard.py) checks on the device instead. Kept where steps are skipped.
        logging_nan_inf_filter=cfg.nan_policy == "skip",
        use_cpu=use_cpu(),
        ddp_find_unused_parameters=False,
        ddp_timeout=timeout_seconds(),  # the same as a group lmadapt started itself (runtime/dist.py)
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
    speed: dict = field(default_factory=dict)  # loss, compiled blocks, kernels, flops_per_token, peak_flops
    run: dict = field(default_factory=dict)  # the whole run over its resumed parts (resume_state.RunSegments)


def latest_checkpoint(output_dir: str | Path, *, set_aside: bool = False, say=lambda msg: None) -> str | None:
    """The newest checkpoint a resume can load (checkpoints.py); incomplete newer ones are reported."""
    return newest_complete_checkpoint(Path(output_dir) / CHECKPOINT_DIR, set_aside=set_aside, say=say)


def guarded(trainer_cls: type[Trainer]) -> type[Trainer]:
    """``trainer_cls`` with atomic checkpoints and the step guard (thin mixins over any Trainer subclass)."""
    return type(f"Guarded{trainer_cls.__name__}", (AtomicCheckpoints, GuardedTrainer, ResumeExactly, trainer_cls), {})


def _train_with_rollback(trainer: Trainer, cfg: TrainConfig, resume: str | None):
    """trainer.train, rolled back to the newest complete checkpoint when the guard asks (guard.py)."""
    for _ in range(4):
        try:
            return trainer.train(resume_from_checkpoint=resume)
        except RollBack as rb:
            resume = latest_checkpoint(cfg.output_dir)
            start = int(Path(resume).name.split("-")[1]) if resume else None
            if start is None or start >= rb.step:
                raise TrainingDiverged(
                    f"train.max_bad_steps: {cfg.max_bad_steps} steps skipped by step {rb.step} "
                    "(steps " + ", ".join(map(str, trainer.guard.skipped[-10:])) + ") and no "
                    "earlier checkpoint to roll back to; lower train.lr or set train.save_every"
                )
            trainer.guard.skip_ranges.append((start + 1, rb.step))
            print(
                f"[lmadapt] train: rolling back to {Path(resume).name} after {cfg.max_bad_steps} bad steps; "
                f"the batches of steps {start + 1}-{rb.step} are skipped",
                flush=True,
            )
    raise TrainingDiverged(f"train: still diverging after 3 rollbacks (skipped steps {trainer.guard.skipped[-10:]})")


def _add_tensorboard(trainer: Trainer, log_dir: Path) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:  # tensorboard is optional (the `logging` extra); logs.jsonl is always written
        print("[lmadapt] tensorboard not installed; writing logs.jsonl only")
        return
    writer = SummaryWriter(log_dir=str(log_dir)) if is_main_process() else None
    trainer.add_callback(TensorBoardCallback(tb_writer=writer))


def _choose_resume(cfg: TrainConfig, max_steps: int) -> str | None:
    """Main process: the newest complete checkpoint (incomplete newer ones named and set aside)."""
    resume = latest_checkpoint(cfg.output_dir, set_aside=True, say=log)
    resume = extension_checkpoint(
        cfg, Path(cfg.output_dir) / CHECKPOINT_DIR, resume, max_steps if max_steps > 0 else None, say=log
    )
    log(
        f"resume: from {Path(resume).name}"
        if resume
        else f"resume: no complete checkpoint in {Path(cfg.output_dir) / CHECKPOINT_DIR}; starting fresh"
    )
    return resume


def _speed_and_sharding(
    model, cfg: TrainConfig, args: TrainingArguments, trainer_cls: type[Trainer], trainer_kwargs: dict | None
):
    """(model, Trainer class, its extra arguments, SpeedPlan): the guard, the speed plan's loss and kernels,
    and FSDP2 sharding with its checkpoints, as run_training builds the Trainer from them."""
    trainer_cls = guarded(trainer_cls)
    # Fused loss, compiled blocks, Liger kernels (train/speed.py); a sharded model computes the fused
    # loss inside its forward, where FSDP2 holds the head's weight whole (train/loss.py).
    speed = prepare_speed(model, cfg, sharded=wants_sharding(cfg) or is_sharded(model))
    trainer_cls = fast_trainer_class(trainer_cls)
    if speed.loss != "standard":
        trainer_kwargs = {**(trainer_kwargs or {}), "compute_loss_func": LMHeadLoss(model, speed.loss)}
    log("speed: " + "; ".join(speed.notes))
    if wants_sharding(cfg) or is_sharded(model):
        model = shard_model(model, cfg)  # no-op when the stage sharded it already (to score it before training)
        trainer_cls = type(f"Sharded{trainer_cls.__name__}", (ShardedCheckpoints, trainer_cls), {})
        args.save_only_model = True  # the Trainer's condition for a model sharded before it (flipped back below)
    if world_size() > 1 or is_sharded(model):
        trainer_kwargs = loss_across_processes(model, trainer_kwargs)
    return model, trainer_cls, trainer_kwargs, speed


def _add_callbacks(
    trainer: Trainer,
    model,
    cfg: TrainConfig,
    args: TrainingArguments,
    tokens_per_example: int | None,
    callbacks: list | None,
):
    """Our callbacks in their order (logs, progress with MFU, TensorBoard, the stage's, the guard, the
    stable-phase checkpoint, then the resume bookkeeping last); (flops per token, peak FLOPs, its source)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(JsonlLogCallback(Path(cfg.output_dir) / "logs.jsonl"))
    try:
        fpt = flops_per_token(model, tokens_per_example)
    except ValueError:  # a config without layer/width names: no MFU, training unchanged
        fpt = None
    peak, peak_source = device_peak_flops(resolve_precision(cfg.precision))
    peak = peak * world_size() if peak else None  # tokens/s counts every process's tokens
    trainer.add_callback(TokenProgressCallback(flops_per_token=fpt, peak_flops=peak))
    if "tensorboard" in cfg.report_to:
        _add_tensorboard(trainer, Path(cfg.output_dir) / "tensorboard")
    for cb in callbacks or []:
        trainer.add_callback(cb)
    trainer.guard = StepGuard(cfg.nan_policy, cfg.max_bad_steps, cfg.spike_factor, lr=cfg.lr)
    if cfg.scheduler == "wsd" and args.max_steps > 0:
        trainer.add_callback(StableEndCheckpoint(stable_end(cfg, args.max_steps)))
    # Last: RunSegments must see should_save after every callback that may set it (resume_state.py).
    trainer.add_callback(DatasetEpoch())
    trainer.add_callback(RunSegments())
    return fpt, peak, peak_source


def run_training(
    model,
    tokenizer,
    train_dataset,
    collator,
    cfg: TrainConfig,
    *,
    eval_datasets: dict | None = None,
    eval_collator=None,
    tokens_per_example: int | None = None,
    compute_metrics: Callable | None = None,
    metric_for_best_model: str | None = None,
    greater_is_better: bool | None = None,
    eval_each_epoch: bool = False,
    callbacks: list | None = None,
    trainer_cls: type[Trainer] = Trainer,
    trainer_kwargs: dict | None = None,
) -> TrainOutcome:
    """Train ``model`` on ``train_dataset``; returns once done (or max_steps reached)."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    args = training_arguments(
        cfg,
        tokens_per_example=tokens_per_example,
        has_eval=bool(eval_datasets),
        metric_for_best_model=metric_for_best_model,
        greater_is_better=greater_is_better,
        eval_each_epoch=eval_each_epoch,
        # without metrics, keeping every eval logit (vocab x tokens) only costs memory
        prediction_loss_only=compute_metrics is None,
    )
    model, trainer_cls, trainer_kwargs, speed = _speed_and_sharding(model, cfg, args, trainer_cls, trainer_kwargs)
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
    if is_sharded(model):
        trainer.args.save_only_model = False  # ShardedCheckpoints writes optimizer and scheduler (DCP) too
    if eval_collator is not None:
        trainer.eval_data_collator = eval_collator  # used by the thin subclass in stages that need it
    fpt, peak, peak_source = _add_callbacks(trainer, model, cfg, args, tokens_per_example, callbacks)
    if cfg.micro_batch == "auto":  # largest micro-batch that fits (train/micro_batch.py)
        micro, accum = choose_micro_batch(trainer, train_dataset, say=log)
        log(
            f"train.micro_batch auto: {micro} x {accum} accumulation (batch_size x grad_accum "
            f"{cfg.batch_size} x {cfg.grad_accum} kept)"
        )
    resume = broadcast(_choose_resume(cfg, args.max_steps) if cfg.resume and is_main_process() else None)
    if resume:
        resumable_by(resume, world_size())
    result = _train_with_rollback(trainer, cfg, resume)
    remember(trainer)  # DeepSpeed ZeRO-3: later scoring re-partitions through its engine (train/zero3.py)
    # The whole run: a resumed run's own train() covers only its last part.
    run = find_callback(trainer, RunSegments).whole_run(trainer.state, getattr(result, "training_loss", None))
    return TrainOutcome(
        trainer=trainer,
        global_step=trainer.state.global_step,
        train_loss=run["train_loss"],
        resumed_from=resume,
        run=run,
        log_history=list(trainer.state.log_history),
        speed={**speed.summary(), "flops_per_token": fpt, "peak_flops": peak, "peak_source": peak_source},
    )
