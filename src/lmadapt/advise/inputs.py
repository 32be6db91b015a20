"""What the advice reads from the inputs without the model: token volume and lengths of the domain
corpus (estimated from a sample's tokens per character), and the labeled data's size, labels and lengths.
advise/measure.py calls these; the sections' keys are listed in its module doc."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import numpy as np

from .text import percentile


def token_lengths(texts: list[str], tok) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def volume(path, char_lengths: np.ndarray, chars: int, sample: list[str], tok, max_pos) -> dict:
    """Token volume and document lengths, estimated from every document's characters and the
    sample's tokens per character."""
    lengths = token_lengths(sample, tok)
    sampled_chars = sum(map(len, sample))
    tpc = sum(lengths) / max(sampled_chars, 1)
    est = char_lengths.astype(np.float64) * tpc + 1  # + separator; an array, not a float per document
    return {
        "path": str(path),
        "documents": len(est),
        "chars": chars,
        "sampled_documents": len(sample),
        "sampled_chars": sampled_chars,
        "sampled_tokens": sum(lengths),
        "tokens_per_char": round(tpc, 4),
        "estimated_tokens": int(round(chars * tpc + len(est))),
        "length_tokens_p50": int(percentile(est, 50)),
        "length_tokens_p95": int(percentile(est, 95)),
        "over_context_share": round(int((est > max_pos).sum()) / len(est), 4) if max_pos else None,
    }


def _label_keys(value) -> tuple[list[str], str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], "multi_label"
    if isinstance(value, float) and not value.is_integer():
        return [], "regression"
    return [str(value)], "single_label"


def task_stats(path, text_field, label_field, tok, max_pos, max_tokenized: int = 5000) -> tuple[dict, list[str]]:
    import random

    from ..tasks.base import ReadReport
    from ..tasks.labeled_io import read_records

    report = ReadReport()
    rows = read_records(path, fields_required=[text_field], text_fields=[text_field], on_error="skip", report=report)
    texts = [r.fields[text_field] for r in rows]
    info: dict[str, Any] = {
        "path": str(path),
        "examples": len(rows),
        "skipped": report.skipped,
        "text_field": text_field,
        "label_field": None,
        "problem": None,
        "classes": None,
        "per_class": None,
        "per_class_min": None,
        "per_class_median": None,
    }
    labeled = [r.fields.get(label_field) for r in rows if label_field and r.fields.get(label_field) is not None]
    if labeled:
        counts: Counter = Counter()
        kinds: Counter = Counter()
        for v in labeled:
            keys, kind = _label_keys(v)
            kinds[kind] += 1
            counts.update(keys)
        problem = kinds.most_common(1)[0][0]
        if problem == "single_label" and len(counts) > 50 and all(_is_number(k) for k in counts):
            problem = "regression"  # many distinct numbers: a score, not classes
        info.update(label_field=label_field, problem=problem, labeled_examples=len(labeled))
        if problem != "regression":
            per = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            info.update(
                classes=len(per),
                per_class=per,
                per_class_min=min(per.values()),
                per_class_median=statistics.median(per.values()),
            )
    picked = texts if len(texts) <= max_tokenized else random.Random(0).sample(texts, max_tokenized)
    lengths = token_lengths(picked, tok)
    mean = sum(lengths) / max(len(lengths), 1)
    info.update(
        tokens=int(round(mean * len(texts))),
        length_tokens_p50=percentile(lengths, 50),
        length_tokens_p95=percentile(lengths, 95),
        over_context_share=round(sum(n > max_pos for n in lengths) / len(lengths), 4) if max_pos and lengths else None,
    )
    return info, texts


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
