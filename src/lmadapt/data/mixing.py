"""Mixing several tokenized sources by token share (e.g. replay 5% general text).

Shares are about *tokens*, not documents: a 5% replay of general text means 5% of the training
tokens come from it, however long its documents are. Each source gets a target token count; a
source is repeated whole as many times as fits and the remainder is a deterministic random subset
of its documents. Nothing is dropped silently: the plan records, per source, the tokens available,
the tokens used and the repeat factor, and goes into the token accounting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SourcePlan:
    name: str
    documents: int
    tokens_available: int
    tokens_target: int
    tokens_used: int
    factor: float  # tokens_used / tokens_available (>1: upsampled, <1: subsampled)
    share: float  # of all training tokens used


def plan_mixture(
    token_counts: dict[str, list[int]], weights: dict[str, float], shares: dict[str, float | None], seed: int = 0
) -> tuple[dict[str, np.ndarray], list[SourcePlan]]:
    """Document indices to use per source (with repeats), and the plan.

    ``token_counts[name]`` are the per-document token counts of source ``name``. Sources without
    a share supply ``weight x tokens`` each (weight 1 = natural size); sources with a share are
    scaled so they make up that fraction of the total.
    """
    totals = {n: int(sum(c)) for n, c in token_counts.items()}
    free = [n for n in token_counts if shares.get(n) is None]
    fixed = [n for n in token_counts if shares.get(n) is not None]
    free_target = {n: weights.get(n, 1.0) * totals[n] for n in free}
    free_sum = sum(free_target.values())
    share_sum = sum(shares[n] for n in fixed)
    grand = free_sum / (1.0 - share_sum) if fixed else free_sum
    targets = dict(free_target)
    for n in fixed:
        targets[n] = shares[n] * grand

    rng = np.random.default_rng(seed)
    picks: dict[str, np.ndarray] = {}
    plans = []
    for name, counts in token_counts.items():
        counts_arr = np.asarray(counts, dtype=np.int64)
        target = targets[name]
        if totals[name] == 0:
            picks[name] = np.zeros(0, dtype=np.int64)
            continue
        whole = int(target // totals[name])
        rest = target - whole * totals[name]
        parts = [np.arange(len(counts_arr))] * whole
        if rest > 0.5:
            # A random order of documents, taken until the remaining token budget is met.
            order = rng.permutation(len(counts_arr))
            cum = np.cumsum(counts_arr[order])
            k = int(np.searchsorted(cum, rest)) + 1
            parts.append(np.sort(order[: min(k, len(order))]))
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        picks[name] = idx
        used = int(counts_arr[idx].sum()) if len(idx) else 0
        plans.append(
            SourcePlan(
                name=name,
                documents=len(counts_arr),
                tokens_available=totals[name],
                tokens_target=int(round(target)),
                tokens_used=used,
                factor=used / totals[name],
                share=0.0,
            )
        )
    all_used = sum(p.tokens_used for p in plans) or 1
    for p in plans:
        p.share = p.tokens_used / all_used
    return picks, plans


def plan_table(plans: list[SourcePlan]) -> str:
    rows = [f"{'source':<20} {'docs':>8} {'tokens':>12} {'used':>12} {'factor':>7} {'share':>7}"]
    for p in plans:
        rows.append(
            f"{p.name:<20} {p.documents:>8,} {p.tokens_available:>12,} {p.tokens_used:>12,} "
            f"{p.factor:>7.2f} {p.share:>7.1%}"
        )
    return "\n".join(rows)


def plans_as_dicts(plans: list[SourcePlan]) -> list[dict]:
    return [asdict(p) for p in plans]


def mix_documents(tokenized: dict, picks: dict[str, np.ndarray], seed: int):
    """One :class:`TokenizedDocs` holding the picked documents of every source, shuffled; its tokens
    are gathered from the sources slice by slice as they are read (:func:`.tokenized_docs.gathered_documents`).

    Shuffling documents (not blocks) before packing means a block mixes sources in proportion,
    so replayed general text is spread through training instead of arriving in one stretch.
    """
    from .tokenized_docs import gathered_documents, token_arrays

    names = list(tokenized)
    parts = [token_arrays(tokenized[name]) for name in names]
    part_of = (
        np.concatenate([np.full(len(picks[n]), i, dtype=np.int64) for i, n in enumerate(names)])
        if names
        else np.zeros(0, np.int64)
    )
    doc_of = np.concatenate([np.asarray(picks[n], dtype=np.int64) for n in names]) if names else np.zeros(0, np.int64)
    # Gathered straight into the shuffled order, a slice at a time as packing reads it: the mixed
    # corpus is never built whole, let alone concatenated then permuted.
    order = np.random.default_rng(seed).permutation(len(doc_of))
    return gathered_documents(parts, part_of[order], doc_of[order])
