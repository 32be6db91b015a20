"""Pure metric functions of the span tasks (extraction, qa) and the instruction task's exact match.

No torch, no tokenizer: spans are ``(start, end, label)`` character ranges (end exclusive), answers
are strings. All scores are fractions in [0, 1].
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

Span = tuple[int, int, str]


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def span_scores(gold: Sequence[Iterable[Span]], pred: Sequence[Iterable[Span]]) -> dict:
    """Micro span precision/recall/F1 over a corpus of texts.

    - exact: a predicted span counts when a gold span of the same text has the same start, end and label.
    - partial: a predicted span counts (precision) when it overlaps a gold span of the same label;
      a gold span counts (recall) when a predicted span of the same label overlaps it.
    - per_class: exact P/R/F1 and gold support for every label seen in gold or predictions.

    When there is nothing to find and nothing was predicted, every score is 1.0.
    """
    if len(gold) != len(pred):
        raise ValueError(f"span_scores: {len(gold)} gold texts but {len(pred)} predicted")
    tp = n_pred = n_gold = 0
    p_hit = g_hit = 0
    per = collections.defaultdict(lambda: [0, 0, 0])  # label -> [tp, n_pred, n_gold]
    for g_spans, p_spans in zip(gold, pred):
        g = set(map(tuple, g_spans))
        p = set(map(tuple, p_spans))
        tp += len(g & p)
        n_pred += len(p)
        n_gold += len(g)
        for s in p:
            per[s[2]][1] += 1
            if s in g:
                per[s[2]][0] += 1
            if any(_overlap(s, t) for t in g):
                p_hit += 1
        for s in g:
            per[s[2]][2] += 1
            if any(_overlap(s, t) for t in p):
                g_hit += 1
    if n_pred == 0 and n_gold == 0:
        return {
            "span_precision": 1.0,
            "span_recall": 1.0,
            "span_f1": 1.0,
            "partial_precision": 1.0,
            "partial_recall": 1.0,
            "partial_f1": 1.0,
            "per_class": {},
        }
    prec, rec, f1 = _prf(tp, n_pred, n_gold)
    pp = p_hit / n_pred if n_pred else 0.0
    pr = g_hit / n_gold if n_gold else 0.0
    pf = 2 * pp * pr / (pp + pr) if pp + pr else 0.0
    table = {}
    for label in sorted(per):
        t, npred, ngold = per[label]
        lp, lr, lf = _prf(t, npred, ngold)
        table[label] = {"precision": lp, "recall": lr, "f1": lf, "support": ngold}
    return {
        "span_precision": prec,
        "span_recall": rec,
        "span_f1": f1,
        "partial_precision": pp,
        "partial_recall": pr,
        "partial_f1": pf,
        "per_class": table,
    }


def _overlap(a: Span, b: Span) -> bool:
    return a[2] == b[2] and a[0] < b[1] and b[0] < a[1]


# --- SQuAD answer scoring -------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles (a, an, the), squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 on normalised answers; an empty answer only matches an empty answer."""
    p = normalize_answer(prediction).split()
    r = normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = collections.Counter(p) & collections.Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Mean exact match and token F1 (each the max over an example's references).

    An unanswerable example has references ``[]`` (or ``[""]``): only the empty prediction scores.
    Also reported: the same scores over answerable (``has_answer_*``) and unanswerable
    (``no_answer_*``) examples where there are any.
    """
    if len(predictions) != len(references):
        raise ValueError(f"squad_scores: {len(predictions)} predictions but {len(references)} references")
    em, f1, has, no = [], [], [], []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        refs = [r for r in refs if normalize_answer(r)] or [""]
        e = max(exact_match(pred, r) for r in refs)
        f = max(token_f1(pred, r) for r in refs)
        em.append(e)
        f1.append(f)
        (has if refs != [""] else no).append(i)
    out = {"n": len(em), "exact_match": _mean(em), "f1": _mean(f1)}
    for name, idx in (("has_answer", has), ("no_answer", no)):
        if idx:
            out[f"{name}_exact_match"] = _mean([em[i] for i in idx])
            out[f"{name}_f1"] = _mean([f1[i] for i in idx])
            out[f"{name}_n"] = len(idx)
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def generation_exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generations equal to their reference after stripping surrounding whitespace."""
    if not predictions:
        return 0.0
    return _mean([float(p.strip() == r.strip()) for p, r in zip(predictions, references)])
