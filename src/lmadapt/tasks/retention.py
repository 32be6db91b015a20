"""Instruction retention: does an instruction-tuned model still answer instructions after continued
pretraining? Response loss (and optionally exact match of greedy generations) on a small held-out
instruction set, rendered exactly as instruction fine-tuning renders it (tasks/instruction.py: the
tokenizer's chat template, or the plain ### Instruction / ### Response layout).

Scored before and after a pretraining stage (pipeline ``evaluation.instruction_retention``) and at
every weight of a merge sweep (``merge.budget_metric: instruction_loss``).
"""

from __future__ import annotations

import math

from ..config.capability import RetentionConfig
from ..config.finetune import FinetuneTrainConfig, LabeledDataConfig, TaskConfig
from ..config.tasks import InstructionConfig
from .base import ReadReport, TaskSettings
from .instruction import InstructionTask


def retention_settings(cfg: RetentionConfig) -> TaskSettings:
    """The instruction task's settings for the check: no model to name, 8 examples per forward pass."""
    section = InstructionConfig(
        template=cfg.template, packing=False, eval_generate_max=cfg.generate_max, max_new_tokens=cfg.max_new_tokens
    )
    return TaskSettings(
        data=LabeledDataConfig(train=str(cfg.data)),
        task=TaskConfig(type="instruction"),
        train=FinetuneTrainConfig(eval_batch_size=8),
        instruction=section,
        max_length=cfg.max_length,
    )


def read_retention_set(cfg: RetentionConfig) -> list:
    """The held-out records (the first ``limit``), read once; bad records stop with file:line."""
    examples = InstructionTask().read(str(cfg.data), retention_settings(cfg), split="retention", report=ReadReport())
    return examples[: cfg.limit] if cfg.limit else examples


def instruction_retention(model, tokenizer, cfg: RetentionConfig, examples: list | None = None) -> dict:
    """{response_loss, perplexity, response_tokens, n[, exact_match, generated]} of ``model``."""
    examples = read_retention_set(cfg) if examples is None else examples
    m = InstructionTask().evaluate(model, tokenizer, examples, {}, retention_settings(cfg))
    out = {k: m[k] for k in ("n", "response_loss", "perplexity", "response_tokens", "truncated") if k in m}
    if "exact_match" in m:
        out["exact_match"], out["generated"] = m["exact_match"], m["generated"]
    if out.get("response_loss") is not None and not math.isfinite(out["response_loss"]):
        out["response_loss"] = None
    return out
