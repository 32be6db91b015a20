"""Domain shift: the base model's loss on the domain and task samples against the general reference,
scored a block of each in turn within a time budget. advise/measure.py calls :func:`score_shift`."""

from __future__ import annotations

import math
import time
from typing import Any


def shuffled_blocks(texts: list[str], loaded, block_size: int, mode: str, seed: int = 0):
    """The texts packed into blocks, in a seeded random order.

    Packed blocks come in document order, and a 4,000-character sample document fills about four
    256-token blocks. Scoring the first few blocks in that order would measure one or two documents
    of the corpus. The shuffle spreads the few blocks a time budget allows over many documents."""
    from ..data.objective import ObjectiveTokens
    from ..data.packing import pack_blocks
    from ..data.tokenize import tokenize_arrays

    tokens = ObjectiveTokens.of(loaded.tokenizer, loaded.objective)
    docs = tokenize_arrays(
        texts, loaded.tokenizer, separator=tokens.separator, cache=False, with_word_starts=tokens.word_starts
    )
    blocks, _ = pack_blocks(docs, block_size=block_size, pad_id=tokens.pad_id, mode=mode)
    return blocks.shuffle(seed=seed).flatten_indices()


def score_shift(
    loaded, sets: dict[str, list[str]], ref_sample: list[str], *, block_size: int, max_tokens: int, seconds: float
) -> dict:
    """Token-averaged loss of the base model on each text set and on the reference: one block of each
    in turn until ``max_tokens`` per set or ``seconds`` are spent (every set gets the same number of
    blocks; at least one). ratio = exp(loss - reference loss) = perplexity ratio."""
    from ..data.collators import CausalCollator, WholeWordMLMCollator
    from ..models.load import supports_document_packing
    from ..train.lm_eval import causal_lm_loss, masked_lm_loss

    model, obj = loaded.model, loaded.objective
    mode = "document" if supports_document_packing(model, obj) else "concat"
    blocks = {"reference": shuffled_blocks(ref_sample, loaded, block_size, mode)}
    blocks.update({name: shuffled_blocks(texts, loaded, block_size, mode) for name, texts in sets.items()})
    if obj == "causal":
        collator = CausalCollator(mode=mode)
        score = lambda ds: causal_lm_loss(model, ds, collator, batch_size=1)  # noqa: E731
        key = "loss"
    else:
        collator = WholeWordMLMCollator(loaded.tokenizer, mode=mode, mask_dtype=next(model.parameters()).dtype)
        score = lambda ds: masked_lm_loss(model, ds, collator, batch_size=1)  # noqa: E731
        key = "masked_loss"
    n_max = max(1, min(min(len(b) for b in blocks.values()), math.ceil(max_tokens / block_size)))
    totals = {name: [0.0, 0] for name in blocks}
    t0 = time.perf_counter()
    fwd_time, fwd_tokens = 0.0, 0
    for i in range(n_max):
        for name, ds in blocks.items():
            s0 = time.perf_counter()
            res = score(ds.select([i]))
            fwd_time += time.perf_counter() - s0
            fwd_tokens += block_size
            totals[name][0] += res[key] * res["tokens"]
            totals[name][1] += res["tokens"]
        if time.perf_counter() - t0 > seconds:
            break

    def entry(name: str) -> dict:
        loss = totals[name][0] / max(totals[name][1], 1)
        return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3), "tokens": totals[name][1]}

    out: dict[str, Any] = {
        "metric": "perplexity" if obj == "causal" else "masked_perplexity",
        "block_size": block_size,
        "packing": mode,
        "reference": entry("reference"),
    }
    ref_loss = totals["reference"][0] / max(totals["reference"][1], 1)
    for name in ("domain", "task"):
        if name in sets:
            e = entry(name)
            e["ratio"] = round(math.exp(min(totals[name][0] / max(totals[name][1], 1) - ref_loss, 50)), 4)
            out[name] = e
        else:
            out[name] = None
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["forward_tokens_per_second"] = round(fwd_tokens / fwd_time, 1) if fwd_time else None
    return out
