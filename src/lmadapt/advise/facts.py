"""What the measurements say, read once for the rules (``rules.py``). Pure, no I/O.

    dom_ok, why = domain_evidence(m, THRESHOLDS)      # is the domain sample enough evidence? if not, why
    f = read_facts(m, THRESHOLDS, "classify", lang_goal=False, dom_ok=dom_ok, task_ok=task_ok)
    f.lots, f.shifted, f.vocab_shifted, f.fragmented, ...

A shift or vocabulary number measured on data that is not enough evidence is None/False in
:class:`Facts`, so no rule can decide on it by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def get_in(d: Any, *keys, default=None):
    """``d[k1][k2]...``, or ``default`` when a section is missing or None (any may be)."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def domain_evidence(m: dict, t: dict) -> tuple[bool, str | None]:
    """(usable, why not) for the domain corpus sample."""
    dom = m.get("domain")
    if not dom:
        return False, None
    docs, toks = dom.get("sampled_documents") or 0, dom.get("sampled_tokens") or 0
    if docs < t["min_domain_docs"] or toks < t["min_domain_tokens"]:
        return False, (
            f"domain sample too small to judge: {docs} documents / {toks:,} tokens "
            f"(need >= {t['min_domain_docs']} documents and >= {t['min_domain_tokens']:,} tokens)"
        )
    return True, None


def task_evidence(m: dict, t: dict, goal: str | None = None) -> tuple[bool, str | None]:
    """(usable, why not) for the labeled data. Records without a label (the label field is in none
    of them) or a single class are nothing to fine-tune a classifier on: said so, never "fine-tuning,
    confidence high" (extraction and instruction data carry their targets in other fields)."""
    task = m.get("task")
    if not task:
        return False, None
    if goal not in ("extract", "instruct") and "label_field" in task and not task.get("label_field"):
        return False, (
            f"the labeled data has no labels: none of its {task.get('examples') or 0} records has the "
            "label field (--label-field names it)"
        )
    if task.get("classes") == 1:
        only = next(iter(task.get("per_class") or {}), None)
        return False, (
            f"the labeled data has a single class{f' ({only!r})' if only is not None else ''}: "
            "a classifier needs at least two to learn anything"
        )
    if task.get("classes"):
        low = task.get("per_class_min") or 0
        if low < t["min_per_class"]:
            return False, (
                f"labeled data too small to judge: smallest class has {low} examples "
                f"(need >= {t['min_per_class']} per class)"
            )
        return True, None
    n = task.get("examples") or 0
    if n < t["min_examples"]:
        return False, f"labeled data too small to judge: {n} examples (need >= {t['min_examples']})"
    return True, None


@dataclass
class Facts:
    """The numbers the rules decide on, and whether each sample is enough evidence."""

    goal: str
    lang_goal: bool  # generate/understand the domain's language
    dom_ok: bool  # the domain sample is enough evidence
    task_ok: bool  # the labeled data is enough evidence
    tokens: float | None  # estimated domain tokens
    metric: str  # "perplexity" | "masked_perplexity"
    d_shift: dict | None  # {ratio, scored, thin, shifted, close} of the domain corpus
    t_shift: dict | None  # the same for the task texts
    overlap: float | None  # top-k vocabulary overlap with general text
    split_d: float | None  # share of frequent domain words cut into >= 3 pieces
    split_r: float | None  # the same for general words
    excess: float | None  # split_d - split_r
    vocab_text: str  # which text the vocabulary was measured on: "domain" | "task"
    vocab_usable: bool
    vocab_shifted: bool
    fragmented: bool
    lots: bool  # lots of unlabeled domain data

    @property
    def shifted(self) -> bool:
        return bool(self.d_shift and self.d_shift["shifted"])

    @property
    def close(self) -> bool:
        return bool(self.d_shift and self.d_shift["close"])

    @property
    def ratio(self) -> float | None:
        return self.d_shift["ratio"] if self.d_shift else None


def read_facts(m: dict, t: dict, goal: str, *, lang_goal: bool, dom_ok: bool, task_ok: bool) -> Facts:
    """The facts of measurements ``m`` under thresholds ``t``."""
    tokens = get_in(m, "domain", "estimated_tokens")
    overlap = get_in(m, "vocabulary", "overlap")
    split_d = get_in(m, "vocabulary", "domain_split3_share")
    split_r = get_in(m, "vocabulary", "reference_split3_share")
    excess = (split_d - split_r) if split_d is not None and split_r is not None else None
    vocab_text = get_in(m, "vocabulary", "text", default="domain")
    vocab_usable = overlap is not None and (vocab_text == "domain" and dom_ok or vocab_text == "task" and task_ok)
    return Facts(
        goal=goal,
        lang_goal=lang_goal,
        dom_ok=dom_ok,
        task_ok=task_ok,
        tokens=tokens,
        metric=get_in(m, "shift", "metric", default="perplexity"),
        d_shift=_shift_of(m, t, "domain", dom_ok),
        t_shift=_shift_of(m, t, "task", task_ok),
        overlap=overlap,
        split_d=split_d,
        split_r=split_r,
        excess=excess,
        vocab_text=vocab_text,
        vocab_usable=vocab_usable,
        vocab_shifted=vocab_usable and overlap < t["overlap_shifted"],
        fragmented=vocab_usable and excess is not None and excess >= t["split3_excess"],
        lots=dom_ok and tokens is not None and tokens >= t["lots_domain_tokens"],
    )


def _shift_of(m: dict, t: dict, text: str, usable: bool) -> dict | None:
    """{ratio, scored, thin, shifted, close} of one text set, None when not measured or its data is unusable."""
    r = get_in(m, "shift", text, "ratio")
    if r is None or not usable:
        return None
    scored = min(get_in(m, "shift", text, "tokens", default=0), get_in(m, "shift", "reference", "tokens", default=0))
    thin = scored < t["min_scored_tokens"]
    return {
        "ratio": r,
        "scored": scored,
        "thin": thin,
        "shifted": not thin and r >= t["shift_ratio"],
        "close": not thin and r < t["close_ratio"],
    }
