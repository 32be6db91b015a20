"""report.md and report.html of a pipeline run, built from the run folder alone.

    lmadapt report runs/demo            # rebuilds runs/demo/report.md and runs/demo/report.html

Sources: ``results.jsonl`` (one row per arm, seed and stage), ``run_state.json``, ``pipeline.yaml``,
and each stage folder's ``metrics.json``, ``logs.jsonl`` and ``token_accounting.json``. The HTML
file is self-contained (inline CSS, inline SVG plots); report.md links the same plots as SVG files
in ``report_files/``.

The numbers come from compare.py (arms x columns, mean ± std, difference to the reference arm and
its noise rule) and verdict.py (did each adaptation pay off, at what cost), gathered by report_data.py
(tables and plot series); this module renders them.
"""
from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

from ..runtime.outputs import atomic_write_text
from .compare import BASELINE_ARM, Run, Stat, comparison, load_run, noise_rule
from .fmt import fmt_value as _fmt
from .report_data import build
from .verdict import fmt_cells, sentence, verdicts
from .vocab_report import vocab_html, vocab_md

ASSETS_DIR = "report_files"


def baseline_note(run: Run) -> str:
    """What the reference row is, with the vectorizer settings this run used (pipeline.yaml)."""
    from ..config.pipeline import BaselineConfig
    default = BaselineConfig()
    given = run.pipeline.get("baseline") or {}
    min_df, cap = given.get("min_df", default.min_df), given.get("max_features", default.max_features)
    return (f"TF-IDF (word 1–2-grams, min_df {min_df}, " + (f"at most {cap:,} features" if cap else "no feature cap")
            + ") + logistic regression on the same fine-tuning data, C chosen by dev macro-F1; a reference row, "
              "no language model involved.")


def _fmt_stat(s: Stat | None, key: str) -> str:
    if s is None or s.mean is None:
        return "—"
    text = _fmt(s.mean, key)
    if s.std is not None:
        text += f" ± {_fmt(s.std, key)}"
    return text + f" (n={s.n})"


def _fmt_diff(c: dict, key: str) -> str:
    if c["diff"] is None:
        return "—"
    return f"{_signed(c, key)} ({c['verdict']})" if c["verdict"] != "same model" else "same model"


def _signed(c: dict, key: str) -> str:
    return ("+" if c["diff"] >= 0 else "−") + _fmt(abs(c["diff"]), key)


# --- the plain-text summary (printed after `lmadapt run`) ------------------------------------------

def summary_table(run_dir: str | Path) -> str:
    """Plain-text comparison table (arms x metrics, mean ± std, diff to the reference arm)."""
    run = load_run(run_dir)
    comp = comparison(run)
    keys = [c.key for c in run.columns]
    lines = [["arm"] + [c.label for c in run.columns]]
    for row in comp["rows"]:
        lines.append([row["arm"]] + [_fmt_stat(row["cells"][k]["stat"], k).replace(" (n=", " n=").rstrip(")")
                                     for k in keys])
    diff_lines = [["diff to " + comp["reference"]] + [c.label for c in run.columns]]
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        diff_lines.append([row["arm"]] + [_fmt_diff(row["cells"][k]["cmp"], k) if row["cells"][k]["cmp"] else "—"
                                          for k in keys])

    def render(rows):
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    text = render(lines)
    if len(diff_lines) > 1:
        text += "\n\n" + render(diff_lines)
    answers = [sentence(v) for v in verdicts(run.rows, comp, run.columns)]
    if answers:
        text += "\n\nVerdict (did it pay off, and at what cost?):\n" + "\n".join(f"  {a}" for a in answers)
    return text + "\n\n" + noise_rule(run)


def _num(v, fmt="{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


# --- the report ----------------------------------------------------------------------------------

def _arm_chain(run: Run, arm: str) -> str:
    stages = (run.pipeline.get("arms") or {}).get(arm)
    if stages:
        return " → ".join(s if isinstance(s, str) else f"{s.get('kind')} (inline)" for s in stages)
    rows = sorted((r for r in run.rows if r["arm"] == arm), key=lambda r: r.get("position", 0))
    return " → ".join(dict.fromkeys(r["stage"] for r in rows))


MERGE_NOTE = ("merged = base + alpha × (adapted − base): alpha 0 is the model before continued pretraining, 1 the "
              "adapted one. Perplexities on the merge stage's own held-out sets.")


VERDICT_NOTE = ("Task: the difference on the test split of the metric fine-tuning selected on, judged by the noise "
                "rule below. Perplexities are of the model fine-tuning started from, as a factor of the reference's "
                "(÷ lower, × higher; a higher general perplexity is forgetting). Extra cost: wall time of the stages "
                "this arm runs and the reference does not (a shared base counts for neither), net of those only the "
                "reference runs, and the tokens those pretraining stages trained on.")


def _verdict_head(b: dict) -> list[str]:
    ref = b["comp"]["reference"]
    metric = b["verdicts"][0]["metric"] or "task"
    return ["arm", f"{metric} vs {ref}", "effect", "domain ppl", "forgetting (general ppl, capabilities)", f"extra cost vs {ref}"]


def _header_facts(run: Run) -> list[tuple[str, str]]:
    st = run.state
    seeds = sorted({r["seed"] for r in run.rows if r["kind"] != "baseline"})
    facts = [("run folder", str(run.folder.resolve())), ("status", st.get("status", "?")),
             ("seeds", ", ".join(map(str, seeds)) or "—"), ("reference arm", run.reference)]
    if st.get("wall_seconds") is not None:
        facts.append(("last run", f"{st.get('started', '?')} → {st.get('finished', '?')}, {st['wall_seconds']:.0f} s; "
                                  f"{len(st.get('executed', []))} stage(s) run, {len(st.get('reused', []))} reused"))
    ev = run.pipeline.get("evaluation") or {}
    if ev.get("lm_sets"):
        facts.append(("LM evidence", f"held-out sets {', '.join(f'{k} = {v}' for k, v in ev['lm_sets'].items())}; "
                                     f"block size {ev.get('block_size')}, at most {ev.get('max_tokens')} tokens per set"))
    h = ev.get("harness") or {}
    if h.get("tasks"):
        facts.append(("capability evidence", f"lm-evaluation-harness {', '.join(h['tasks'])}, "
                      f"{'at most ' + str(h['limit']) if h.get('limit') else 'all'} examples per task, "
                      f"{h.get('num_fewshot') if h.get('num_fewshot') is not None else 'default'} shots; "
                      "differences in points (accuracy x 100)"))
    ir = ev.get("instruction_retention") or {}
    if ir.get("data"):
        facts.append(("instruction retention", f"response loss on {ir['data']}"
                      + (f" (first {ir['limit']} records)" if ir.get("limit") else "")))
    return facts


def render_markdown(run: Run, b: dict) -> str:
    comp = b["comp"]
    lines = ["# lmadapt run report", ""]
    lines += [f"- **{k}**: {v}" for k, v in _header_facts(run)]
    lines += ["", "## Arms", ""]
    lines += [f"- **{a}**: {_arm_chain(run, a)}" for a in run.arms]
    if b["verdicts"]:
        lines += ["", "## Verdict: did it pay off, and at what cost?", "",
                  "| " + " | ".join(_verdict_head(b)) + " |", "|---|---:|---|---:|---:|---|"]
        for v in b["verdicts"]:
            c = fmt_cells(v)
            lines.append(f"| {c['arm']} | {c['task']} | {c['effect']} | {c['domain']} | {c['forgetting']} | {c['cost']} |")
        lines += ["", VERDICT_NOTE]
    lines += ["", "## Comparison", "",
              "Mean ± standard deviation over distinct runs (n). Task metrics come from each arm's last fine-tuning "
              "stage; perplexities are of the model that stage started from (lower is better).", ""]
    keys = [c.key for c in run.columns]
    lines.append("| arm | " + " | ".join(c.label for c in run.columns) + " |")
    lines.append("|" + "---|" + "---:|" * len(keys))
    for row in comp["rows"]:
        lines.append(f"| {row['arm']} | " + " | ".join(_fmt_stat(row['cells'][k]['stat'], k) for k in keys) + " |")
    lines += ["", f"### Difference to {comp['reference']}", ""]
    lines.append("| arm | " + " | ".join(c.label for c in run.columns) + " |")
    lines.append("|" + "---|" + "---:|" * len(keys))
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        lines.append(f"| {row['arm']} | " + " | ".join(
            _fmt_diff(row['cells'][k]['cmp'], k) if row['cells'][k]['cmp'] else "—" for k in keys) + " |")
    lines += ["", noise_rule(run), ""]
    if BASELINE_ARM in {r["arm"] for r in comp["rows"]}:
        lines += ["`tfidf_baseline`: " + baseline_note(run), ""]
    lines += ["## Plots", ""]
    for name in ("pretrain_loss", "pretrain_ppl", "finetune_loss", "finetune_dev"):
        if (name.startswith("pretrain") and b["has"]["pretrain"]) or (name.startswith("finetune") and b["has"]["finetune"]):
            lines.append(f"![{name}]({ASSETS_DIR}/{name}.svg)")
    lines.append("")
    if b["labels"]:
        arms = [a for a in list(run.arms) + [BASELINE_ARM] if a in b["per_class"]]
        lines += ["## Per-class test F1", "", "| class | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
        for lab in b["labels"]:
            lines.append(f"| {lab} | " + " | ".join(_fmt(b['per_class'][a].get(lab)) for a in arms) + " |")
        lines.append("")
    if b["evals"]:
        lines += ["## Evaluate stages", "", "| stage | set | loss | perplexity | tokens |", "|---|---|---:|---:|---:|"]
        lines += [f"| {x['stage']} | {x['set']} | {_num(x['loss'], '{:.4f}')} | {_fmt(x['perplexity'], 'ppl')} | "
                  f"{_num(x['tokens'])} |" for x in b["evals"]]
        lines.append("")
    for mg in b["merges"]:
        lines += [f"## Weight interpolation: {mg['stage']}", "", f"Chosen alpha {_num(mg['alpha'], '{:.2f}')}: "
                  f"{mg['rule']}. {MERGE_NOTE}", "",
                  "| alpha | " + " | ".join([f"{n} ppl" for n in mg["sets"]] + mg["caps"]) + " |",
                  "|---:|" + "---:|" * (len(mg["sets"]) + len(mg["caps"]))]
        lines += [f"| {'**' if x['chosen'] else ''}{x['alpha']:.2f}{'**' if x['chosen'] else ''} | "
                  + " | ".join([_fmt(v, 'ppl') for v in x["ppl"]] + [_fmt(v) for v in x["caps"]]) + " |"
                  for x in mg["rows"]]
        lines.append("")
    lines += vocab_md(run.rows)
    if b["tokens"]:
        lines += ["## Token accounting (pretraining stages)", "",
                  "| stage | documents | tokens | blocks | padding | dropped | non-pad | tokens seen | mixture (tokens used, share, factor) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for t in b["tokens"]:
            lines.append(f"| {t['stage']} | {_num(t['documents'])} | {_num(t['tokens'])} | "
                         f"{_num(t['blocks'])} × {_num(t['block_size'])} | {_num(t['padding'])} | {_num(t['dropped'])} | "
                         f"{_num(t['non_pad'], '{:.1%}')} | {_num(t['seen'])} | {t['mixture'] or '—'} |")
        lines.append("")
    lines += ["## Cost per stage", "",
              "| stage | kind | wall s | train s | tokens seen | tokens/s | peak RSS MB | peak GPU MB | this run |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in b["perf"]:
        lines.append(f"| {p['stage']} | {p['kind']} | {_num(p.get('wall_seconds'), '{:,.1f}')} | "
                     f"{_num(p.get('train_seconds'), '{:,.1f}')} | {_num(p.get('tokens_seen'))} | "
                     f"{_num(p.get('tokens_per_second'))} | {_num(p.get('peak_rss_mb'))} | {_num(p.get('peak_gpu_mb'))} | "
                     f"{'ran' if p['executed'] else 'cached'} |")
    lines += ["", "Peak RSS is the resident memory of the process that ran the stage: the `lmadapt run` process, "
                  "which still holds what earlier stages left loaded, or under `--jobs` a worker of the stage's own.", "",
              "## Stage folders", ""]
    lines += [f"- `stages/{p['id']}` ({p['kind']}; {p['stage']})"
              + (f" ← starts from `{p['parent']}`" if p.get("parent") else "") for p in b["perf"]]
    lines.append("")
    return "\n".join(lines)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
 line-height:1.45;padding:0 16px}
h1{font-size:24px;margin:0 0 8px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13.5px}
th,td{border:1px solid #d6d6d6;padding:4px 9px;vertical-align:top}
th{background:#f3f5f7;text-align:left;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ref td{background:#f7fbff}tr.base td{color:#555;font-style:italic}
.facts td:first-child{font-weight:600;white-space:nowrap}.facts td{border:none;padding:2px 12px 2px 0}
.good{color:#146c2e;font-weight:600}.bad{color:#a4161a;font-weight:600}.muted{color:#777}
.note{color:#555;font-size:13px;max-width:1000px}.tag{font-size:11px;font-weight:normal;color:#777}
.plots{display:flex;flex-wrap:wrap;gap:14px}.plots figure{margin:0;border:1px solid #e3e3e3;padding:6px;background:#fff}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:12.5px}
"""


def _cell_diff(c: dict | None, key: str, better: str) -> str:
    if not c or c["diff"] is None:
        return '<td class="n muted">—</td>'
    if c["verdict"] == "same model":
        return '<td class="n muted">same model</td>'
    cls = ""
    if c["verdict"] == "beyond noise":
        improved = (c["diff"] > 0) == (better == "higher")
        cls = "good" if improved else "bad"
    tip = f' title="threshold ±{_fmt(c["threshold"], key)}"' if c.get("threshold") is not None else ""
    return (f'<td class="n {cls}"{tip}>{_signed(c, key)}'
            f'<br><span class="tag">{html.escape(c["verdict"])}</span></td>')


def render_html(run: Run, b: dict) -> str:
    e = html.escape
    comp = b["comp"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>lmadapt report — {e(run.folder.resolve().name)}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>lmadapt run report — {e(run.folder.resolve().name)}</h1>", '<table class="facts">']
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _header_facts(run)]
    parts.append("</table><h2>Arms</h2><ul>")
    parts += [f"<li><b>{e(a)}</b>: {e(_arm_chain(run, a))}</li>" for a in run.arms]
    parts.append("</ul>")
    if b["verdicts"]:
        parts.append("<h2>Verdict: did it pay off, and at what cost?</h2><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in _verdict_head(b)) + "</tr>")
        for v in b["verdicts"]:
            c = fmt_cells(v)
            cls = {"helped": "good", "hurt": "bad"}.get(v["effect"], "muted")
            parts.append(f"<tr><td>{e(c['arm'])}</td><td class='n'>{e(c['task'])}</td>"
                         f"<td class='{cls}'>{e(c['effect'])}</td><td class='n'>{e(c['domain'])}</td>"
                         f"<td class='n'>{e(c['forgetting'])}</td><td>{e(c['cost'])}</td></tr>")
        parts.append(f"</table><p class='note'>{e(VERDICT_NOTE)}</p>")
    parts.append("<h2>Comparison</h2><p class='note'>Mean ± standard deviation over distinct runs (n). Task metrics "
                 "come from each arm's last fine-tuning stage; perplexities are of the model that stage started from "
                 "(lower is better).</p>")
    head = "<table><tr><th>arm</th>" + "".join(f"<th>{e(c.label)}</th>" for c in run.columns) + "</tr>"
    parts.append(head)
    for row in comp["rows"]:
        cls = "ref" if row["arm"] == comp["reference"] else ("base" if row["arm"] == BASELINE_ARM else "")
        parts.append(f'<tr class="{cls}"><td>{e(row["arm"])}{" (reference)" if cls == "ref" else ""}</td>' + "".join(
            f'<td class="n">{e(_fmt_stat(row["cells"][c.key]["stat"], c.key))}</td>' for c in run.columns) + "</tr>")
    parts.append("</table>")
    parts.append(f"<h3>Difference to {e(comp['reference'])}</h3>")
    parts.append(head)
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        parts.append(f"<tr><td>{e(row['arm'])}</td>" + "".join(
            _cell_diff(row["cells"][c.key]["cmp"], c.key, c.better) for c in run.columns) + "</tr>")
    parts.append("</table>")
    parts.append(f"<p class='note'>{e(noise_rule(run))} Green: better than the reference beyond noise; red: worse "
                 "beyond noise.</p>")
    if BASELINE_ARM in {r["arm"] for r in comp["rows"]}:
        parts.append(f"<p class='note'><i>tfidf_baseline</i>: {e(baseline_note(run))}</p>")
    parts.append("<h2>Plots</h2><div class='plots'>")
    for name, svg in b["plots"].items():
        if b["has"]["pretrain" if name.startswith("pretrain") else "finetune"]:
            parts.append(f"<figure>{svg}</figure>")
    parts.append("</div>")
    if b["labels"]:
        arms = [a for a in list(run.arms) + [BASELINE_ARM] if a in b["per_class"]]
        parts.append("<h2>Per-class test F1</h2><p class='note'>Mean over runs; cell shading grows with F1.</p>")
        parts.append("<table><tr><th>class</th>" + "".join(f"<th>{e(a)}</th>" for a in arms) + "</tr>")
        for lab in b["labels"]:
            cells = []
            for a in arms:
                v = b["per_class"][a].get(lab)
                shade = "" if v is None else f' style="background:rgba(31,119,180,{0.08 + 0.5 * v:.2f})"'
                cells.append(f'<td class="n"{shade}>{_fmt(v)}</td>')
            parts.append(f"<tr><td>{e(lab)}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    if b["evals"]:
        parts.append("<h2>Evaluate stages</h2><table><tr><th>stage</th><th>set</th><th>loss</th><th>perplexity</th>"
                     "<th>tokens</th></tr>")
        parts += [f"<tr><td>{e(x['stage'])}</td><td>{e(x['set'])}</td><td class='n'>{_num(x['loss'], '{:.4f}')}</td>"
                  f"<td class='n'>{_fmt(x['perplexity'], 'ppl')}</td><td class='n'>{_num(x['tokens'])}</td></tr>"
                  for x in b["evals"]]
        parts.append("</table>")
    for mg in b["merges"]:
        parts.append(f"<h2>Weight interpolation: {e(mg['stage'])}</h2><p class='note'>Chosen alpha "
                     f"{_num(mg['alpha'], '{:.2f}')}: {e(mg['rule'] or '')}. {e(MERGE_NOTE)}</p>"
                     "<table><tr><th>alpha</th>" + "".join(f"<th>{e(n)} ppl</th>" for n in mg["sets"])
                     + "".join(f"<th>{e(n)}</th>" for n in mg["caps"]) + "</tr>")
        parts += [f"<tr{' class=ref' if x['chosen'] else ''}><td class='n'>{x['alpha']:.2f}"
                  f"{' (chosen)' if x['chosen'] else ''}</td>"
                  + "".join(f"<td class='n'>{_fmt(v, 'ppl')}</td>" for v in x["ppl"])
                  + "".join(f"<td class='n'>{_fmt(v)}</td>" for v in x["caps"]) + "</tr>" for x in mg["rows"]]
        parts.append("</table>")
    parts += vocab_html(run.rows, e)
    if b["tokens"]:
        parts.append("<h2>Token accounting (pretraining stages)</h2>")
        parts.append("<table><tr><th>stage</th><th>documents</th><th>tokens</th><th>blocks</th><th>padding</th>"
                     "<th>dropped</th><th>non-pad</th><th>tokens seen</th><th>mixture: tokens used (share, factor)</th></tr>")
        for t in b["tokens"]:
            parts.append(f"<tr><td>{e(t['stage'])}</td><td class='n'>{_num(t['documents'])}</td>"
                         f"<td class='n'>{_num(t['tokens'])}</td><td class='n'>{_num(t['blocks'])} × {_num(t['block_size'])}</td>"
                         f"<td class='n'>{_num(t['padding'])}</td><td class='n'>{_num(t['dropped'])}</td>"
                         f"<td class='n'>{_num(t['non_pad'], '{:.1%}')}</td><td class='n'>{_num(t['seen'])}</td>"
                         f"<td>{e(t['mixture'] or '—')}</td></tr>")
        parts.append("</table><p class='note'>tokens: the training corpus after mixing (separators included); "
                     "tokens seen: what the optimiser consumed (non-padding), which is less than tokens when training "
                     "stops at a token budget.</p>")
    parts.append("<h2>Cost per stage</h2><table><tr><th>stage</th><th>kind</th><th>wall s</th><th>train s</th>"
                 "<th>tokens seen</th><th>tokens/s</th><th>peak RSS MB</th><th>peak GPU MB</th><th>this run</th></tr>")
    for p in b["perf"]:
        parts.append(f"<tr><td title='{e(p['id'])}'>{e(p['stage'])}</td><td>{e(p['kind'])}</td>"
                     f"<td class='n'>{_num(p.get('wall_seconds'), '{:,.1f}')}</td>"
                     f"<td class='n'>{_num(p.get('train_seconds'), '{:,.1f}')}</td>"
                     f"<td class='n'>{_num(p.get('tokens_seen'))}</td><td class='n'>{_num(p.get('tokens_per_second'))}</td>"
                     f"<td class='n'>{_num(p.get('peak_rss_mb'))}</td><td class='n'>{_num(p.get('peak_gpu_mb'))}</td>"
                     f"<td>{'ran' if p['executed'] else 'cached'}</td></tr>")
    parts.append("</table><p class='note'>Peak RSS is the resident memory of the process that ran the stage: the "
                 "<code>lmadapt run</code> process, which still holds what earlier stages left loaded, or under "
                 "<code>--jobs</code> a worker of the stage's own.</p>")
    parts.append("<h2>Stage folders</h2><ul>")
    parts += [f"<li><code>stages/{e(p['id'])}</code> ({e(p['kind'])}; {e(p['stage'])})"
              + (f" ← starts from <code>{e(p['parent'])}</code>" if p.get("parent") else "") + "</li>"
              for p in b["perf"]]
    parts.append(f"</ul><p class='note'>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>lmadapt report</code> "
                 "from the run folder.</p></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> dict:
    """(Re)build report.md, report.html and report_files/*.svg in ``run_dir``; returns their paths."""
    run = load_run(run_dir)
    b = build(run)
    folder = Path(run_dir)
    for name, svg in b["plots"].items():
        atomic_write_text(folder / ASSETS_DIR / f"{name}.svg", svg + "\n")
    md, page = folder / "report.md", folder / "report.html"
    atomic_write_text(md, render_markdown(run, b))
    atomic_write_text(page, render_html(run, b))
    return {"md": str(md), "html": str(page)}


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", help="output_dir of `lmadapt run` (holds results.jsonl)")
    return parser


def main_report(args: argparse.Namespace) -> int:
    paths = write_report(args.run_dir)
    print(summary_table(args.run_dir))
    print(f"\nwrote {paths['md']} and {paths['html']}")
    return 0
