"""The answer a pipeline run exists for: did each adaptation pay off, and what did it cost?

One verdict per arm against the reference arm (fine-tune only, by default), built from the
comparison that report.py already computed and from the per-stage cost rows:

- **task**: the difference on the test split of the metric the fine-tuning selected on, and
  whether it exceeds seed-to-seed noise (report.py's rule): "helped", "hurt", "no measurable
  effect", or "no noise estimate" (one seed).
- **dialect and forgetting**: held-out perplexity of the model fine-tuning started from, as a
  factor against the reference's (domain ÷3.2 means 3.2× lower; general ×1.16 means 16% higher).
- **capabilities** (when the pipeline measures them: evaluation.harness, evaluation.instruction_retention):
  each harness task's headline score as a difference in points (hellaswag −3.1 points), and the
  instruction response loss as a factor, of the same model against the reference's.
- **cost**: the stages this arm runs and the reference does not (the shared base counts for
  neither), their wall time and the tokens they trained on, net of the stages only the
  reference runs. Stage times are those of the run that executed each stage.

This module reads only what it is given (rows, the comparison, the columns): report.py renders it.
"""

from __future__ import annotations

from typing import Any

from .compare import BASELINE_ARM
from .fmt import fmt_factor, fmt_seconds, fmt_tokens, fmt_value

EFFECTS = {
    "beyond noise": None,
    "within noise": "no measurable effect",
    "1 run": "no noise estimate (one seed)",
    "same model": "same model",
    "n/a": "not measured",
}


def _arm_stages(rows: list[dict], arm: str) -> dict[str, dict]:
    """Distinct stage instances an arm used (any seed), by id."""
    return {
        r["id"]: r for r in rows if r["arm"] == arm and r.get("kind") in ("pretrain", "finetune", "evaluate", "merge")
    }


def _sum(stages: list[dict], key: str, kind: str | None = None) -> float:
    return sum(float((s.get("perf") or {}).get(key) or 0) for s in stages if kind is None or s.get("kind") == kind)


def arm_cost(rows: list[dict], arm: str, reference: str) -> dict:
    """What ``arm`` runs beyond ``reference``: extra stages, their wall seconds and pretraining tokens."""
    mine, ref = _arm_stages(rows, arm), _arm_stages(rows, reference)
    extra = [mine[i] for i in mine if i not in ref]
    saved = [ref[i] for i in ref if i not in mine]
    # Named as extra: stages the reference has no stage of that name for (both arms fine-tune, with
    # different parents, so their fine-tunes differ by id but are not an extra cost by name).
    saved_names = {s["stage"] for s in saved}
    return {
        "extra_stages": list(dict.fromkeys(s["stage"] for s in extra if s["stage"] not in saved_names)),
        "wall_seconds": _sum(extra, "wall_seconds") - _sum(saved, "wall_seconds"),
        "pretrain_tokens": _sum(extra, "tokens_seen", "pretrain") - _sum(saved, "tokens_seen", "pretrain"),
    }


def _ratio(a: float | None, r: float | None) -> float | None:
    return a / r if a and r else None


def verdicts(rows: list[dict], comp: dict, columns: list) -> list[dict]:
    """One verdict per arm but the reference (and the TF-IDF row, which has no cost to weigh).

    ``comp``: compare.comparison(); ``columns``: run.columns."""
    reference = comp["reference"]
    ref_cells = next((r["cells"] for r in comp["rows"] if r["arm"] == reference), {})
    task_cols = [c for c in columns if c.split == "test" and c.metric != "accuracy"] or [
        c for c in columns if c.split == "test"
    ]
    primary = task_cols[0] if task_cols else None
    extended = {r.get("arm") for r in rows if r.get("vocab")}
    out = []
    for row in comp["rows"]:
        arm = row["arm"]
        if arm in (reference, BASELINE_ARM):
            continue
        v: dict[str, Any] = {"arm": arm, "reference": reference, "metric": primary.label if primary else None}
        cmp = row["cells"][primary.key]["cmp"] if primary else None
        if cmp and cmp.get("diff") is not None:
            v["diff"], v["verdict"] = cmp["diff"], cmp["verdict"]
            improved = (cmp["diff"] > 0) == (primary.better == "higher")
            v["effect"] = EFFECTS.get(cmp["verdict"]) or ("helped" if improved else "hurt")
        else:
            v["diff"], v["verdict"], v["effect"] = None, "n/a", EFFECTS["n/a"]
        # Per-token perplexity does not compare models whose tokenizers differ (an extended vocabulary
        # splits the same text into fewer tokens): where either side extended it, judge per word.
        per_word = bool({arm, reference} & extended)
        v["ppl_unit"] = "word ppl" if per_word else "ppl"
        for role in ("domain", "general"):
            col = next((c for c in columns if c.role == role and (c.metric == "word_perplexity") == per_word), None)
            a = row["cells"][col.key]["stat"] if col else None
            r = ref_cells[col.key]["stat"] if col and col.key in ref_cells else None
            v[f"{role}_ppl"] = (a.mean if a else None, r.mean if r else None)
            v[f"{role}_factor"] = _ratio(*v[f"{role}_ppl"])
        v["capabilities"] = capability_changes(row["cells"], ref_cells, columns, rows)
        v["cost"] = arm_cost(rows, arm, reference)
        out.append(v)
    return out


def _sampling_se(rows: list[dict], stat, spec: str) -> float | None:
    """The harness's own standard error of a score (over its questions), averaged over the rows the
    stat's values came from; None when a row lacks it."""
    task, _, metric = spec[len("harness:") :].partition("/")
    ses = [((r.get("harness") or {}).get(task) or {}).get(f"{metric}_stderr") for r in rows if r.get("id") in stat.ids]
    ses = [x for x in ses if isinstance(x, (int, float))]
    return sum(ses) / len(ses) if ses and len(ses) >= len(set(stat.ids)) else None


def capability_changes(cells: dict, ref_cells: dict, columns: list, rows: list[dict] | None = None) -> list[dict]:
    """Per capability column: the arm's and the reference's means, and the change (points for
    accuracies, a factor for losses). A harness difference within twice the two scores' sampling
    standard errors (unpaired, so conservative: both score the same questions) is marked as such:
    with a few hundred questions, a few points are sampling noise."""
    out = []
    for col in columns:
        if not col.evidence or col.key not in ref_cells:
            continue
        a, r = cells[col.key]["stat"], ref_cells[col.key]["stat"]
        if not a or not r or a.mean is None or r.mean is None:
            continue
        name = col.label.rstrip(" ↑↓")
        c = {
            "name": name,
            "arm": a.mean,
            "reference": r.mean,
            "points": col.points,
            "diff": a.mean - r.mean,
            "factor": _ratio(a.mean, r.mean),
            "within_sampling_error": None,
        }
        if col.evidence.startswith("harness:") and rows is not None:
            se_a, se_r = _sampling_se(rows, a, col.evidence), _sampling_se(rows, r, col.evidence)
            if se_a is not None and se_r is not None:
                c["within_sampling_error"] = abs(c["diff"]) <= 2 * (se_a**2 + se_r**2) ** 0.5
        out.append(c)
    return out


def fmt_capability(c: dict) -> str:
    """'lmadapt_cloze acc norm −3.1 points (45.0 → 41.9)' or 'instruction loss ×1.12 (2.10 → 2.35)'."""
    if c["points"]:
        d = 100 * c["diff"]
        return (
            f"{c['name']} {'+' if d >= 0 else '−'}{abs(d):.1f} points "
            f"({100 * c['reference']:.1f} → {100 * c['arm']:.1f}"
            + ("; within sampling error" if c.get("within_sampling_error") else "")
            + ")"
        )
    if c["factor"] is not None and c["reference"] > 0 and c["arm"] > 0:
        return f"{c['name']} {fmt_factor(c['factor'])} ({fmt_value(c['reference'])} → {fmt_value(c['arm'])})"
    return f"{c['name']} {'+' if c['diff'] >= 0 else '−'}{fmt_value(abs(c['diff']))}"


def fmt_cells(v: dict) -> dict[str, str]:
    """The verdict as table cells (shared by the Markdown, HTML and terminal renderings)."""
    if v["diff"] is None:
        task = "—"
    else:
        task = ("+" if v["diff"] >= 0 else "−") + fmt_value(abs(v["diff"]))
    cells = {"arm": v["arm"], "task": task, "effect": v["effect"]}
    for role in ("domain", "general"):
        a, r = v[f"{role}_ppl"]
        cells[role] = (
            "—"
            if v[f"{role}_factor"] is None
            else f"{fmt_factor(v[f'{role}_factor'])} ({fmt_value(r, 'ppl')} → {fmt_value(a, 'ppl')})"
        )
    cells["capabilities"] = "; ".join(fmt_capability(c) for c in v.get("capabilities") or [])
    # The report's forgetting column: general perplexity, then the capability scores.
    cells["forgetting"] = (
        "; ".join(x for x in (cells["general"] if cells["general"] != "—" else "", cells["capabilities"]) if x) or "—"
    )
    c = v["cost"]
    if not c["extra_stages"] and not c["wall_seconds"]:
        cells["cost"] = "none"
    else:
        parts = [f"{fmt_seconds(c['wall_seconds'])} wall"]
        if c["pretrain_tokens"]:
            parts.append(f"{fmt_tokens(c['pretrain_tokens'])} pretraining tokens")
        if c["extra_stages"]:
            parts.append("in " + ", ".join(c["extra_stages"]))
        cells["cost"] = ", ".join(parts)
    return cells


def sentence(v: dict) -> str:
    """'dapt_ft vs ft_only: test macro-F1 ↑ −0.007, no measurable effect; domain ppl ÷3.22, ...'"""
    c = fmt_cells(v)
    text = f"{v['arm']} vs {v['reference']}: "
    metric = (v["metric"] or "").rstrip(" ↑↓")
    text += f"{metric} {c['task']}, {c['effect']}" if metric else "no task metric"
    unit = v.get("ppl_unit", "ppl")
    if c["domain"] != "—":
        text += f"; domain {unit} {c['domain']}"
    if c["general"] != "—":
        text += f"; general {unit} {c['general']}"
    if c["capabilities"]:
        text += f"; {c['capabilities']}"
    return text + f"; extra cost: {c['cost']}."
