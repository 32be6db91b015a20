"""Word-level statistics of a text sample: no model, no tokenizer training, standard library only.

    counts = word_counts(texts)                         # Counter of lower-cased words, stopwords kept out
    vocabulary_overlap(domain_counts, reference_counts) # share of the top-K words both samples share
    distinctive_terms(domain_counts, reference_counts)  # domain words most over-represented vs reference

A *word* is a run of letters with optional inner apostrophes or hyphens (``don't``, ``end-to-end``),
lower-cased, at least two letters long. Digits and punctuation are not words. Stopwords
(:data:`STOPWORDS`, a small English list) are excluded, as in Gururangan et al. (2020), whose
vocabulary-overlap figure compares the top 10k non-stopword words of two domains.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")

# English function words (close to NLTK's list, plus frequent contraction pieces).
STOPWORDS = frozenset(
    """
a about above after again against ain all am an and any are aren aren't as at be because been before
being below between both but by can can't cannot could couldn couldn't d did didn didn't do does doesn
doesn't doing don don't down during each few for from further had hadn hadn't has hasn hasn't have
haven haven't having he he'd he'll he's her here here's hers herself him himself his how how's i i'd
i'll i'm i've if in into is isn isn't it it's its itself just let's ll m ma me might mightn more most
must mustn mustn't my myself needn no nor not now o of off on once only or other ought our ours
ourselves out over own re s same shall shan shan't she she'd she'll she's should should've shouldn
shouldn't so some such t than that that'll that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those through to too under until up upon us ve very
was wasn wasn't we we'd we'll we're we've were weren weren't what what's when when's where where's
which while who who's whom why why's will with won won't would wouldn wouldn't y you you'd you'll
you're you've your yours yourself yourselves also may one two us thee thou thy
""".split()
)


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, inner ' or -), stopwords and 1-letter words excluded."""
    out = []
    for m in WORD.finditer(text):
        w = m.group(0).lower().replace("\u2019", "'")
        if len(w) >= 2 and w not in STOPWORDS:
            out.append(w)
    return out


def word_counts(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for t in texts:
        counts.update(words(t))
    return counts


def top_words(counts: Counter, k: int) -> list[str]:
    """The ``k`` most frequent words (ties broken alphabetically, so the list is deterministic)."""
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def vocabulary_overlap(domain: Counter, reference: Counter, k: int = 10_000, min_count: int = 2) -> dict:
    """Share of the top-K words of the domain that are also top-K words of the reference.

    K is 10k (Gururangan et al. 2020) or fewer when either sample has fewer distinct words seen at
    least ``min_count`` times (singletons are mostly sampling noise), so identical samples give 1.0
    whatever their size. Compare samples of similar size: a bigger sample reaches deeper into the
    long tail."""
    kd = sum(1 for c in domain.values() if c >= min_count)
    kr = sum(1 for c in reference.values() if c >= min_count)
    k_used = min(k, kd, kr)
    if k_used == 0:  # no repeated words at all (a tiny sample): use every word
        k_used = min(k, len(domain), len(reference))
    if k_used == 0:
        return {"overlap": None, "top_k": 0}
    a, b = set(top_words(domain, k_used)), set(top_words(reference, k_used))
    return {"overlap": len(a & b) / k_used, "top_k": k_used}


def distinctive_terms(
    domain: Counter, reference: Counter, n: int = 20, min_count: int = 5, alpha: float = 1.0
) -> list[dict]:
    """Domain words most over-represented relative to the reference: vocabulary-extension candidates.

    ratio = (c_d + alpha) / (N_d + alpha V) / ((c_r + alpha) / (N_r + alpha V)), add-``alpha``
    smoothing over the joint vocabulary V; only words seen ``min_count`` times in the domain."""
    nd, nr = sum(domain.values()), sum(reference.values())
    v = len(set(domain) | set(reference)) or 1
    rows = []
    for w, c in domain.items():
        if c < min_count:
            continue
        cr = reference.get(w, 0)
        ratio = ((c + alpha) / (nd + alpha * v)) / ((cr + alpha) / (nr + alpha * v))
        rows.append({"word": w, "domain_count": c, "reference_count": cr, "ratio": round(ratio, 2)})
    rows.sort(key=lambda r: (-r["ratio"], -r["domain_count"], r["word"]))
    return rows[:n]


SAMPLE_DOC_CHARS = 4000  # a sampled document is cut here, so one long file does not fill the sample


def sample_indices(
    lengths: Sequence[int], max_chars: int, *, doc_chars: int = SAMPLE_DOC_CHARS, seed: int = 0
) -> list[int]:
    """Which documents :func:`sample_texts` takes, from their lengths alone (so a spooled corpus
    is sampled without reading its texts): a seeded shuffle, taken until ~``max_chars``."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    out, total = [], 0
    for i in order:
        if total >= max_chars:
            break
        out.append(i)
        total += min(int(lengths[i]), doc_chars)
    return out


def sample_texts(
    texts: Sequence[str], max_chars: int, *, doc_chars: int = SAMPLE_DOC_CHARS, seed: int = 0
) -> list[str]:
    """A seeded random sample of documents (each cut to ``doc_chars``) adding up to ~``max_chars``.

    Cutting long documents spreads the sample over more documents, so one long file does not
    stand for the whole corpus."""
    return [
        texts[i][:doc_chars] for i in sample_indices([len(t) for t in texts], max_chars, doc_chars=doc_chars, seed=seed)
    ]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a list or array; None for no values."""
    if len(values) == 0:
        return None
    s = np.sort(np.asarray(values))
    idx = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[idx].item()
