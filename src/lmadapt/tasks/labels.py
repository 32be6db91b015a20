"""Classification labels as read from records: one label, a set of labels or a number (:func:`parse_label`),
and the groups of labels that differ only by case or number format (:func:`label_variants`, a warning)."""

from __future__ import annotations

import math
import re
from typing import Any


def natural_key(label: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", label) if t]


def parse_label(value: Any, problem: str, separator: str | None) -> tuple[Any, str | None]:
    """(parsed label, None) or (None, problem description) for one raw label value."""
    if problem == "regression":
        if isinstance(value, bool):
            return None, f"must be a number for regression, got {value!r}"
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None, f"must be a number for regression, got {value!r}"
        return (x, None) if math.isfinite(x) else (None, f"must be a finite number, got {value!r}")
    if problem == "multi_label":
        if isinstance(value, str):
            items = [s.strip() for s in (value.split(separator) if separator else [value])]
            items = [s for s in items if s]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            return None, f"must be a list of labels (or a string with data.label_separator), got {value!r}"
        if any(isinstance(v, (list, dict)) or v is None for v in items):
            return None, f"labels must be strings or numbers, got {value!r}"
        return sorted({str(v) for v in items}, key=natural_key), None
    if isinstance(value, (list, dict)):
        return None, f"is a {type(value).__name__} ({value!r}); use task.problem: multi_label for several labels"
    label = str(value).strip()
    return (label, None) if label else (None, "is empty")


def variant_key(label: str) -> str:
    """Labels equal up to case, surrounding space or number format ('3', '3.0') share this key."""
    text = label.strip().casefold()
    try:
        return repr(float(text))
    except ValueError:
        return text


def label_variants(counts: dict[str, int]) -> list[list[tuple[str, int]]]:
    """Groups of distinct labels that differ only by case or number format, most frequent first: each
    became a class of its own (`JARGON` beside `jargon`), which is rarely what the data meant."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for lab, n in counts.items():
        groups.setdefault(variant_key(lab), []).append((lab, n))
    return [sorted(g, key=lambda x: (-x[1], x[0])) for g in groups.values() if len(g) > 1]
