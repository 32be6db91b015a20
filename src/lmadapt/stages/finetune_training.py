"""Fine-tuning's Trainer setup: the training sampler (class-balanced, or length-grouped), dev
metrics kept at each evaluation (the best checkpoint's are the final dev metrics), the metric that
picks the best checkpoint, and the options stages/finetune.py hands ``train.loop.run_training``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from .. import metrics as M
from ..config.finetune import FinetuneConfig
from ..runtime.dist import log
from ..train.samplers import EpochLengthGroupedSampler, EpochWeightedSampler


class FinetuneTrainer(Trainer):
    """The Trainer with one change: the training sampler (class-balanced, or length-grouped)."""

    def __init__(self, *args, sample_weights=None, group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_weights, self.group_by_length = sample_weights, group_by_length

    def _get_train_sampler(self, train_dataset=None):
        # Orders drawn from (seed, epoch), never from a generator seeded once: a resumed run must see
        # the batches the uninterrupted run saw in the epoch it resumes in (train/samplers.py).
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.sample_weights is not None:
            return EpochWeightedSampler(self.sample_weights, num_samples=len(ds), seed=self.args.seed)
        if self.group_by_length and "length" in getattr(ds, "column_names", []):
            return EpochLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=list(ds["length"]),
                seed=self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)


class DevScores(TrainerCallback):
    """The full dev metrics of every evaluation during training, by step. The best checkpoint's
    are the final dev metrics (load_best_model_at_end reloads exactly those weights), so dev is not
    scored a second time: on a 135M model on CPU that pass took as long as the test split's."""

    def __init__(self):
        self.by_step: dict[int, dict] = {}
        self.pending: dict | None = None

    def keep(self, full: dict) -> None:
        self.pending = full

    def on_evaluate(self, args, state, control, **kwargs):
        if self.pending is not None:
            self.by_step[state.global_step] = self.pending
            self.pending = None

    def for_checkpoint(self, checkpoint: str | None) -> dict | None:
        """The metrics kept at ``checkpoint`` (".../checkpoint-<step>"), if this process saw them."""
        if not checkpoint:
            return None
        step = Path(checkpoint).name.rsplit("-", 1)[-1]
        return self.by_step.get(int(step)) if step.isdigit() else None


class TaskEvalCallback(TrainerCallback):
    """For tasks without Trainer-side metrics: scores dev with ``task.evaluate`` at each evaluation
    and adds the scalars (``eval_dev_<name>``) before the Trainer picks the best checkpoint."""

    def __init__(self, task, tokenizer, examples, space, cfg, keep: Callable[[dict], None]):
        self.args = (task, tokenizer, examples, space, cfg)
        self.keep = keep

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        task, tokenizer, examples, space, cfg = self.args
        if metrics is not None and model is not None and any(k.startswith("eval_dev_") for k in metrics):
            full = task.evaluate(model, tokenizer, examples, space, cfg)
            self.keep(full)
            scores = M.scalars(full)
            extra = {f"eval_dev_{k}": v for k, v in scores.items()}
            metrics.update(extra)
            if state.log_history and "eval_dev_loss" in state.log_history[-1]:
                state.log_history[-1].update(extra)  # logged already; keep the history complete


def select_metric(task, cfg: FinetuneConfig) -> tuple[str, bool]:
    name = cfg.train.metric
    if name == "auto":
        name = task.default_metric(cfg) if hasattr(task, "default_metric") else "loss"
    return name, M.GREATER_IS_BETTER.get(name, True)


@dataclass
class TrainerOptions:
    """What the task adds to the shared training loop."""

    kwargs: dict  # FinetuneTrainer's: sampler choice, weighted loss
    dev_scores: DevScores
    callbacks: list = field(default_factory=list)
    compute_metrics: Callable | None = None  # the task's Trainer-side dev metrics, if it has them


def trainer_options(
    task, cfg: FinetuneConfig, train: list, dev: list | None, space: dict, tokenizer, metric: str, has_dev: bool
) -> TrainerOptions:
    """Class weights or balanced sampling, and the dev-side callbacks (task scoring, kept scores,
    early stopping) when there is a dev set to evaluate."""
    trainer_kwargs: dict = {"group_by_length": cfg.train.group_by_length}
    callbacks: list = []
    if cfg.data.class_weights == "balanced":
        weights = task.class_weights(train, space)
        trainer_kwargs["compute_loss_func"] = task.loss_function(space, weights)
        log("class weights: " + ", ".join(f"{lab} {w:.3f}" for lab, w in zip(space["labels"], weights.tolist())))
    if cfg.data.balanced_sampling:
        trainer_kwargs["sample_weights"] = task.sample_weights(train, space)
    dev_scores = DevScores()
    compute_metrics = (
        task.compute_metrics(space, cfg, keep=dev_scores.keep) if hasattr(task, "compute_metrics") else None
    )
    if has_dev:
        if compute_metrics is None and metric != "loss":
            callbacks.append(TaskEvalCallback(task, tokenizer, dev, space, cfg, keep=dev_scores.keep))
        callbacks.append(dev_scores)  # after TaskEvalCallback: files what it kept under the step
        if cfg.train.early_stopping_patience:
            callbacks.append(
                EarlyStoppingCallback(cfg.train.early_stopping_patience, cfg.train.early_stopping_threshold)
            )
    return TrainerOptions(
        kwargs=trainer_kwargs, dev_scores=dev_scores, callbacks=callbacks, compute_metrics=compute_metrics
    )
