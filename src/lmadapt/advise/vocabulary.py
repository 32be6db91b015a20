"""Vocabulary statistics of a sample against the general reference: overlap of the frequent words,
how many tokens the model's tokenizer cuts each word into (in context), and the domain terms most
over-represented (the vocabulary candidates). advise/measure.py calls :func:`vocabulary_stats`."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from .text import STOPWORDS, WORD, distinctive_terms, top_words, vocabulary_overlap, word_counts

FREQUENT_WORDS = 1000


def word_pieces(texts: list[str], tok) -> dict[str, list[int]]:
    """For each (lower-cased, non-stopword) word: how many tokens each occurrence was cut into, in context.

    Uses the fast tokenizer's character offsets: a token counts for a word when their spans overlap
    (a byte-level token ' word' covers the space before it too). Slow tokenizers: the word alone."""
    out: dict[str, list[int]] = defaultdict(list)
    if getattr(tok, "is_fast", False):
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        for text, offsets in zip(texts, enc["offset_mapping"]):
            spans = sorted((s, e) for s, e in offsets if e > s)
            j = 0
            for m in WORD.finditer(text):
                w = m.group(0).lower().replace("\u2019", "'")
                if len(w) < 2 or w in STOPWORDS:
                    continue
                ws, we = m.span()
                while j < len(spans) and spans[j][1] <= ws:
                    j += 1
                k, n = j, 0
                while k < len(spans) and spans[k][0] < we:
                    n += 1
                    k += 1
                out[w].append(max(n, 1))
        return out
    for w in {m.group(0) for t in texts for m in WORD.finditer(t)}:
        lw = w.lower()
        if len(lw) >= 2 and lw not in STOPWORDS:
            out[lw].append(len(tok(" " + w, add_special_tokens=False)["input_ids"]))
    return out


def _split_stats(
    counts: Counter, pieces: dict[str, list[int]], n: int = FREQUENT_WORDS
) -> tuple[float | None, float | None]:
    """(share of the top-n words whose median piece count is >= 3, mean pieces per word over them)."""
    top = top_words(counts, n)
    meds = [statistics.median(pieces[w]) for w in top if pieces.get(w)]
    if not meds:
        return None, None
    return sum(p >= 3 for p in meds) / len(meds), sum(meds) / len(meds)


def vocabulary_stats(sample: list[str], ref_sample: list[str], tok) -> dict:
    dc, rc = word_counts(sample), word_counts(ref_sample)
    ov = vocabulary_overlap(dc, rc)
    dp, rp = word_pieces(sample, tok), word_pieces(ref_sample, tok)
    d_share, d_ppw = _split_stats(dc, dp)
    r_share, r_ppw = _split_stats(rc, rp)
    cands = distinctive_terms(dc, rc)
    for c in cands:
        c["pieces"] = int(statistics.median(dp[c["word"]])) if dp.get(c["word"]) else None
    return {
        "top_k": ov["top_k"],
        "overlap": None if ov["overlap"] is None else round(ov["overlap"], 4),
        "frequent_words": FREQUENT_WORDS,
        "domain_words": sum(dc.values()),
        "reference_words": sum(rc.values()),
        "domain_split3_share": _r(d_share),
        "reference_split3_share": _r(r_share),
        "domain_pieces_per_word": _r(d_ppw),
        "reference_pieces_per_word": _r(r_ppw),
        "candidates": cands,
    }


def _r(x, nd: int = 4):
    return None if x is None else round(x, nd)
