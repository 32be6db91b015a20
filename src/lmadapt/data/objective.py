"""What a training objective asks of the tokenizer when text is tokenized and packed.

    tokens = ObjectiveTokens.of(tokenizer, "masked")
    docs = tokenize_arrays(texts, tokenizer, separator=tokens.separator, with_word_starts=tokens.word_starts)
    blocks, acct = pack_blocks(docs, block_size=512, pad_id=tokens.pad_id)

Training, held-out scoring and the advisor's measurements must pack text the same way, or their
numbers do not compare: one place decides, from the objective, which token ends a document, whether
word starts are recorded and which id pads the last block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .tokenize import special_id

Objective = Literal["causal", "masked"]


@dataclass(frozen=True)
class ObjectiveTokens:
    objective: Objective
    # Appended after every document: EOS for causal models; SEP for masked (encoder) models, which
    # also get CLS prepended (``[CLS] text [SEP]``, as BERT saw in pretraining).
    separator: Literal["eos", "sep"]
    word_starts: bool  # recorded for masked models: whole-word masking masks every token of a word
    pad_id: int  # fills the last block (see :func:`resolve_pad_id`)

    @classmethod
    def of(cls, tokenizer, objective: str) -> ObjectiveTokens:
        """Raises ValueError for an objective other than causal/masked, or a tokenizer without the
        token that pads (the separator's own token is checked when tokenizing)."""
        if objective not in ("causal", "masked"):
            raise ValueError(f"objective must be 'causal' or 'masked', got {objective!r}")
        causal = objective == "causal"
        return cls(
            objective=objective,
            separator="eos" if causal else "sep",
            word_starts=not causal,
            pad_id=resolve_pad_id(tokenizer, objective),
        )


def resolve_pad_id(tokenizer, objective: Objective) -> int:
    """``pad_token_id``; causal models without one pad with EOS (padding is masked out anyway)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    if objective == "causal":
        return special_id(tokenizer, "eos", "as padding (the tokenizer has no pad token)")
    return special_id(tokenizer, "pad", "to pad the last block of a masked-LM dataset")
