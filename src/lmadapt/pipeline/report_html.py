"""report.html: the run report as one self-contained page (inline CSS, inline SVG plots), one function
per section (report.py writes it). Differences beyond noise are coloured: green better, red worse.
"""

from __future__ import annotations

import time
from html import escape as e  # one letter: nearly every value in the f-strings below goes through it

from .compare import BASELINE_ARM, Run, noise_rule
from .fmt import fmt_value as _fmt
from .report_cells import (
    MERGE_NOTE,
    VERDICT_NOTE,
    arm_chain,
    baseline_note,
    fmt_stat,
    header_facts,
    num,
    signed,
    verdict_head,
)
from .verdict import fmt_cells
from .vocab_report import vocab_html

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


def render_html(run: Run, b: dict) -> str:
    parts = _head(run)
    parts += _verdicts(b)
    parts += _comparison(run, b["comp"])
    parts += _plots(b)
    parts += _per_class(run, b)
    parts += _evals(b)
    parts += _merges(b)
    parts += vocab_html(run.rows, e)
    parts += _tokens(b)
    parts += _cost(b)
    return "\n".join(parts)


def _head(run: Run) -> list[str]:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lmadapt report — {e(run.folder.resolve().name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>lmadapt run report — {e(run.folder.resolve().name)}</h1>",
        '<table class="facts">',
    ]
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in header_facts(run)]
    parts.append("</table><h2>Arms</h2><ul>")
    parts += [f"<li><b>{e(a)}</b>: {e(arm_chain(run, a))}</li>" for a in run.arms]
    parts.append("</ul>")
    return parts


def _verdicts(b: dict) -> list[str]:
    if not b["verdicts"]:
        return []
    parts = [
        "<h2>Verdict: did it pay off, and at what cost?</h2><table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in verdict_head(b))
        + "</tr>"
    ]
    for v in b["verdicts"]:
        c = fmt_cells(v)
        cls = {"helped": "good", "hurt": "bad"}.get(v["effect"], "muted")
        parts.append(
            f"<tr><td>{e(c['arm'])}</td><td class='n'>{e(c['task'])}</td>"
            f"<td class='{cls}'>{e(c['effect'])}</td><td class='n'>{e(c['domain'])}</td>"
            f"<td class='n'>{e(c['forgetting'])}</td><td>{e(c['cost'])}</td></tr>"
        )
    parts.append(f"</table><p class='note'>{e(VERDICT_NOTE)}</p>")
    return parts


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
    return f'<td class="n {cls}"{tip}>{signed(c, key)}<br><span class="tag">{e(c["verdict"])}</span></td>'


def _comparison(run: Run, comp: dict) -> list[str]:
    """Arms x columns (mean ± std), their differences to the reference (coloured), the noise rule."""
    parts = [
        "<h2>Comparison</h2><p class='note'>Mean ± standard deviation over distinct runs (n). Task metrics "
        "come from each arm's last fine-tuning stage; perplexities are of the model that stage started from "
        "(lower is better).</p>"
    ]
    head = "<table><tr><th>arm</th>" + "".join(f"<th>{e(c.label)}</th>" for c in run.columns) + "</tr>"
    parts.append(head)
    for row in comp["rows"]:
        cls = "ref" if row["arm"] == comp["reference"] else ("base" if row["arm"] == BASELINE_ARM else "")
        parts.append(
            f'<tr class="{cls}"><td>{e(row["arm"])}{" (reference)" if cls == "ref" else ""}</td>'
            + "".join(f'<td class="n">{e(fmt_stat(row["cells"][c.key]["stat"], c.key))}</td>' for c in run.columns)
            + "</tr>"
        )
    parts.append("</table>")
    parts.append(f"<h3>Difference to {e(comp['reference'])}</h3>")
    parts.append(head)
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        parts.append(
            f"<tr><td>{e(row['arm'])}</td>"
            + "".join(_cell_diff(row["cells"][c.key]["cmp"], c.key, c.better) for c in run.columns)
            + "</tr>"
        )
    parts.append("</table>")
    parts.append(
        f"<p class='note'>{e(noise_rule(run))} Green: better than the reference beyond noise; red: worse "
        "beyond noise.</p>"
    )
    if BASELINE_ARM in {r["arm"] for r in comp["rows"]}:
        parts.append(f"<p class='note'><i>tfidf_baseline</i>: {e(baseline_note(run))}</p>")
    return parts


def _plots(b: dict) -> list[str]:
    parts = ["<h2>Plots</h2><div class='plots'>"]
    for name, svg in b["plots"].items():
        if b["has"]["pretrain" if name.startswith("pretrain") else "finetune"]:
            parts.append(f"<figure>{svg}</figure>")
    parts.append("</div>")
    return parts


def _per_class(run: Run, b: dict) -> list[str]:
    if not b["labels"]:
        return []
    arms = [a for a in list(run.arms) + [BASELINE_ARM] if a in b["per_class"]]
    parts = ["<h2>Per-class test F1</h2><p class='note'>Mean over runs; cell shading grows with F1.</p>"]
    parts.append("<table><tr><th>class</th>" + "".join(f"<th>{e(a)}</th>" for a in arms) + "</tr>")
    for lab in b["labels"]:
        cells = []
        for a in arms:
            v = b["per_class"][a].get(lab)
            shade = "" if v is None else f' style="background:rgba(31,119,180,{0.08 + 0.5 * v:.2f})"'
            cells.append(f'<td class="n"{shade}>{_fmt(v)}</td>')
        parts.append(f"<tr><td>{e(lab)}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def _evals(b: dict) -> list[str]:
    if not b["evals"]:
        return []
    parts = [
        "<h2>Evaluate stages</h2><table><tr><th>stage</th><th>set</th><th>loss</th><th>perplexity</th>"
        "<th>tokens</th></tr>"
    ]
    parts += [
        f"<tr><td>{e(x['stage'])}</td><td>{e(x['set'])}</td><td class='n'>{num(x['loss'], '{:.4f}')}</td>"
        f"<td class='n'>{_fmt(x['perplexity'], 'ppl')}</td><td class='n'>{num(x['tokens'])}</td></tr>"
        for x in b["evals"]
    ]
    parts.append("</table>")
    return parts


def _merges(b: dict) -> list[str]:
    parts: list[str] = []
    for mg in b["merges"]:
        parts.append(
            f"<h2>Weight interpolation: {e(mg['stage'])}</h2><p class='note'>Chosen alpha "
            f"{num(mg['alpha'], '{:.2f}')}: {e(mg['rule'] or '')}. {e(MERGE_NOTE)}</p>"
            "<table><tr><th>alpha</th>"
            + "".join(f"<th>{e(n)} ppl</th>" for n in mg["sets"])
            + "".join(f"<th>{e(n)}</th>" for n in mg["caps"])
            + "</tr>"
        )
        parts += [
            f"<tr{' class=ref' if x['chosen'] else ''}><td class='n'>{x['alpha']:.2f}"
            f"{' (chosen)' if x['chosen'] else ''}</td>"
            + "".join(f"<td class='n'>{_fmt(v, 'ppl')}</td>" for v in x["ppl"])
            + "".join(f"<td class='n'>{_fmt(v)}</td>" for v in x["caps"])
            + "</tr>"
            for x in mg["rows"]
        ]
        parts.append("</table>")
    return parts


def _tokens(b: dict) -> list[str]:
    if not b["tokens"]:
        return []
    parts = ["<h2>Token accounting (pretraining stages)</h2>"]
    parts.append(
        "<table><tr><th>stage</th><th>documents</th><th>tokens</th><th>blocks</th><th>padding</th>"
        "<th>dropped</th><th>non-pad</th><th>tokens seen</th><th>mixture: tokens used (share, factor)</th></tr>"
    )
    for t in b["tokens"]:
        parts.append(
            f"<tr><td>{e(t['stage'])}</td><td class='n'>{num(t['documents'])}</td>"
            f"<td class='n'>{num(t['tokens'])}</td><td class='n'>{num(t['blocks'])} × {num(t['block_size'])}</td>"
            f"<td class='n'>{num(t['padding'])}</td><td class='n'>{num(t['dropped'])}</td>"
            f"<td class='n'>{num(t['non_pad'], '{:.1%}')}</td><td class='n'>{num(t['seen'])}</td>"
            f"<td>{e(t['mixture'] or '—')}</td></tr>"
        )
    parts.append(
        "</table><p class='note'>tokens: the training corpus after mixing (separators included); "
        "tokens seen: what the optimiser consumed (non-padding), which is less than tokens when training "
        "stops at a token budget.</p>"
    )
    return parts


def _cost(b: dict) -> list[str]:
    """Cost per stage, the stage folders and the page's footer (the report's last sections)."""
    parts = [
        "<h2>Cost per stage</h2><table><tr><th>stage</th><th>kind</th><th>wall s</th><th>train s</th>"
        "<th>tokens seen</th><th>tokens/s</th><th>peak RSS MB</th><th>peak GPU MB</th><th>this run</th></tr>"
    ]
    for p in b["perf"]:
        parts.append(
            f"<tr><td title='{e(p['id'])}'>{e(p['stage'])}</td><td>{e(p['kind'])}</td>"
            f"<td class='n'>{num(p.get('wall_seconds'), '{:,.1f}')}</td>"
            f"<td class='n'>{num(p.get('train_seconds'), '{:,.1f}')}</td>"
            f"<td class='n'>{num(p.get('tokens_seen'))}</td><td class='n'>{num(p.get('tokens_per_second'))}</td>"
            f"<td class='n'>{num(p.get('peak_rss_mb'))}</td><td class='n'>{num(p.get('peak_gpu_mb'))}</td>"
            f"<td>{'ran' if p['executed'] else 'cached'}</td></tr>"
        )
    parts.append(
        "</table><p class='note'>Peak RSS is the resident memory of the process that ran the stage: the "
        "<code>lmadapt run</code> process, which still holds what earlier stages left loaded, or under "
        "<code>--jobs</code> a worker of the stage's own.</p>"
    )
    parts.append("<h2>Stage folders</h2><ul>")
    parts += [
        f"<li><code>stages/{e(p['id'])}</code> ({e(p['kind'])}; {e(p['stage'])})"
        + (f" ← starts from <code>{e(p['parent'])}</code>" if p.get("parent") else "")
        + "</li>"
        for p in b["perf"]
    ]
    parts.append(
        f"</ul><p class='note'>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>lmadapt report</code> "
        "from the run folder.</p></body></html>"
    )
    return parts
