"""What a pipeline run's rows say, arm against arm: the run folder loaded, the comparison columns,
mean ± std per arm and the difference to the reference arm with its noise verdict.

Comparison rule: each arm's value is the mean over its distinct runs (seeds; a stage shared by all
seeds counts once), ± the sample standard deviation. A difference to the reference arm counts as
beyond seed-to-seed noise when |diff| > k x s_p x sqrt(1/n_a + 1/n_r), s_p the pooled standard
deviation of the two arms (k = report.noise_factor, 2 by default: roughly a 95% two-sample check).
It needs at least two runs per arm; with one seed the report says so instead of guessing.

report.py renders this; verdict.py turns it into the per-arm answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..runtime.outputs import METRICS_FILE, read_json

RESULTS_FILE = "results.jsonl"
STATE_FILE = "run_state.json"
PIPELINE_FILE = "pipeline.yaml"
BASELINE_ARM = "tfidf_baseline"


@dataclass(frozen=True)
class Column:
    """One column of the comparison: a task metric on a split, or held-out perplexity of an LM role."""

    key: str  # "test_macro_f1", "domain_ppl"
    label: str  # "test macro-F1 ↑"
    better: str  # "higher" | "lower"
    split: str | None = None  # task columns: "test" | "dev"
    metric: str | None = None  # task columns: a key of metrics.json's dev/test section
    role: str | None = None  # LM columns: "domain" | "general"
    evidence: str | None = None  # capability columns: "harness:task/metric" | "instruction:response_loss"

    @property
    def points(self) -> bool:
        """An accuracy-like score in [0, 1], whose differences read as points (x100)."""
        return bool(self.evidence and self.evidence.startswith("harness:") and self.better == "higher")


LM_COLUMNS = [
    Column("domain_ppl", "domain ppl ↓", "lower", role="domain"),
    Column("general_ppl", "general ppl ↓", "lower", role="general"),
]
METRIC_NAMES = {
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
    "weighted_f1": "weighted-F1",
    "f1": "F1",
    "exact_match": "exact match",
    "token_accuracy": "token accuracy",
    "subset_accuracy": "subset accuracy",
    "hamming_loss": "Hamming loss",
    "mse": "MSE",
    "rmse": "RMSE",
    "mae": "MAE",
}
LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae", "hamming_loss"}

# --- loading -------------------------------------------------------------------------------------


@dataclass
class Run:
    folder: Path
    rows: list[dict]
    state: dict
    pipeline: dict
    arms: list[str]
    reference: str
    noise_factor: float
    roles: dict[str, str | None]
    columns: list[Column] = field(default_factory=list)
    _metrics: dict = field(default_factory=dict)

    def metrics(self, rel: str | None) -> dict:
        if not rel:
            return {}
        if rel not in self._metrics:
            path = self.folder / rel
            self._metrics[rel] = (
                read_json(path, default={}) if path.suffix == ".json" else read_json(path / METRICS_FILE, default={})
            ) or {}
        return self._metrics[rel]


def load_run(run_dir: str | Path) -> Run:
    folder = Path(run_dir)
    path = folder / RESULTS_FILE
    if not path.is_file():
        from ..config.base import ConfigError

        raise ConfigError(f"{folder}: no {RESULTS_FILE}; is this the output_dir of `lmadapt run`?")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    state = read_json(folder / STATE_FILE, default={}) or {}
    pipeline = {}
    if (folder / PIPELINE_FILE).is_file():
        pipeline = yaml.safe_load((folder / PIPELINE_FILE).read_text(encoding="utf-8")) or {}
    arms = list((pipeline.get("arms") or {}).keys())
    for r in rows:
        if r["arm"] not in arms and r["arm"] != BASELINE_ARM:
            arms.append(r["arm"])
    rep = pipeline.get("report") or {}
    reference = rep.get("reference_arm") or ("ft_only" if "ft_only" in arms else (arms[0] if arms else ""))
    ev = pipeline.get("evaluation") or {}
    names = list((ev.get("lm_sets") or {}).keys())
    if not names:
        names = sorted({n for r in rows for n in (r.get("lm") or {})})
    domain = ev.get("domain_set") or ("domain" if "domain" in names else (names[0] if names else None))
    rest = [n for n in names if n != domain]
    general = ev.get("general_set") or ("general" if "general" in names else (rest[0] if rest else None))
    run = Run(
        folder=folder,
        rows=rows,
        state=state,
        pipeline=pipeline,
        arms=arms,
        reference=reference,
        noise_factor=float(rep.get("noise_factor") or 2.0),
        roles={"domain": domain, "general": general},
    )
    run.columns = task_columns(run) + LM_COLUMNS + word_columns(run.rows) + capability_columns(run.rows)
    return run


def word_columns(rows: list[dict]) -> list[Column]:
    """Per-word perplexity (total NLL / words) of the domain and general sets, where the evidence has
    it (causal models): the column that compares arms whose tokenizers differ (vocabulary extension)."""
    if not any((m or {}).get("word_perplexity") is not None for r in rows for m in (r.get("lm") or {}).values()):
        return []
    return [
        Column("domain_wppl", "domain word ppl ↓", "lower", metric="word_perplexity", role="domain"),
        Column("general_wppl", "general word ppl ↓", "lower", metric="word_perplexity", role="general"),
    ]


def evidence_value(row: dict, spec: str) -> float | None:
    """A capability score of a row: ``harness:task/metric`` or ``instruction:key`` (see Column.evidence)."""
    kind, _, rest = spec.partition(":")
    if kind == "harness":
        task, _, metric = rest.partition("/")
        v = ((row.get("harness") or {}).get(task) or {}).get(metric)
    elif kind == "instruction":
        v = (row.get("instruction") or {}).get(rest)
    else:
        v = None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def capability_columns(rows: list[dict]) -> list[Column]:
    """One column per harness task (its primary metric: acc_norm, acc, ...) and for instruction
    retention (response loss; exact match when generated), from the LM rows that carry them."""
    cols: dict[str, Column] = {}
    for r in rows:
        for task, m in (r.get("harness") or {}).items():
            metric = m.get("primary")
            if not metric or f"harness:{task}/{metric}" in cols:
                continue
            higher = ((r.get("harness_higher") or {}).get(task) or {}).get(metric, True)
            cols[f"harness:{task}/{metric}"] = Column(
                f"harness_{task}_{metric}",
                f"{task} {metric.replace('_', ' ')} {'↑' if higher else '↓'}",
                "higher" if higher else "lower",
                evidence=f"harness:{task}/{metric}",
            )
        ins = r.get("instruction") or {}
        if ins.get("response_loss") is not None and "instruction:response_loss" not in cols:
            cols["instruction:response_loss"] = Column(
                "instruction_loss", "instruction loss ↓", "lower", evidence="instruction:response_loss"
            )
        if ins.get("exact_match") is not None and "instruction:exact_match" not in cols:
            cols["instruction:exact_match"] = Column(
                "instruction_em", "instruction exact match ↑", "higher", evidence="instruction:exact_match"
            )
    return list(cols.values())


def task_columns(run: Run) -> list[Column]:
    """Test and dev columns of the metric the fine-tuning stages selected on (macro-F1 for
    classification, F1 or exact match for extraction and QA, ...), and test accuracy when the task
    reports it. The direction comes from the stage's own ``selection.greater_is_better``."""
    rows = [r for r in run.rows if r.get("kind") == "finetune" and r.get("task")]
    names = [r["task"].get("metric") for r in rows if r["task"].get("metric")]
    if not names:
        return []
    metric = max(dict.fromkeys(names), key=names.count)
    greater = next(
        (
            sel.get("greater_is_better")
            for r in rows
            if r["task"].get("metric") == metric
            for sel in [run.metrics(r.get("folder")).get("selection") or {}]
            if sel.get("greater_is_better") is not None
        ),
        metric not in LOWER_IS_BETTER,
    )
    name, arrow, better = (
        METRIC_NAMES.get(metric, metric.replace("_", " ")),
        "↑" if greater else "↓",
        "higher" if greater else "lower",
    )
    cols = []
    if metric != "accuracy" and any("accuracy" in (r["task"].get("test") or {}) for r in rows):
        cols.append(Column("test_accuracy", "test accuracy ↑", "higher", split="test", metric="accuracy"))
    cols += [
        Column(f"test_{metric}", f"test {name} {arrow}", better, split="test", metric=metric),
        Column(f"dev_{metric}", f"dev {name} {arrow}", better, split="dev", metric=metric),
    ]
    return cols


# --- statistics ----------------------------------------------------------------------------------


@dataclass
class Stat:
    values: list[float]  # one per distinct run (stage instance)
    ids: list[str]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


def arm_chains(run: Run) -> dict[tuple[str, int], list[dict]]:
    chains: dict[tuple[str, int], list[dict]] = {}
    for r in run.rows:
        chains.setdefault((r["arm"], r["seed"]), []).append(r)
    for rows in chains.values():
        rows.sort(key=lambda r: r.get("position", 0))
    return chains


def arm_values(run: Run) -> dict[str, dict[str, Stat]]:
    """{arm: {column: Stat}} from each (arm, seed)'s final fine-tune and the model it started from."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (arm, _seed), rows in arm_chains(run).items():
        cols = out.setdefault(arm, {c.key: {} for c in run.columns})
        ft = [r for r in rows if r.get("task")]
        last_ft = ft[-1] if ft else None
        if last_ft:
            task = last_ft["task"]
            for c in run.columns:
                v = (task.get(c.split) or {}).get(c.metric) if c.split else None
                if v is not None:
                    cols[c.key][last_ft["id"]] = float(v)
        limit = last_ft["position"] if last_ft else float("inf")
        # LM evidence (evaluation.lm_sets) of the last model before the fine-tune: an input model, a
        # pretrain or a merge stage. Evaluate stages score their own sets and are listed separately.
        lm_rows = [
            r
            for r in rows
            if (r.get("lm") or r.get("harness") or r.get("instruction"))
            and r.get("kind") in ("input", "pretrain", "merge")
            and r.get("position", 0) < limit
        ]
        if lm_rows:
            lm = lm_rows[-1]
            for c in run.columns:
                name = run.roles.get(c.role) if c.role else None
                v = ((lm.get("lm") or {}).get(name) or {}).get(c.metric or "perplexity") if name else None
                if c.evidence:
                    v = evidence_value(lm, c.evidence)
                if v is not None:
                    cols[c.key][lm["id"]] = float(v)
    return {arm: {k: Stat(list(d.values()), list(d.keys())) for k, d in cols.items()} for arm, cols in out.items()}


def compare(a: Stat, r: Stat, k: float) -> dict:
    """Difference a - r and whether it exceeds k pooled standard errors."""
    if a.mean is None or r.mean is None:
        return {"diff": None, "verdict": "n/a"}
    diff = a.mean - r.mean
    if sorted(a.ids) == sorted(r.ids):
        return {"diff": diff, "verdict": "same model"}
    if a.n < 2 and r.n < 2:
        return {"diff": diff, "verdict": "1 run"}
    if a.n < 2 or r.n < 2:
        # one side is a single shared run (a stage every seed shares, the deterministic baseline):
        # a fixed value against the other arm's seed-to-seed spread
        other = r if a.n < 2 else a
        se = other.std / math.sqrt(other.n)
    else:
        sp = math.sqrt(((a.n - 1) * a.std**2 + (r.n - 1) * r.std**2) / (a.n + r.n - 2))
        se = sp * math.sqrt(1 / a.n + 1 / r.n)
    threshold = k * se
    if se == 0:
        real = diff != 0
    else:
        real = abs(diff) > threshold
    return {"diff": diff, "threshold": threshold, "verdict": "beyond noise" if real else "within noise"}


def comparison(run: Run) -> dict:
    values = arm_values(run)
    ref = values.get(run.reference, {})
    table = []
    for arm in run.arms + ([BASELINE_ARM] if BASELINE_ARM in values else []):
        if arm not in values:
            continue
        cells = {}
        for col in run.columns:
            s = values[arm].get(col.key)
            c = compare(s, ref[col.key], run.noise_factor) if ref and arm != run.reference and s is not None else None
            cells[col.key] = {"stat": s, "cmp": c}
        table.append({"arm": arm, "cells": cells})
    return {"rows": table, "reference": run.reference}


def noise_rule(run: Run) -> str:
    return (
        f"Rule: a difference to {run.reference} is 'beyond noise' when |diff| > {run.noise_factor:g} x s_p x "
        "sqrt(1/n_a + 1/n_ref), s_p the pooled seed-to-seed standard deviation of the two arms; n counts distinct "
        "runs (a stage shared by every seed counts once). An arm with a single run (a shared stage, the "
        "deterministic baseline) counts as a fixed value: the threshold is then k x s / sqrt(n) of the other arm. "
        "'1 run': both arms have a single run, so there is no noise estimate (add seeds); 'same model': both "
        "arms use the very same stage output."
    )
