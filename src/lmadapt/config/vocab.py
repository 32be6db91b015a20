"""Recipe section `vocab` of a pretrain stage: domain vocabulary extension and embedding training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ConfigError, opt


@dataclass
class VocabConfig:
    """Add the domain's most fragmented words to the tokenizer, initialise their embeddings, train them."""

    extend: int = opt(
        0,
        "tokens to add, mined from the training sources (frequency x (pieces - 1) = tokens "
        "saved, highest first); 0: no extension",
    )
    tokenizer: str | None = opt(
        None, "an extended tokenizer folder made by `lmadapt tokenizer extend` for this model (instead of mining here)"
    )
    init: Literal["mean", "overall_mean"] = opt(
        "mean",
        "new embedding rows (input and output): the mean of the pieces they replace, or the mean of all old rows",
    )
    min_frequency: int = opt(5, "mining: a word must occur at least this often")
    mine_chars: int = opt(20_000_000, "mining: read at most this many characters of training text (documents in order)")
    embedding_lr: float | None = opt(
        None,
        "learning rate of the input embeddings and the LM head (all rows; a param group of its own); default: train.lr",
    )
    warmup_steps: int = opt(
        0,
        "the first N optimizer steps train only the new rows (embeddings + LM head); the rest "
        "of the model and the old rows stay fixed. Then everything trains",
    )

    @property
    def active(self) -> bool:
        return self.extend > 0 or self.tokenizer is not None

    def __post_init__(self):
        if self.extend < 0:
            raise ConfigError(f"extend: must be >= 0, got {self.extend}")
        if self.extend and self.tokenizer:
            raise ConfigError(
                "extend and tokenizer: give one (mine here, or use a folder from `lmadapt tokenizer extend`)"
            )
        if self.min_frequency < 1:
            raise ConfigError(f"min_frequency: must be >= 1, got {self.min_frequency}")
        if self.mine_chars < 1:
            raise ConfigError(f"mine_chars: must be >= 1, got {self.mine_chars}")
        if self.embedding_lr is not None and self.embedding_lr <= 0:
            raise ConfigError(f"embedding_lr: must be > 0, got {self.embedding_lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and not self.active:
            raise ConfigError("warmup_steps: trains only new rows; set vocab.extend or vocab.tokenizer")
