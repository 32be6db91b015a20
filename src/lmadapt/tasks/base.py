"""The contract every fine-tuning task implements (classification, extraction, qa, instruction).

`stages/finetune.py` is task-agnostic: it reads the recipe, asks the task for examples, a model,
a tokenized dataset, a collator and metrics, and hands them to the shared training loop. A task
module holds everything specific to one kind of label; registering it in ``TASKS`` is all the
stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config.base import from_dict
from ..config.finetune import TASK_MAX_LENGTH, FinetuneConfig, FinetuneTrainConfig, LabeledDataConfig, TaskConfig
from ..config.tasks import ExtractionConfig, InstructionConfig, QAConfig


class DataError(ValueError):
    """Bad labeled input; the message names file, line and field."""


@dataclass
class Example:
    """One labeled example with its provenance (``origin`` = "path:line")."""

    fields: dict[str, Any]
    origin: str


@dataclass
class ReadReport:
    """What reading a split did: counts, skips (opt-in) and truncations, all JSON-able."""

    examples: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_skips: list[str] = field(default_factory=list)
    truncated: int = 0

    def skip(self, origin: str, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
        if len(self.first_skips) < 10:
            self.first_skips.append(f"{origin}: {reason}")


class Task(Protocol):
    """What a task module provides (see tasks/classification.py for the reference implementation)."""

    name: str

    def read(self, path: str, cfg: TaskRecipe, *, split: str, report: ReadReport) -> list[Example]: ...
    def label_space(
        self, train: list[Example], cfg: TaskRecipe
    ) -> dict: ...  # e.g. {"label2id": {...}} saved in model config
    def check_split(self, examples: list[Example], space: dict, split: str) -> None: ...  # e.g. unseen dev labels
    def load_model(
        self, base_dir: str, space: dict, cfg: FinetuneConfig
    ): ...  # model with the right head (LoRA applied by the stage)
    def encode(
        self, examples: list[Example], tokenizer, space: dict, cfg: TaskRecipe, report: ReadReport
    ): ...  # -> datasets.Dataset
    def collator(self, tokenizer, cfg: TaskRecipe): ...
    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg: TaskRecipe) -> dict: ...  # metrics
    def predict(self, model, tokenizer, records: list[dict], cfg: TaskRecipe) -> list[dict]: ...


# --- what a task reads of its recipe ------------------------------------------------------------
# Reading, splitting, encoding and scoring examples read only these sections (and the resolved
# length); loading a model also reads ``model`` and ``lora``, so those methods take a FinetuneConfig.
# A caller without a model (the TF-IDF baseline, the instruction-retention check) builds a
# TaskSettings instead of a FinetuneConfig with a made-up model path.


class TaskRecipe(Protocol):
    """The recipe a task's reading and scoring methods receive: a FinetuneConfig or a TaskSettings."""

    data: LabeledDataConfig
    task: TaskConfig
    train: FinetuneTrainConfig
    extraction: ExtractionConfig
    qa: QAConfig
    instruction: InstructionConfig

    @property
    def max_length(self) -> int: ...


@dataclass
class TaskSettings:
    """A finetune recipe's sections without its model: enough to read, split and score examples."""

    data: LabeledDataConfig
    task: TaskConfig = field(default_factory=TaskConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    max_length: int | None = None  # null: the task's default, as model.max_length

    def __post_init__(self):
        if self.max_length is None:
            self.max_length = TASK_MAX_LENGTH[self.task.type]

    @classmethod
    def of_recipe(cls, recipe: dict) -> TaskSettings:
        """The reading sections of a finetune recipe mapping (model, lora: not read)."""
        keep = {"data", "task", "train", "extraction", "qa", "instruction"}
        return from_dict(cls, {k: v for k, v in recipe.items() if k in keep})


def eval_batch_size(cfg: TaskRecipe) -> int:
    """Examples per forward pass when a task scores or predicts."""
    return cfg.train.eval_batch_size or cfg.train.batch_size
