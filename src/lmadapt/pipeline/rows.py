"""Rows of results.jsonl: one per (arm, seed, stage), plus the arm's input model and the baseline.

A row carries what the report needs without opening a model: the stage's task metrics, its LM
evidence (held-out perplexity), its cost (wall time, tokens seen, tokens/s, peak memory) and where
its folder is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.pipeline import LM_KINDS
from ..runtime.outputs import METRICS_FILE, read_json
from . import cache
from .plan import ArmRun, StageInstance

EVIDENCE_FILE = "lm_evidence.json"
LM_KEYS = ("loss", "perplexity", "tokens", "word_perplexity", "words")  # per held-out set in a row's "lm"
BASELINE_DIR = "baselines"

TASK_SCALARS = (
    "accuracy",
    "macro_f1",
    "micro_f1",
    "weighted_f1",
    "loss",
    "mse",
    "rmse",
    "mae",
    "pearson",
    "spearman",
    "subset_accuracy",
    "hamming_loss",
    "f1",
    "exact_match",
    "token_accuracy",
)


def task_scalars(section: dict | None) -> dict:
    if not isinstance(section, dict):
        return {}
    return {
        k: v
        for k, v in section.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (k in TASK_SCALARS or k.endswith("_f1"))
    }


def capability_fields(ev: dict) -> dict:
    """An evidence file's harness scores and instruction retention, as row fields (absent when not measured)."""
    out: dict[str, Any] = {}
    if ev.get("harness"):
        out["harness"] = {t: {k: v for k, v in m.items() if k != "higher_is_better"} for t, m in ev["harness"].items()}
        out["harness_higher"] = {t: m.get("higher_is_better") or {} for t, m in ev["harness"].items()}
    if ev.get("instruction_retention"):
        out["instruction"] = dict(ev["instruction_retention"])
    return out


def _finetune_tokens(folder: Path) -> int | None:
    path = folder / "logs.jsonl"
    if not path.is_file():
        return None
    seen = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("tokens_seen"):
            seen = row["tokens_seen"]
    return seen


def _rel(path: Path | str, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out))
    except ValueError:
        return str(path)


def stage_row(run: ArmRun, index: int, inst: StageInstance, out: Path, executed: bool) -> dict:
    metrics = read_json(inst.folder / METRICS_FILE, default={}) or {}
    done = cache.read_done(inst.folder)
    train = metrics.get("train") or {}
    perf = {
        "wall_seconds": done.get("wall_seconds"),
        "train_seconds": train.get("train_seconds"),
        "tokens_seen": train.get("tokens_seen"),
        "tokens_per_second": train.get("tokens_per_second"),
        "peak_rss_mb": done.get("peak_rss_mb"),
        "peak_gpu_mb": done.get("peak_gpu_mb"),
    }
    if inst.kind == "finetune" and perf["tokens_seen"] is None:
        perf["tokens_seen"] = _finetune_tokens(inst.folder)
        if perf["tokens_seen"] and train.get("train_seconds"):
            perf["tokens_per_second"] = round(perf["tokens_seen"] / max(train["train_seconds"], 1e-9), 1)
    row: dict[str, Any] = {
        "arm": run.arm,
        "seed": run.seed,
        "position": index + 1,
        "stage": inst.name,
        "kind": inst.kind,
        "id": inst.id,
        "folder": _rel(inst.folder, out),
        "hash": inst.hash,
        "seeded": inst.seeded,
        "parent": _rel(inst.parent.folder, out) if inst.parent else None,
        "input_model": inst.input_model,
        "executed": executed,
        "status": "done" if done else "pending",
        "perf": perf,
    }
    if inst.kind in LM_KINDS:
        row["heldout"] = {
            n: {"before": (v.get("before") or {}).get("perplexity"), "after": (v.get("after") or {}).get("perplexity")}
            for n, v in (metrics.get("heldout") or {}).items()
        }
    if inst.kind == "pretrain" and metrics.get("vocab"):
        v, frag = metrics["vocab"], metrics["vocab"].get("fragmentation") or {}
        row["vocab"] = {
            "added": v.get("added"),
            "init": v.get("init"),
            "text": frag.get("text"),
            "tokens_per_word_before": frag.get("tokens_per_word_before"),
            "tokens_per_word_after": frag.get("tokens_per_word_after"),
            "top": [t.get("word") for t in (v.get("tokens") or [])[:8]],
        }
    if inst.kind == "merge":
        row["merge"] = {
            "alpha": metrics.get("alpha"),
            "rule": (metrics.get("selection") or {}).get("rule"),
            "sweep": metrics.get("sweep") or [],
        }
    ev = read_json(inst.folder / EVIDENCE_FILE, default=None) if inst.kind in LM_KINDS else None
    if inst.kind == "evaluate":
        ev = {"sets": metrics.get("sets") or {}}
    if ev:
        row["lm"] = {n: {k: m.get(k) for k in LM_KEYS} for n, m in (ev.get("sets") or {}).items()}
        row.update(capability_fields(ev))
        if ev.get("error"):
            row["lm_error"] = ev["error"]
    if inst.kind == "finetune":
        row["task"] = {
            "name": metrics.get("task"),
            "metric": (metrics.get("selection") or {}).get("metric"),
            "dev": task_scalars(metrics.get("dev")),
            "test": task_scalars(metrics.get("test")),
        }
    return row


def input_row(run: ArmRun, out: Path, evidence: dict) -> dict:
    return {
        "arm": run.arm,
        "seed": run.seed,
        "position": 0,
        "stage": "input",
        "kind": "input",
        "id": "input-" + cache.digest(run.input_model)[:12],
        "folder": None,
        "hash": None,
        "seeded": False,
        "parent": None,
        "input_model": run.input_model,
        "executed": False,
        "status": "done",
        "lm": {n: {k: m.get(k) for k in LM_KEYS} for n, m in (evidence.get("sets") or {}).items()},
        **capability_fields(evidence),
        **({"lm_error": evidence["error"]} if evidence.get("error") else {}),
    }


def baseline_row(seed: int, res: dict) -> dict:
    row = {
        "arm": "tfidf_baseline",
        "seed": seed,
        "position": 1,
        "stage": "tfidf",
        "kind": "baseline",
        "id": res.get("id"),
        "folder": f"{BASELINE_DIR}/{res.get('id')}.json",
        "executed": False,
        "status": "done",
    }
    if res.get("error"):
        row["error"] = res["error"]
    else:
        row["task"] = {
            "name": "classification",
            "metric": "macro_f1",
            "C": res.get("C"),
            "dev": task_scalars(res.get("dev")),
            "test": task_scalars(res.get("test")),
        }
    return row
