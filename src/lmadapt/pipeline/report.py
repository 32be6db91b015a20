"""report.md and report.html of a pipeline run, built from the run folder alone.

    lmadapt report runs/demo            # rebuilds runs/demo/report.md and runs/demo/report.html

Sources: ``results.jsonl`` (one row per arm, seed and stage), ``run_state.json``, ``pipeline.yaml``,
and each stage folder's ``metrics.json``, ``logs.jsonl`` and ``token_accounting.json``. The HTML
file is self-contained (inline CSS, inline SVG plots); report.md links the same plots as SVG files
in ``report_files/``.

The numbers come from compare.py (arms x columns, mean ± std, difference to the reference arm and
its noise rule) and verdict.py (did each adaptation pay off, at what cost).
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

from ..runtime.outputs import ACCOUNTING_FILE, atomic_write_text, read_json
from .compare import BASELINE_ARM, Run, Stat, arm_chains, comparison, load_run, noise_rule
from .fmt import fmt_value as _fmt
from .svg import svg_chart
from .verdict import fmt_cells, sentence, verdicts
from .vocab_report import vocab_html, vocab_md

ASSETS_DIR = "report_files"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22"]


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


# --- tables --------------------------------------------------------------------------------------

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


def per_class_f1(run: Run) -> tuple[list[str], dict[str, dict[str, float]]]:
    labels: list[str] = []
    acc: dict[str, dict[str, list[float]]] = {}
    seen: set[tuple[str, str]] = set()
    for (arm, _seed), rows in arm_chains(run).items():
        ft = [r for r in rows if r.get("task")]
        if not ft:
            continue
        last = ft[-1]
        if (arm, last["id"]) in seen:
            continue
        seen.add((arm, last["id"]))
        test = run.metrics(last.get("folder")).get("test") or {}
        for lab, m in (test.get("per_class") or {}).items():
            if lab not in labels:
                labels.append(lab)
            if m.get("f1") is not None:
                acc.setdefault(arm, {}).setdefault(lab, []).append(float(m["f1"]))
    means = {arm: {lab: sum(v) / len(v) for lab, v in d.items()} for arm, d in acc.items()}
    return labels, means


def _stage_rows(run: Run, kind: str | None = None) -> list[dict]:
    """Distinct stage instances (first row of each), in run order."""
    seen, out = set(), []
    for r in run.rows:
        if r.get("kind") in ("input", "baseline") or (kind and r.get("kind") != kind):
            continue
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        r = dict(r)
        r["used_by"] = list(dict.fromkeys(f"{x['arm']}/s{x['seed']}" for x in run.rows if x.get("id") == r["id"]))
        out.append(r)
    return out


def _stage_label(r: dict) -> str:
    """'ft · dapt_ft · seed 0', 'base · ft_only, dapt_ft': the stage and who uses it."""
    arms = list(dict.fromkeys(u.rsplit("/s", 1)[0] for u in r.get("used_by") or [])) or [r["arm"]]
    return f"{r['stage']} · {', '.join(arms)}" + (f" · seed {r['seed']}" if r.get("seeded") else "")


def _plot_label(r: dict) -> str:
    return r["stage"] + (f" · seed {r['seed']}" if r.get("seeded") else "")


def token_rows(run: Run) -> list[dict]:
    out = []
    for r in _stage_rows(run, "pretrain"):
        acc = read_json(run.folder / r["folder"] / ACCOUNTING_FILE, default={}) or {}
        train = acc.get("train") or {}
        mixture = ", ".join(f"{m['name']}: {m['tokens_used']:,} ({m['share']:.1%}, x{m['factor']:.2f})"
                            for m in acc.get("mixture") or [])
        out.append({"stage": _stage_label(r), "id": r["id"], "documents": train.get("documents"),
                    "tokens": train.get("tokens"), "blocks": train.get("blocks"), "block_size": train.get("block_size"),
                    "padding": train.get("padding_tokens"), "dropped": train.get("tokens_dropped"),
                    "non_pad": train.get("non_pad_fraction"), "mode": train.get("mode"), "mixture": mixture,
                    "seen": (r.get("perf") or {}).get("tokens_seen")})
    return out


def perf_rows(run: Run) -> list[dict]:
    out = []
    for r in _stage_rows(run):
        p = r.get("perf") or {}
        out.append({"stage": _stage_label(r), "kind": r["kind"], "id": r["id"], "parent": r.get("parent"), **p,
                    "executed": any(x.get("executed") for x in run.rows if x.get("id") == r["id"])})
    return out


def _num(v, fmt="{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


# --- series for the plots ------------------------------------------------------------------------

def _logs(folder: Path) -> list[dict]:
    """logs.jsonl rows; after a resume the rows of the abandoned attempt past the restart step are dropped."""
    path = folder / "logs.jsonl"
    if not path.is_file():
        return []
    rows: list[dict] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        step = row.get("step") or 0
        while rows and (rows[-1].get("step") or 0) > step:
            rows.pop()
        rows.append(row)
    return rows


def _tokens_offset(run: Run, r: dict) -> int:
    """Tokens seen by the ancestors of a stage (so a continued pretraining curve starts where its parent ended)."""
    total, parent = 0, r.get("parent")
    by_folder = {x.get("folder"): x for x in run.rows if x.get("folder")}
    while parent:
        p = by_folder.get(parent)
        if p is None:
            break
        total += int(((p.get("perf") or {}).get("tokens_seen")) or 0)
        parent = p.get("parent")
    return total


def pretrain_series(run: Run) -> tuple[list[dict], list[dict]]:
    """(training loss vs tokens, held-out perplexity vs tokens) per pretrain stage."""
    loss, ppl = [], []
    stages = _stage_rows(run, "pretrain")
    for i, r in enumerate(stages):
        color = PALETTE[i % len(PALETTE)]
        folder = run.folder / r["folder"]
        off = _tokens_offset(run, r)
        rows = _logs(folder)
        pts = [(off + x["tokens_seen"], x["loss"]) for x in rows
               if x.get("loss") is not None and x.get("tokens_seen") is not None]
        if pts:
            loss.append({"label": _plot_label(r), "points": pts, "color": color})
        m = run.metrics(r["folder"])
        seen = int(((m.get("train") or {}).get("tokens_seen")) or 0)
        for j, (name, h) in enumerate((m.get("heldout") or {}).items()):
            points = []
            if (h.get("before") or {}).get("perplexity") is not None:
                points.append((off, h["before"]["perplexity"]))
            for x in rows:
                v = x.get(f"eval_{name}_perplexity")
                if v is not None and x.get("tokens_seen") is not None:
                    points.append((off + x["tokens_seen"], v))
            if (h.get("after") or {}).get("perplexity") is not None:
                points.append((off + seen, h["after"]["perplexity"]))
            if points:
                ppl.append({"label": f"{_plot_label(r)} · {name}", "points": points, "color": color,
                            "dash": ["", "6 4", "2 3", "10 3 2 3"][j % 4], "markers": True})
    return loss, ppl


def finetune_series(run: Run) -> tuple[list[dict], list[dict], str]:
    """(training loss vs tokens, dev metric vs epoch, metric name) per fine-tuning stage."""
    loss, dev = [], []
    metric = "macro_f1"
    arm_color = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(run.arms)}
    seen_ids = set()
    for r in run.rows:
        if r.get("kind") != "finetune" or r["id"] in seen_ids:
            continue
        seen_ids.add(r["id"])
        metric = (r.get("task") or {}).get("metric") or metric
        rows = _logs(run.folder / r["folder"])
        label = f"{r['arm']} · seed {r['seed']}"
        seeds = sorted({x["seed"] for x in run.rows})
        dash = ["", "6 4", "2 3", "10 3 2 3"][seeds.index(r["seed"]) % 4] if r["seed"] in seeds else ""
        color = arm_color.get(r["arm"], "#333")
        pts = [(x["tokens_seen"], x["loss"]) for x in rows if x.get("loss") is not None and x.get("tokens_seen")]
        if pts:
            loss.append({"label": label, "points": pts, "color": color, "dash": dash})
        dpts = [(x["epoch"], x[f"eval_dev_{metric}"]) for x in rows
                if x.get(f"eval_dev_{metric}") is not None and x.get("epoch") is not None]
        if dpts:
            dev.append({"label": label, "points": dpts, "color": color, "dash": dash, "markers": True})
    return loss, dev, metric


# --- the report ----------------------------------------------------------------------------------

def _arm_chain(run: Run, arm: str) -> str:
    stages = (run.pipeline.get("arms") or {}).get(arm)
    if stages:
        return " → ".join(s if isinstance(s, str) else f"{s.get('kind')} (inline)" for s in stages)
    rows = sorted((r for r in run.rows if r["arm"] == arm), key=lambda r: r.get("position", 0))
    return " → ".join(dict.fromkeys(r["stage"] for r in rows))


def build(run: Run) -> dict:
    """Everything the two renderers need."""
    comp = comparison(run)
    labels, pcf = per_class_f1(run)
    base_pc = {}
    for r in run.rows:
        if r.get("kind") == "baseline" and r.get("folder"):
            test = run.metrics(r["folder"]).get("test") or {}
            for lab, m in (test.get("per_class") or {}).items():
                base_pc.setdefault(lab, []).append(m.get("f1") or 0.0)
    if base_pc:
        pcf[BASELINE_ARM] = {lab: sum(v) / len(v) for lab, v in base_pc.items()}
    p_loss, p_ppl = pretrain_series(run)
    f_loss, f_dev, metric = finetune_series(run)
    plots = {
        "pretrain_loss": svg_chart(p_loss, title="Pretraining: training loss vs tokens seen",
                                   xlabel="tokens seen (cumulative along the stage chain)", ylabel="training loss"),
        "pretrain_ppl": svg_chart(p_ppl, title="Pretraining: held-out perplexity vs tokens seen",
                                  xlabel="tokens seen (cumulative along the stage chain)", ylabel="perplexity", logy=True),
        "finetune_loss": svg_chart(f_loss, title="Fine-tuning: training loss vs tokens seen",
                                   xlabel="tokens seen (non-padding)", ylabel="training loss"),
        "finetune_dev": svg_chart(f_dev, title=f"Fine-tuning: dev {metric} by epoch", xlabel="epoch",
                                  ylabel=f"dev {metric}"),
    }
    has = {"pretrain": bool(p_loss or p_ppl), "finetune": bool(f_loss or f_dev)}
    evals = [{"stage": _stage_label(r), "set": name, "loss": m.get("loss"), "perplexity": m.get("perplexity"),
              "tokens": m.get("tokens")}
             for r in _stage_rows(run, "evaluate") for name, m in (r.get("lm") or {}).items()]
    return {"comp": comp, "labels": labels, "per_class": pcf, "plots": plots, "has": has,
            "tokens": token_rows(run), "perf": perf_rows(run), "metric": metric, "evals": evals,
            "merges": merge_rows(run), "verdicts": verdicts(run.rows, comp, run.columns)}


def merge_rows(run: Run) -> list[dict]:
    """Per merge stage: its sweep as rows (alpha, perplexity per held-out set, chosen or not)."""
    out = []
    for r in _stage_rows(run, "merge"):
        m = r.get("merge") or {}
        sweep = m.get("sweep") or []
        names = list(dict.fromkeys(n for row in sweep for n in row.get("sets") or {}))
        # capability scores at each weight (merge eval.harness / instruction_retention): headline metrics
        caps = list(dict.fromkeys(f"{t} {sc.get('primary')}" for row in sweep
                                  for t, sc in (row.get("harness") or {}).items()))
        if any(row.get("instruction_retention") for row in sweep):
            caps.append("instruction loss")

        def cap_values(row: dict) -> list:
            h = row.get("harness") or {}
            vals = [(h.get(c.rsplit(" ", 1)[0]) or {}).get(c.rsplit(" ", 1)[1]) for c in caps if c != "instruction loss"]
            if "instruction loss" in caps:
                vals.append((row.get("instruction_retention") or {}).get("response_loss"))
            return vals

        rows = [{"alpha": row["alpha"], "chosen": row["alpha"] == m.get("alpha"),
                 "ppl": [((row.get("sets") or {}).get(n) or {}).get("perplexity") for n in names],
                 "caps": cap_values(row)} for row in sweep]
        out.append({"stage": _stage_label(r), "alpha": m.get("alpha"), "rule": m.get("rule"), "sets": names,
                    "caps": caps, "rows": rows})
    return out


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
