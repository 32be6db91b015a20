"""report.md: the run report as Markdown tables, one function per section (report.py writes it).

The plots are not inlined: report.md links the SVG files write_report puts in ``ASSETS_DIR``.
"""

from __future__ import annotations

from .compare import BASELINE_ARM, Run, noise_rule
from .fmt import fmt_value as _fmt
from .report_cells import (
    MERGE_NOTE,
    VERDICT_NOTE,
    arm_chain,
    baseline_note,
    fmt_diff,
    fmt_stat,
    header_facts,
    num,
    verdict_head,
)
from .verdict import fmt_cells
from .vocab_report import vocab_md

ASSETS_DIR = "report_files"


def render_markdown(run: Run, b: dict) -> str:
    lines = _head(run)
    lines += _verdicts(b)
    lines += _comparison(run, b["comp"])
    lines += _plots(b)
    lines += _per_class(run, b)
    lines += _evals(b)
    lines += _merges(b)
    lines += vocab_md(run.rows)
    lines += _tokens(b)
    lines += _cost(b)
    return "\n".join(lines)


def _head(run: Run) -> list[str]:
    lines = ["# lmadapt run report", ""]
    lines += [f"- **{k}**: {v}" for k, v in header_facts(run)]
    lines += ["", "## Arms", ""]
    lines += [f"- **{a}**: {arm_chain(run, a)}" for a in run.arms]
    return lines


def _verdicts(b: dict) -> list[str]:
    if not b["verdicts"]:
        return []
    lines = [
        "",
        "## Verdict: did it pay off, and at what cost?",
        "",
        "| " + " | ".join(verdict_head(b)) + " |",
        "|---|---:|---|---:|---:|---|",
    ]
    for v in b["verdicts"]:
        c = fmt_cells(v)
        lines.append(f"| {c['arm']} | {c['task']} | {c['effect']} | {c['domain']} | {c['forgetting']} | {c['cost']} |")
    lines += ["", VERDICT_NOTE]
    return lines


def _comparison(run: Run, comp: dict) -> list[str]:
    """Arms x columns (mean ± std), their differences to the reference, the noise rule."""
    lines = [
        "",
        "## Comparison",
        "",
        "Mean ± standard deviation over distinct runs (n). Task metrics come from each arm's last fine-tuning "
        "stage; perplexities are of the model that stage started from (lower is better).",
        "",
    ]
    keys = [c.key for c in run.columns]
    lines.append("| arm | " + " | ".join(c.label for c in run.columns) + " |")
    lines.append("|" + "---|" + "---:|" * len(keys))
    for row in comp["rows"]:
        lines.append(f"| {row['arm']} | " + " | ".join(fmt_stat(row["cells"][k]["stat"], k) for k in keys) + " |")
    lines += ["", f"### Difference to {comp['reference']}", ""]
    lines.append("| arm | " + " | ".join(c.label for c in run.columns) + " |")
    lines.append("|" + "---|" + "---:|" * len(keys))
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        lines.append(
            f"| {row['arm']} | "
            + " | ".join(fmt_diff(row["cells"][k]["cmp"], k) if row["cells"][k]["cmp"] else "—" for k in keys)
            + " |"
        )
    lines += ["", noise_rule(run), ""]
    if BASELINE_ARM in {r["arm"] for r in comp["rows"]}:
        lines += ["`tfidf_baseline`: " + baseline_note(run), ""]
    return lines


def _plots(b: dict) -> list[str]:
    lines = ["## Plots", ""]
    for name in ("pretrain_loss", "pretrain_ppl", "finetune_loss", "finetune_dev"):
        if (name.startswith("pretrain") and b["has"]["pretrain"]) or (
            name.startswith("finetune") and b["has"]["finetune"]
        ):
            lines.append(f"![{name}]({ASSETS_DIR}/{name}.svg)")
    lines.append("")
    return lines


def _per_class(run: Run, b: dict) -> list[str]:
    if not b["labels"]:
        return []
    arms = [a for a in list(run.arms) + [BASELINE_ARM] if a in b["per_class"]]
    lines = ["## Per-class test F1", "", "| class | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for lab in b["labels"]:
        lines.append(f"| {lab} | " + " | ".join(_fmt(b["per_class"][a].get(lab)) for a in arms) + " |")
    lines.append("")
    return lines


def _evals(b: dict) -> list[str]:
    if not b["evals"]:
        return []
    lines = ["## Evaluate stages", "", "| stage | set | loss | perplexity | tokens |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {x['stage']} | {x['set']} | {num(x['loss'], '{:.4f}')} | {_fmt(x['perplexity'], 'ppl')} | "
        f"{num(x['tokens'])} |"
        for x in b["evals"]
    ]
    lines.append("")
    return lines


def _merges(b: dict) -> list[str]:
    lines: list[str] = []
    for mg in b["merges"]:
        lines += [
            f"## Weight interpolation: {mg['stage']}",
            "",
            f"Chosen alpha {num(mg['alpha'], '{:.2f}')}: {mg['rule']}. {MERGE_NOTE}",
            "",
            "| alpha | " + " | ".join([f"{n} ppl" for n in mg["sets"]] + mg["caps"]) + " |",
            "|---:|" + "---:|" * (len(mg["sets"]) + len(mg["caps"])),
        ]
        lines += [
            f"| {'**' if x['chosen'] else ''}{x['alpha']:.2f}{'**' if x['chosen'] else ''} | "
            + " | ".join([_fmt(v, "ppl") for v in x["ppl"]] + [_fmt(v) for v in x["caps"]])
            + " |"
            for x in mg["rows"]
        ]
        lines.append("")
    return lines


def _tokens(b: dict) -> list[str]:
    if not b["tokens"]:
        return []
    lines = [
        "## Token accounting (pretraining stages)",
        "",
        "| stage | documents | tokens | blocks | padding | dropped | non-pad | tokens seen | mixture (tokens used, share, factor) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in b["tokens"]:
        lines.append(
            f"| {t['stage']} | {num(t['documents'])} | {num(t['tokens'])} | "
            f"{num(t['blocks'])} × {num(t['block_size'])} | {num(t['padding'])} | {num(t['dropped'])} | "
            f"{num(t['non_pad'], '{:.1%}')} | {num(t['seen'])} | {t['mixture'] or '—'} |"
        )
    lines.append("")
    return lines


def _cost(b: dict) -> list[str]:
    """Cost per stage, and the stage folders (the report's last sections)."""
    lines = [
        "## Cost per stage",
        "",
        "| stage | kind | wall s | train s | tokens seen | tokens/s | peak RSS MB | peak GPU MB | this run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in b["perf"]:
        lines.append(
            f"| {p['stage']} | {p['kind']} | {num(p.get('wall_seconds'), '{:,.1f}')} | "
            f"{num(p.get('train_seconds'), '{:,.1f}')} | {num(p.get('tokens_seen'))} | "
            f"{num(p.get('tokens_per_second'))} | {num(p.get('peak_rss_mb'))} | {num(p.get('peak_gpu_mb'))} | "
            f"{'ran' if p['executed'] else 'cached'} |"
        )
    lines += [
        "",
        "Peak RSS is the resident memory of the process that ran the stage: the `lmadapt run` process, "
        "which still holds what earlier stages left loaded, or under `--jobs` a worker of the stage's own.",
        "",
        "## Stage folders",
        "",
    ]
    lines += [
        f"- `stages/{p['id']}` ({p['kind']}; {p['stage']})"
        + (f" ← starts from `{p['parent']}`" if p.get("parent") else "")
        for p in b["perf"]
    ]
    lines.append("")
    return lines
