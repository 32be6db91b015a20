"""What a pipeline report shows, as data: the tables (tokens, speed, per-class F1, merge curves), the
series behind the plots (read from each stage's logs.jsonl), and :func:`build`, which gathers them with
compare.py's comparison and verdict.py's verdicts. report.py renders the result as Markdown and HTML.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.outputs import ACCOUNTING_FILE, read_json
from .compare import BASELINE_ARM, Run, arm_chains, comparison
from .svg import svg_chart
from .verdict import verdicts


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


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
        mixture = ", ".join(
            f"{m['name']}: {m['tokens_used']:,} ({m['share']:.1%}, x{m['factor']:.2f})"
            for m in acc.get("mixture") or []
        )
        out.append(
            {
                "stage": _stage_label(r),
                "id": r["id"],
                "documents": train.get("documents"),
                "tokens": train.get("tokens"),
                "blocks": train.get("blocks"),
                "block_size": train.get("block_size"),
                "padding": train.get("padding_tokens"),
                "dropped": train.get("tokens_dropped"),
                "non_pad": train.get("non_pad_fraction"),
                "mode": train.get("mode"),
                "mixture": mixture,
                "seen": (r.get("perf") or {}).get("tokens_seen"),
            }
        )
    return out


def perf_rows(run: Run) -> list[dict]:
    out = []
    for r in _stage_rows(run):
        p = r.get("perf") or {}
        out.append(
            {
                "stage": _stage_label(r),
                "kind": r["kind"],
                "id": r["id"],
                "parent": r.get("parent"),
                **p,
                "executed": any(x.get("executed") for x in run.rows if x.get("id") == r["id"]),
            }
        )
    return out


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
        pts = [
            (off + x["tokens_seen"], x["loss"])
            for x in rows
            if x.get("loss") is not None and x.get("tokens_seen") is not None
        ]
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
                ppl.append(
                    {
                        "label": f"{_plot_label(r)} · {name}",
                        "points": points,
                        "color": color,
                        "dash": ["", "6 4", "2 3", "10 3 2 3"][j % 4],
                        "markers": True,
                    }
                )
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
        dpts = [
            (x["epoch"], x[f"eval_dev_{metric}"])
            for x in rows
            if x.get(f"eval_dev_{metric}") is not None and x.get("epoch") is not None
        ]
        if dpts:
            dev.append({"label": label, "points": dpts, "color": color, "dash": dash, "markers": True})
    return loss, dev, metric


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
        "pretrain_loss": svg_chart(
            p_loss,
            title="Pretraining: training loss vs tokens seen",
            xlabel="tokens seen (cumulative along the stage chain)",
            ylabel="training loss",
        ),
        "pretrain_ppl": svg_chart(
            p_ppl,
            title="Pretraining: held-out perplexity vs tokens seen",
            xlabel="tokens seen (cumulative along the stage chain)",
            ylabel="perplexity",
            logy=True,
        ),
        "finetune_loss": svg_chart(
            f_loss,
            title="Fine-tuning: training loss vs tokens seen",
            xlabel="tokens seen (non-padding)",
            ylabel="training loss",
        ),
        "finetune_dev": svg_chart(
            f_dev, title=f"Fine-tuning: dev {metric} by epoch", xlabel="epoch", ylabel=f"dev {metric}"
        ),
    }
    has = {"pretrain": bool(p_loss or p_ppl), "finetune": bool(f_loss or f_dev)}
    evals = [
        {
            "stage": _stage_label(r),
            "set": name,
            "loss": m.get("loss"),
            "perplexity": m.get("perplexity"),
            "tokens": m.get("tokens"),
        }
        for r in _stage_rows(run, "evaluate")
        for name, m in (r.get("lm") or {}).items()
    ]
    return {
        "comp": comp,
        "labels": labels,
        "per_class": pcf,
        "plots": plots,
        "has": has,
        "tokens": token_rows(run),
        "perf": perf_rows(run),
        "metric": metric,
        "evals": evals,
        "merges": merge_rows(run),
        "verdicts": verdicts(run.rows, comp, run.columns),
    }


def merge_rows(run: Run) -> list[dict]:
    """Per merge stage: its sweep as rows (alpha, perplexity per held-out set, chosen or not)."""
    out = []
    for r in _stage_rows(run, "merge"):
        m = r.get("merge") or {}
        sweep = m.get("sweep") or []
        names = list(dict.fromkeys(n for row in sweep for n in row.get("sets") or {}))
        # capability scores at each weight (merge eval.harness / instruction_retention): headline metrics
        caps = list(
            dict.fromkeys(f"{t} {sc.get('primary')}" for row in sweep for t, sc in (row.get("harness") or {}).items())
        )
        if any(row.get("instruction_retention") for row in sweep):
            caps.append("instruction loss")

        def cap_values(row: dict) -> list:
            h = row.get("harness") or {}
            vals = [
                (h.get(c.rsplit(" ", 1)[0]) or {}).get(c.rsplit(" ", 1)[1]) for c in caps if c != "instruction loss"
            ]
            if "instruction loss" in caps:
                vals.append((row.get("instruction_retention") or {}).get("response_loss"))
            return vals

        rows = [
            {
                "alpha": row["alpha"],
                "chosen": row["alpha"] == m.get("alpha"),
                "ppl": [((row.get("sets") or {}).get(n) or {}).get("perplexity") for n in names],
                "caps": cap_values(row),
            }
            for row in sweep
        ]
        out.append(
            {
                "stage": _stage_label(r),
                "alpha": m.get("alpha"),
                "rule": m.get("rule"),
                "sets": names,
                "caps": caps,
                "rows": rows,
            }
        )
    return out
