"""Held-out text as packed blocks, ready to score: what `lmadapt evaluate`, pipeline evidence and
a merge stage's sweep share.

    sets = heldout_sets({"domain": "valid.jsonl.gz"}, tokenizer, "causal", "document", block_size=256)
    for name, s in sets.items(): lm_metrics(model, s.blocks, collator, ...)

Text is packed exactly as training packs it (documents separated by EOS/SEP, no token dropped), so
the numbers compare with the before/after metrics a pretrain stage writes. Blocks are built once
and can be scored by many models (a merge sweep scores the same blocks at every weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.data import SourceConfig
from .objective import ObjectiveTokens
from .packing import TokenAccounting, pack_blocks
from .sources import read_source
from .tokenize import tokenize_arrays


@dataclass
class HeldoutSet:
    name: str  # the source's name (file stem, hub dataset name) unless the caller named it
    blocks: Any  # datasets.Dataset of packed blocks
    accounting: TokenAccounting
    documents: int  # documents scored (after a max_tokens cap)
    words: int = 0  # their whitespace-separated words (for per-word perplexity)


def cap_by_tokens(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Leading documents up to about ``max_tokens`` tokens (deterministic: file order)."""
    out, total = [], 0
    for t in texts:
        if total >= max_tokens:
            break
        out.append(t)
        total += len(tokenizer(t, add_special_tokens=False)["input_ids"])
    return out


def heldout_set(
    path: str,
    tokenizer,
    objective: str,
    mode: str,
    *,
    block_size: int,
    name: str | None = None,
    max_tokens: int | None = None,
    text_field: str = "text",
    split_docs: str = "file",
) -> HeldoutSet:
    """One file, folder or hub split read, capped and packed into blocks."""
    docs, stats = read_source(SourceConfig(path=path, text_field=text_field, split_docs=split_docs))
    texts = [d.text for d in docs]
    if max_tokens:
        texts = cap_by_tokens(texts, tokenizer, max_tokens)
    tokens = ObjectiveTokens.of(tokenizer, objective)
    tokenized = tokenize_arrays(
        texts, tokenizer, separator=tokens.separator, cache_dir=None, num_proc=None, with_word_starts=tokens.word_starts
    )
    blocks, accounting = pack_blocks(tokenized, block_size=block_size, pad_id=tokens.pad_id, mode=mode)
    return HeldoutSet(
        name=name or stats.name,
        blocks=blocks,
        accounting=accounting,
        documents=len(texts),
        words=sum(len(t.split()) for t in texts),
    )


def heldout_sets(sets: dict[str, str], tokenizer, objective: str, mode: str, **kw) -> dict[str, HeldoutSet]:
    """``{name: path}`` -> ``{name: HeldoutSet}`` (see :func:`heldout_set` for the keywords)."""
    return {name: heldout_set(path, tokenizer, objective, mode, name=name, **kw) for name, path in sets.items()}
