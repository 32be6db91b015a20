"""The evidence a pipeline gathers beside its stages, each cached on disk by what it depends on:
held-out LM scores of every pretrained model (and its input model), capability scores where
configured, and the TF-IDF baseline of every fine-tune. run.py (one process walks the plan) and
jobs.py (stages in processes of their own) both call these.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config.base import to_dict
from ..config.pipeline import PipelineConfig
from ..runtime.dist import broadcast, is_main_process
from ..runtime.outputs import read_json, write_json
from . import cache
from .execute import load_for_eval, log
from .plan import ArmRun, StageInstance
from .rows import BASELINE_DIR


def evaluation_key(cfg: PipelineConfig) -> str:
    ev = cfg.evaluation
    key = {
        "sets": {n: [p, cache.fingerprint_path(p)] for n, p in sorted(ev.lm_sets.items())},
        "block_size": ev.block_size,
        "max_tokens": ev.max_tokens,
        "text_field": ev.text_field,
    }
    # Only when configured, so the evidence cached by runs without them stays valid.
    if ev.harness.enabled:
        key["harness"] = {
            **to_dict(ev.harness),
            "include": [cache.fingerprint_path(p) for p in ev.harness.include_path],
        }
    if ev.instruction_retention.enabled:
        key["instruction"] = [to_dict(ev.instruction_retention), cache.fingerprint_path(ev.instruction_retention.data)]
    return cache.digest(key)


def lm_evidence(model: str, cfg: PipelineConfig, path: Path) -> dict:
    """Held-out loss/perplexity of ``model`` on every ``evaluation.lm_sets`` entry, and its harness and
    instruction-retention scores where configured, cached in ``path``."""
    ev = cfg.evaluation
    if not ev.enabled:
        return {}
    key = evaluation_key(cfg)
    old = broadcast(read_json(path, default=None) if is_main_process() else None)
    if old and old.get("key") == key:
        return old
    from ..stages.evaluate import capability_scores, evaluate_model

    t0 = time.time()
    what = (
        list(ev.lm_sets)
        + list(ev.harness.tasks)
        + (["instruction retention"] if ev.instruction_retention.enabled else [])
    )
    log(f"LM evidence: {Path(model).name if Path(model).exists() else model} on {', '.join(what)}")
    sets, scores = {}, {}
    try:
        loaded = load_for_eval(model)
        for name, data in ev.lm_sets.items():
            res = evaluate_model(
                model,
                [data],
                block_size=ev.block_size,
                batch_size=ev.batch_size,
                max_tokens=ev.max_tokens,
                text_field=ev.text_field,
                loaded=loaded,
            )
            m = next(iter(res["sets"].values()))
            sets[name] = {
                k: m.get(k) for k in ("loss", "perplexity", "tokens", "documents", "word_perplexity", "words") if k in m
            }
            log(f"  {name}: perplexity {m['perplexity']:.2f}")
        scores = capability_scores(
            loaded.model, loaded.tokenizer, loaded.objective, ev.harness, ev.instruction_retention
        )
        for task, m in (scores.get("harness") or {}).items():
            log(
                f"  {task}: " + ", ".join(f"{k} {m[k]:.3f}" for k in m if isinstance(m[k], float) and "stderr" not in k)
            )
        if scores.get("instruction_retention"):
            log(f"  instruction retention: response loss {scores['instruction_retention'].get('response_loss')}")
    except Exception as exc:  # noqa: BLE001 - evidence must not lose a finished stage
        log(f"LM evidence failed for {model}: {exc}")
        return {"key": key, "error": f"{type(exc).__name__}: {exc}", "sets": sets, **scores}
    result = {"key": key, "model": str(model), "sets": sets, **scores, "seconds": round(time.time() - t0, 2)}
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    return result


def baselines_ahead(instances: list[StageInstance], cfg: PipelineConfig, out: Path) -> None:
    """Compute (and cache in ``out/baselines``) the baseline of every fine-tune; the walk after the
    jobs then reads them. Each distinct data section once; baseline_for logs its own failures."""
    for inst in instances:
        if inst.kind == "finetune":
            baseline_for(inst, cfg, out)


def baseline_for(inst: StageInstance, cfg: PipelineConfig, out: Path) -> dict | None:
    from .baseline import applies, baseline_key, tfidf_baseline

    if not cfg.baseline.tfidf or inst.kind != "finetune" or not applies(inst.recipe):
        return None
    bkey = baseline_key(inst.recipe)
    fp = cache.input_fingerprints(bkey["data"])
    digest = cache.digest(
        {
            "key": bkey,
            "inputs": fp,
            "C": cfg.baseline.C,
            "max_features": cfg.baseline.max_features,
            "min_df": cfg.baseline.min_df,
            "lmadapt": cache.lmadapt_version(),
        }
    )
    path = out / BASELINE_DIR / f"tfidf-{digest[:12]}.json"
    old = read_json(path, default=None)
    if old:
        return old
    log("TF-IDF + logistic regression baseline on " + str(bkey["data"].get("train")))
    try:
        res = tfidf_baseline(inst.recipe, cfg.baseline.C, cfg.baseline.max_features, cfg.baseline.min_df)
    except Exception as exc:  # noqa: BLE001 - a reference row must not stop the run
        log(f"baseline failed: {type(exc).__name__}: {exc}")
        return {"id": f"tfidf-{digest[:12]}", "error": f"{type(exc).__name__}: {exc}"}
    res["id"] = f"tfidf-{digest[:12]}"
    write_json(path, res)
    log(
        f"  baseline: C={res['C']}, dev macro-F1 {res.get('dev', {}).get('macro_f1', float('nan')):.4f}, "
        f"test accuracy {res.get('test', {}).get('accuracy', float('nan')):.4f}"
    )
    return res


def input_evidence_path(out: Path, run: ArmRun) -> Path:
    """Where the LM evidence of an arm's input model (one not trained by a stage) is cached: keyed
    by its files too, so a model replaced at the same path is scored again (as its stages run again)."""
    key = [run.input_model, cache.fingerprint_path(run.input_model)]
    return out / "evidence" / f"input-{cache.digest(key)[:12]}.json"
