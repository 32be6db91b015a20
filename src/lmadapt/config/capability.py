"""Recipe sections for forgetting measured on capabilities, not only on general perplexity.

    evaluation:
      harness: {tasks: [lmadapt_cloze], limit: 100}           # lm-evaluation-harness tasks
      instruction_retention: {data: held_out_instructions.jsonl, limit: 50}

``harness`` runs lm-evaluation-harness (the ``lm-eval`` package, extra ``lmadapt[harness]``) on a
model in memory: any task lm-eval knows (``hellaswag``, ``arc_easy``, ``mmlu``: these download their
data from the hub), tasks defined in local YAML files under ``include_path``, and the bundled
offline task ``lmadapt_cloze`` (lmadapt/harness_tasks/). ``instruction_retention`` scores an
instruction-tuned model on a small held-out instruction set (response loss, and exact match of
greedy generations), formatted as instruction fine-tuning formats it (tasks/instruction.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import ConfigError, opt


@dataclass
class HarnessConfig:
    """lm-evaluation-harness tasks scored on a model (none: not run)."""

    tasks: list[str] = opt(
        doc="task names, e.g. [lmadapt_cloze] (bundled, offline) or [hellaswag, arc_easy, mmlu] "
        "(need the hub or its cache); empty: no harness",
        factory=list,
    )
    include_path: list[str] = opt(
        doc="extra folders of task YAML files (lm-eval TaskManager include_path); the "
        "bundled lmadapt/harness_tasks folder is always included",
        factory=list,
    )
    limit: int | None = opt(
        None,
        "score at most this many examples per task (null: all). Small limits are noisy: "
        "an accuracy on n examples has a standard error of about sqrt(p(1-p)/n)",
    )
    num_fewshot: int | None = opt(None, "few-shot examples per question (null: the task's default)")
    batch_size: int = opt(8, "requests per forward pass")
    device: str = opt("auto", "auto (the process's GPU, else cpu) | cpu | cuda | cuda:N")

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot: must be >= 0, got {self.num_fewshot}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        for i, path in enumerate(self.include_path):
            if not Path(path).is_dir():
                raise ConfigError(f"include_path[{i}]: folder not found: {path}")

    @property
    def enabled(self) -> bool:
        return bool(self.tasks)


@dataclass
class RetentionConfig:
    """Instruction retention: response loss (and exact match) on held-out instructions (none: not run)."""

    data: str | None = opt(
        None,
        "JSONL of {prompt, response[, system]} or {messages: [...]} records, held out "
        "from any training; null: not measured",
    )
    limit: int | None = opt(50, "score at most this many records (leading ones)")
    template: Literal["auto", "chat", "plain"] = opt(
        "auto",
        "auto: the tokenizer's chat template when it has one, else the plain ### Instruction / ### Response layout",
    )
    max_length: int = opt(
        512,
        "tokens per example (a longer one is cut at the end for the loss and counted as "
        "truncated; a generation prompt keeps its last max_length tokens)",
    )
    generate_max: int = opt(
        0,
        "exact match of greedy generations on the first N records (0: loss only; "
        "generation costs one decoding loop per record)",
    )
    max_new_tokens: int = opt(64, "generation length for exact match")

    def __post_init__(self):
        if self.data is not None and not Path(self.data).is_file():
            raise ConfigError(f"data: file not found: {self.data}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        if self.generate_max < 0:
            raise ConfigError(f"generate_max: must be >= 0, got {self.generate_max}")

    @property
    def enabled(self) -> bool:
        return self.data is not None
