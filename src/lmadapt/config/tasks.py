"""Recipe sections of the fine-tuning tasks extraction, qa and instruction.

The finetune recipe holds one section per task (``extraction:``, ``qa:``, ``instruction:``); only
the section of the chosen task is read. Everything here is validated when the recipe loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ConfigError, opt


# The old per-task length keys: model.max_length holds every task's length now (config/finetune.py
# folds these into it, with a deprecation notice, and rejects the two when they disagree).
DEPRECATED_LENGTH_DOC = "deprecated: use model.max_length (null: unset)"


def check_qa_window(sec: QAConfig, max_length: int, key: str = "max_length") -> None:
    """A qa window must hold the question, the stride and some passage: checked against the length in
    force (``key`` names it in the message)."""
    if sec.doc_stride >= max_length:
        raise ConfigError(f"doc_stride: must be smaller than {key} ({max_length}), got {sec.doc_stride}")
    if sec.max_question_length + sec.doc_stride + 8 > max_length:
        raise ConfigError(
            f"max_question_length + doc_stride ({sec.max_question_length} + {sec.doc_stride}) leave no room for the "
            f"passage in {key} {max_length}; lower one of them or raise {key}"
        )


def _positive(obj, *keys: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")


@dataclass
class ExtractionConfig:
    """Token classification (named entities, slots) with BIO tags over subword tokens."""

    text_field: str = opt("text", "span records: field holding the text")
    spans_field: str = opt(
        "spans", "span records: field holding [{start, end, label}] (character offsets, end exclusive)"
    )
    tokens_field: str = opt("tokens", "token records: field holding the list of words")
    tags_field: str = opt("tags", "token records: field holding one BIO tag per word (O, B-X, I-X)")
    subword_labels: Literal["all", "first"] = opt(
        "all",
        "all: every subword of an entity is labelled (B- on its first, I- on the rest); "
        "first: only a word's first subword carries a label, the word's other subwords are -100 and inherit it",
    )
    max_length: int | None = opt(None, DEPRECATED_LENGTH_DOC)

    def __post_init__(self):
        _positive(self, "max_length")


@dataclass
class QAConfig:
    """Extractive question answering (SQuAD style) for encoder models."""

    id_field: str = opt("id", "field holding the example id (default: file:line)")
    question_field: str = opt("question", "field holding the question")
    context_field: str = opt("context", "field holding the passage")
    answers_field: str = opt(
        "answers", "field holding [{text, start}] (start = character offset in the context); [] = unanswerable"
    )
    max_length: int | None = opt(None, DEPRECATED_LENGTH_DOC)
    doc_stride: int = opt(128, "tokens shared by consecutive windows of a long passage")
    max_question_length: int = opt(
        64, "questions longer than this (tokens) stop the run, or are cut (counted) with data.allow_truncation"
    )
    n_best: int = opt(20, "start and end candidates per window considered when choosing the answer")
    max_answer_length: int = opt(30, "longest answer in tokens")
    unanswerable: bool | None = opt(
        None, "allow the empty answer; null: allowed when the training data has unanswerable examples"
    )
    null_threshold: float = opt(
        0.0, "answer empty when null score - best span score > this (raise to answer more often)"
    )

    def __post_init__(self):
        _positive(self, "max_length", "doc_stride", "max_question_length", "n_best", "max_answer_length")
        if self.max_length is not None:  # else checked against model.max_length (FinetuneConfig)
            check_qa_window(self, self.max_length)


@dataclass
class InstructionConfig:
    """Supervised fine-tuning of causal LMs on prompt/response pairs or chat conversations.

    Generative question answering with a causal model is this task (question in the prompt,
    answer as the response)."""

    prompt_field: str = opt("prompt", "prompt/response records: field holding the prompt")
    response_field: str = opt(
        "response", "prompt/response records: field holding the response (absent in predict input)"
    )
    system_field: str | None = opt("system", "prompt/response records: optional field holding a system message")
    messages_field: str = opt(
        "messages", "chat records: field holding [{role, content}] (roles: system, user, assistant)"
    )
    template: Literal["auto", "chat", "plain"] = opt(
        "auto",
        "chat: the tokenizer's chat template; plain: '### Instruction:/### Response:' headers; auto: chat when the tokenizer has one",
    )
    max_length: int | None = opt(None, DEPRECATED_LENGTH_DOC)
    packing: bool = opt(
        True, "pack short examples into blocks of model.max_length (positions restart per example, no cross-attention)"
    )
    eval_generate_max: int = opt(
        50, "evaluate: examples whose reference is compared with a greedy generation (0: none)"
    )
    max_new_tokens: int = opt(128, "generation: most new tokens per answer")
    greedy: bool = opt(True, "generation: greedy decoding (do_sample false); false samples with temperature/top_p")
    temperature: float = opt(1.0, "generation: sampling temperature (greedy: false)")
    top_p: float = opt(1.0, "generation: nucleus sampling mass (greedy: false)")

    def __post_init__(self):
        _positive(self, "max_length", "max_new_tokens")
        if self.eval_generate_max < 0:
            raise ConfigError(f"eval_generate_max: must be >= 0, got {self.eval_generate_max}")
        if self.temperature <= 0:
            raise ConfigError(
                f"temperature: must be > 0 (use greedy: true for deterministic output), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
