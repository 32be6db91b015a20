"""What the report's three renderings share (the printed summary, report.md, report.html): the cells
of the comparison tables, the header facts of a run, the arms' chains and the notes under tables.

One place for them so the Markdown and HTML reports cannot drift apart in what they say; each
renderer only decides how it looks.
"""

from __future__ import annotations

from .compare import Run, Stat
from .fmt import fmt_value as _fmt

MERGE_NOTE = (
    "merged = base + alpha × (adapted − base): alpha 0 is the model before continued pretraining, 1 the "
    "adapted one. Perplexities on the merge stage's own held-out sets."
)


VERDICT_NOTE = (
    "Task: the difference on the test split of the metric fine-tuning selected on, judged by the noise "
    "rule below. Perplexities are of the model fine-tuning started from, as a factor of the reference's "
    "(÷ lower, × higher; a higher general perplexity is forgetting). Extra cost: wall time of the stages "
    "this arm runs and the reference does not (a shared base counts for neither), net of those only the "
    "reference runs, and the tokens those pretraining stages trained on."
)


def baseline_note(run: Run) -> str:
    """What the reference row is, with the vectorizer settings this run used (pipeline.yaml)."""
    from ..config.pipeline import BaselineConfig

    default = BaselineConfig()
    given = run.pipeline.get("baseline") or {}
    min_df, cap = given.get("min_df", default.min_df), given.get("max_features", default.max_features)
    return (
        f"TF-IDF (word 1–2-grams, min_df {min_df}, "
        + (f"at most {cap:,} features" if cap else "no feature cap")
        + ") + logistic regression on the same fine-tuning data, C chosen by dev macro-F1; a reference row, "
        "no language model involved."
    )


def fmt_stat(s: Stat | None, key: str) -> str:
    """A comparison cell: mean ± std (n=...), or "—"."""
    if s is None or s.mean is None:
        return "—"
    text = _fmt(s.mean, key)
    if s.std is not None:
        text += f" ± {_fmt(s.std, key)}"
    return text + f" (n={s.n})"


def fmt_diff(c: dict, key: str) -> str:
    """A difference cell (plain text): signed difference and the noise rule's verdict on it."""
    if c["diff"] is None:
        return "—"
    return f"{signed(c, key)} ({c['verdict']})" if c["verdict"] != "same model" else "same model"


def signed(c: dict, key: str) -> str:
    return ("+" if c["diff"] >= 0 else "−") + _fmt(abs(c["diff"]), key)


def num(v, fmt="{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def arm_chain(run: Run, arm: str) -> str:
    """An arm's stages as "a → b → c" (from pipeline.yaml, else from the rows)."""
    stages = (run.pipeline.get("arms") or {}).get(arm)
    if stages:
        return " → ".join(s if isinstance(s, str) else f"{s.get('kind')} (inline)" for s in stages)
    rows = sorted((r for r in run.rows if r["arm"] == arm), key=lambda r: r.get("position", 0))
    return " → ".join(dict.fromkeys(r["stage"] for r in rows))


def verdict_head(b: dict) -> list[str]:
    ref = b["comp"]["reference"]
    metric = b["verdicts"][0]["metric"] or "task"
    return [
        "arm",
        f"{metric} vs {ref}",
        "effect",
        "domain ppl",
        "forgetting (general ppl, capabilities)",
        f"extra cost vs {ref}",
    ]


def header_facts(run: Run) -> list[tuple[str, str]]:
    """The report's opening facts: folder, status, seeds, last run, what the evidence was measured on."""
    st = run.state
    seeds = sorted({r["seed"] for r in run.rows if r["kind"] != "baseline"})
    facts = [
        ("run folder", str(run.folder.resolve())),
        ("status", st.get("status", "?")),
        ("seeds", ", ".join(map(str, seeds)) or "—"),
        ("reference arm", run.reference),
    ]
    if st.get("wall_seconds") is not None:
        facts.append(
            (
                "last run",
                f"{st.get('started', '?')} → {st.get('finished', '?')}, {st['wall_seconds']:.0f} s; "
                f"{len(st.get('executed', []))} stage(s) run, {len(st.get('reused', []))} reused",
            )
        )
    ev = run.pipeline.get("evaluation") or {}
    if ev.get("lm_sets"):
        facts.append(
            (
                "LM evidence",
                f"held-out sets {', '.join(f'{k} = {v}' for k, v in ev['lm_sets'].items())}; "
                f"block size {ev.get('block_size')}, at most {ev.get('max_tokens')} tokens per set",
            )
        )
    h = ev.get("harness") or {}
    if h.get("tasks"):
        facts.append(
            (
                "capability evidence",
                f"lm-evaluation-harness {', '.join(h['tasks'])}, "
                f"{'at most ' + str(h['limit']) if h.get('limit') else 'all'} examples per task, "
                f"{h.get('num_fewshot') if h.get('num_fewshot') is not None else 'default'} shots; "
                "differences in points (accuracy x 100)",
            )
        )
    ir = ev.get("instruction_retention") or {}
    if ir.get("data"):
        facts.append(
            (
                "instruction retention",
                f"response loss on {ir['data']}" + (f" (first {ir['limit']} records)" if ir.get("limit") else ""),
            )
        )
    return facts
