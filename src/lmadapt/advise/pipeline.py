"""The pipeline YAML `lmadapt advise` writes: the arms that would confirm (or refute) the advice.

It is a pipeline for `lmadapt run` (schema: ``lmadapt.config.pipeline.PipelineConfig``), using::

    output_dir: runs/advise          # root of every arm's output
    seeds: [0, 1, 2]                 # fine-tune stages run once per seed; pretrain stages once, shared
    arms:                            # arm name -> list of inline stages, run in order
      ft_only:
        - kind: finetune             # pretrain | finetune
          recipe: {...}              # exactly the keys of FinetuneConfig (or PretrainConfig for kind: pretrain)
      dapt_ft:
        - kind: pretrain
          recipe: {model: {path: models/base}, data: {sources: [{path: corpus/, name: domain}]}, ...}
        - kind: finetune
          recipe: {model: {path: "@previous"}, ...}
    evaluation: {lm_sets: {domain: VALID, general: REFERENCE}}   # only with --domain-valid
    baseline: {tfidf: true}                                      # only for single-label classification

* ``model.path: "@previous"``: the output folder of the previous stage of the same arm. The first
  stage of an arm starts from the base model (its path is written out).
* ``train.output_dir`` and ``train.seed`` are not in the recipes: the runner sets them per stage
  instance; identical stages (same recipe and parent) in several arms, e.g. the domain pretraining of
  ``dapt_ft`` and ``dapt_tapt_ft``, run once and are shared.
* Paths are written as given to `lmadapt advise` (relative ones are relative to the working directory).
* The whole file validates with ``lmadapt.config.pipeline.load_pipeline``.

Arms: ``ft_only`` (fine-tune the base model: the reference arm), ``dapt_ft`` (continued pretraining on
the domain corpus, then fine-tune), ``tapt_ft`` (continued pretraining on the task's own training
texts, then fine-tune), ``dapt_tapt_ft`` (both, domain first; the best combination in Gururangan et
al. 2020); with ``--domain-valid``, ``dapt_merge_ft`` (the same continued pretraining interpolated back
toward the base within a 5% forgetting budget, `lmadapt merge`, then fine-tune); without labeled data
``dapt_full`` vs ``dapt_lora`` (continued pretraining only; the
pretrain stage reports held-out perplexity before and after). Compare fine-tuning arms on the test
metric (mean and spread over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import yaml

from .rules import TASK_TYPES, Advice

PREVIOUS = "@previous"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
TAPT_MAX_EPOCHS = 10


def _lora(method: str, train_embeddings: bool) -> dict:
    if method != "lora":
        return {"enabled": False}
    return {"enabled": True, **LORA, "train_embeddings": bool(train_embeddings)}


def _block_size(m: dict) -> int:
    max_pos = (m.get("model") or {}).get("max_position_embeddings") or 512
    return int(min(512, max_pos))


def _tokens_per_second(m: dict) -> float | None:
    return ((m.get("cost") or {}).get("probe") or {}).get("tokens_per_second")


def pretrain_recipe(
    model_path: str,
    source: dict,
    *,
    m: dict,
    method: str,
    train_embeddings: bool,
    corpus_tokens: int | None,
    train_hours: float,
    max_epochs: float = 1.0,
    eval_sources: list[dict] | None = None,
    eval_fraction: float = 0.02,
) -> tuple[dict, str | None]:
    """A PretrainConfig recipe (without output_dir/seed) and a note when the time budget cuts it short.

    Trains ``max_epochs`` passes, or fewer tokens when the probe's throughput says they will not fit
    in ``train_hours`` (``train.max_tokens``)."""
    lr = 2e-4 if method == "lora" else 1e-4
    data: dict[str, Any] = {"sources": [source], "block_size": _block_size(m), "max_eval_tokens": 16384}
    if eval_sources:
        data["eval_sources"] = eval_sources
    else:
        data["eval_fraction"] = eval_fraction
    train: dict[str, Any] = {"batch_size": 8, "lr": lr, "warmup_ratio": 0.05}
    note = None
    tps = _tokens_per_second(m)
    budget = int(tps * train_hours * 3600) if tps else None
    if corpus_tokens and budget and budget < corpus_tokens * max_epochs:
        train["max_tokens"] = max(budget, data["block_size"] * 8)
        note = (
            f"{source.get('name')}: {train_hours:g} h at the probed {tps:,.0f} tokens/s cover "
            f"{train['max_tokens'] / corpus_tokens:.1%} of one pass ({corpus_tokens:,} tokens); raise --train-hours "
            "or run on a GPU for more"
        )
    else:
        train["epochs"] = float(max_epochs)
    return {"model": {"path": model_path}, "lora": _lora(method, train_embeddings), "data": data, "train": train}, note


def finetune_recipe(
    model_path: str,
    *,
    m: dict,
    goal: str,
    method: str,
    train_embeddings: bool,
    task_train: str,
    task_dev: str | None,
    task_test: str | None,
    text_field: str,
    label_field: str | None,
) -> dict:
    """A FinetuneConfig recipe (without output_dir/seed)."""
    task_m = m.get("task") or {}
    max_pos = (m.get("model") or {}).get("max_position_embeddings") or 512
    p95 = task_m.get("length_tokens_p95") or 128
    max_length = int(min(max_pos, 1024, max(64, 32 * math.ceil((p95 + 2) / 32))))
    ttype = TASK_TYPES.get(goal) or ("classification" if task_m.get("problem") else "instruction")
    data: dict[str, Any] = {"train": task_train, "allow_truncation": True}
    if task_dev:
        data["dev"] = task_dev
    if task_test:
        data["test"] = task_test
    else:
        data["test_fraction"] = 0.2  # arms are compared on held-out examples never used for selection
    task: dict[str, Any] = {"type": ttype}
    recipe: dict[str, Any] = {"model": {"path": model_path, "max_length": max_length}, "data": data, "task": task}
    if ttype == "classification":
        data.update(text_field=text_field, label_field=label_field or "label")
        if task_m.get("problem") in ("multi_label", "regression"):
            task["problem"] = task_m["problem"]
    elif ttype == "extraction":
        recipe["extraction"] = {"text_field": text_field}
    else:
        recipe["model"]["max_length"] = max(256, max_length)
    recipe["lora"] = _lora(method, train_embeddings)
    recipe["train"] = {
        "epochs": 5.0,
        "lr": 2e-4 if method == "lora" else 5e-5,
        "batch_size": 16,
        "early_stopping_patience": 2,
    }
    return recipe


class _Stages:
    """The stages of the arms, from the inputs given to `lmadapt advise`; ``notes`` collects what the
    user should know about them (a time budget that cuts a pass short, held-out texts seen by tapt)."""

    def __init__(
        self,
        advice: Advice,
        m: dict,
        *,
        domain,
        text_field,
        split_docs,
        domain_valid,
        reference,
        task_train,
        task_dev,
        task_test,
        task_text_field,
        label_field,
        train_hours,
        notes: list[str],
    ):
        self.advice, self.m, self.notes = advice, m, notes
        self.domain, self.text_field, self.split_docs = domain, text_field, split_docs
        self.domain_valid, self.reference = domain_valid, reference
        self.task_train, self.task_dev, self.task_test = task_train, task_dev, task_test
        self.task_text_field, self.label_field, self.train_hours = task_text_field, label_field, train_hours
        self.method = advice.method or "full"
        self.te = advice.train_embeddings

    def dapt(self, prev: str, arm_method: str) -> dict:
        src = {"path": str(self.domain), "name": "domain", "text_field": self.text_field}
        if self.split_docs != "file":
            src["split_docs"] = self.split_docs
        evals = None
        if self.domain_valid:
            valid = {"path": str(self.domain_valid), "name": "domain_valid", "text_field": self.text_field}
            evals = [valid, {"path": str(self.reference), "name": "general"}] if self.reference else [valid]
        recipe, note = pretrain_recipe(
            prev,
            src,
            m=self.m,
            method=arm_method,
            train_embeddings=self.te and arm_method == "lora",
            corpus_tokens=(self.m.get("domain") or {}).get("estimated_tokens"),
            train_hours=self.train_hours,
            eval_sources=evals,
        )
        if note and note not in self.notes:
            self.notes.append(note)
        return {"kind": "pretrain", "recipe": recipe}

    def tapt(self, prev: str) -> dict:
        if not self.task_test or not self.task_dev:
            note = (
                "tapt: task-adaptive pretraining reads every text of --task-train, including the examples the "
                "fine-tune stage holds out as dev/test; give --task-dev and --task-test files for a clean comparison"
            )
            if note not in self.notes:
                self.notes.append(note)
        task_tokens = (self.m.get("task") or {}).get("tokens") or 0
        tps = _tokens_per_second(self.m)
        epochs = TAPT_MAX_EPOCHS
        if tps and task_tokens:
            epochs = int(max(1, min(TAPT_MAX_EPOCHS, tps * self.train_hours * 3600 // task_tokens)))
        src = {"path": str(self.task_train), "name": "task", "text_field": self.task_text_field}
        recipe, _ = pretrain_recipe(
            prev,
            src,
            m=self.m,
            method=self.method,
            train_embeddings=self.te,
            corpus_tokens=None,
            train_hours=self.train_hours,
            max_epochs=epochs,
            eval_fraction=0.05,
        )
        return {"kind": "pretrain", "recipe": recipe}

    def ft(self, prev: str) -> dict:
        return {
            "kind": "finetune",
            "recipe": finetune_recipe(
                prev,
                m=self.m,
                goal=self.advice.goal,
                method=self.method,
                train_embeddings=self.te,
                task_train=str(self.task_train),
                task_dev=self.task_dev,
                task_test=self.task_test,
                text_field=self.task_text_field,
                label_field=self.label_field,
            ),
        }

    def merge_then_ft(self, base: str) -> list[dict]:
        """dapt_merge_ft: the same continued pretraining as dapt_ft (a shared stage), interpolated back
        toward the base within a 5% forgetting budget on the general reference: what DAPT's gain
        costs, and what is kept without it."""
        merge = {
            "kind": "merge",
            "recipe": {
                "model": {"path": PREVIOUS},
                "eval": {"sets": {"domain": str(self.domain_valid), "general": str(self.reference)}},
            },
        }
        return [self.dapt(base, self.method), merge, self.ft(PREVIOUS)]


# Each arm's stages from the base model, in order; "@previous" starts a stage from the one before.
ARM_STAGES: dict[str, Callable[[_Stages, str], list[dict]]] = {
    "ft_only": lambda s, base: [s.ft(base)],
    "dapt_ft": lambda s, base: [s.dapt(base, s.method), s.ft(PREVIOUS)],
    "tapt_ft": lambda s, base: [s.tapt(base), s.ft(PREVIOUS)],
    "dapt_tapt_ft": lambda s, base: [s.dapt(base, s.method), s.tapt(PREVIOUS), s.ft(PREVIOUS)],
    "dapt_full": lambda s, base: [s.dapt(base, "full")],
    "dapt_lora": lambda s, base: [s.dapt(base, "lora")],
}


def build_pipeline(
    advice: Advice,
    m: dict,
    *,
    model_dir: str,
    domain: str | None = None,
    text_field: str = "text",
    split_docs: str = "file",
    domain_valid: str | None = None,
    reference: str | None = None,
    task_train: str | None = None,
    task_dev: str | None = None,
    task_test: str | None = None,
    task_text_field: str = "text",
    label_field: str | None = "label",
    seeds=(0, 1, 2),
    output_dir: str = "runs/advise",
    train_hours: float = 2.0,
) -> tuple[dict, list[str]]:
    """(pipeline dict with keys output_dir, seeds, arms; notes) for ``advice.arms``."""
    notes: list[str] = []
    stages = _Stages(
        advice,
        m,
        domain=domain,
        text_field=text_field,
        split_docs=split_docs,
        domain_valid=domain_valid,
        reference=reference,
        task_train=task_train,
        task_dev=task_dev,
        task_test=task_test,
        task_text_field=task_text_field,
        label_field=label_field,
        train_hours=train_hours,
        notes=notes,
    )
    base = str(model_dir)
    arms: dict[str, list[dict]] = {}
    for arm in advice.arms:
        if arm not in ARM_STAGES:  # pragma: no cover - rules and pipeline are kept in step
            raise ValueError(f"unknown arm {arm!r}")
        arms[arm] = ARM_STAGES[arm](stages, base)
    if "dapt_ft" in arms and domain_valid and reference:
        if text_field == "text":
            arms["dapt_merge_ft"] = stages.merge_then_ft(base)
        else:
            notes.append(
                f"dapt_merge_ft left out: the merge stage reads its held-out sets with one text field, and "
                f"the domain's is {text_field!r} while the reference's is 'text'"
            )
    pipeline: dict[str, Any] = {"output_dir": str(output_dir), "seeds": [int(s) for s in seeds], "arms": arms}
    if domain_valid and reference and any(a.startswith("dapt") for a in arms):
        pipeline["evaluation"] = {"lm_sets": {"domain": str(domain_valid), "general": str(reference)}}
    task_m = m.get("task") or {}
    if "ft_only" in arms and advice.goal == "classify" and task_m.get("problem") == "single_label":
        pipeline["baseline"] = {"tfidf": True}
    return pipeline, notes


def pipeline_yaml(pipeline: dict, advice: Advice, notes: list[str] | None = None) -> str:
    """The pipeline as YAML, with a comment header saying what it tests."""
    head = [
        f"# lmadapt pipeline written by `lmadapt advise` (goal: {advice.goal})",
        f"# advice: {advice.recommendation} ({advice.method}), confidence {advice.confidence}",
        "# each arm runs once per seed; '@previous' = the output folder of the arm's previous stage.",
        "# compare fine-tuning arms on the test metric (mean and spread over seeds); pretraining-only arms",
        "# on held-out domain perplexity (after vs before) and, when listed, general-text perplexity (forgetting).",
    ]
    head += [f"# note: {n}" for n in notes or []]
    return "\n".join(head) + "\n" + yaml.safe_dump(pipeline, sort_keys=False, allow_unicode=True, width=100)


def write_pipeline(path: str | Path, pipeline: dict, advice: Advice, notes: list[str] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(pipeline_yaml(pipeline, advice, notes), encoding="utf-8")
