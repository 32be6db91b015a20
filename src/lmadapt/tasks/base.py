"""The contract every fine-tuning task implements (classification, extraction, qa, instruction).

`stages/finetune.py` is task-agnostic: it reads the recipe, asks the task for examples, a model,
a tokenized dataset, a collator and metrics, and hands them to the shared training loop. A task
module holds everything specific to one kind of label; registering it in ``TASKS`` is all the
stage needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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

    def read(self, path: str, cfg, *, split: str, report: ReadReport) -> list[Example]: ...
    def label_space(self, train: list[Example], cfg) -> dict: ...          # e.g. {"label2id": {...}} saved in model config
    def check_split(self, examples: list[Example], space: dict, split: str) -> None: ...  # e.g. unseen dev labels
    def load_model(self, base_dir: str, space: dict, cfg): ...               # model with the right head (LoRA applied by the stage)
    def encode(self, examples: list[Example], tokenizer, space: dict, cfg, report: ReadReport): ...  # -> datasets.Dataset
    def collator(self, tokenizer, cfg): ...
    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg) -> dict: ...  # metrics (flat floats + tables)
    def predict(self, model, tokenizer, records: list[dict], cfg) -> list[dict]: ...


# --- recipe access shared by the task modules ---------------------------------------------------
# Tasks receive the whole FinetuneConfig (or, in unit tests, just their own section), so every
# lookup tolerates a missing section and falls back to the defaults.

def recipe_section(cfg, attr: str, cls: type):
    """The ``attr`` section of a finetune recipe, the section itself, or its defaults when absent."""
    if isinstance(cfg, cls):
        return cfg
    sec = getattr(cfg, attr, None)
    return sec if isinstance(sec, cls) else cls()


def on_error_mode(cfg) -> str:
    return getattr(getattr(cfg, "data", None), "on_error", None) or "raise"


def allow_truncation(cfg) -> bool:
    return bool(getattr(getattr(cfg, "data", None), "allow_truncation", False))


def eval_batch_size(cfg, default: int = 16) -> int:
    train = getattr(cfg, "train", None)
    return getattr(train, "eval_batch_size", None) or getattr(train, "batch_size", None) or default
