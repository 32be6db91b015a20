"""`lmadapt merge`: interpolate an adapted model's weights back toward its base, to trade domain
gain against forgetting, and measure the trade.

    lmadapt merge model.path=runs/dapt eval.sets.domain=valid.jsonl eval.sets.general=general_valid.jsonl \\
        train.output_dir=runs/dapt_merged

Reads top to bottom: find the base -> load both (a LoRA adapter folder is merged into its base) ->
check they are the same network -> score every weight on the held-out sets -> choose -> save. The
output is a plain model folder like a pretrain stage's, so fine-tuning (or a pipeline arm) can start
from it; metrics.json keeps the whole sweep. Memory: the base's and the adapted model's weights are
both held (on the CPU) besides the model being scored.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..config.base import ConfigError, to_dict
from ..config.merge import MergeConfig
from ..config.model import ModelConfig
from ..data.heldout import heldout_sets
from ..models.load import load_model, supports_document_packing
from ..models.lora import save_model
from ..train.dist import is_main_process, log, to_process_device
from ..train.lm_eval import heldout_collator, score_sets
from ..train.outputs import prepare_output_dir, read_meta, update_metrics, write_meta, write_recipe


def resolve_base(cfg: MergeConfig) -> str:
    """``merge.base``, else the parent the adapted folder records (a pretrain stage's starting model)."""
    meta = read_meta(cfg.model.path)
    if meta.get("stage") == "finetune":
        raise ConfigError(f"model.path: {cfg.model.path} is a fine-tuned task model; merge interpolates language "
                          "models (a pretrain output and its base)")
    base = cfg.merge.base or meta.get("parent")
    if not base:
        raise ConfigError(f"merge.base: {cfg.model.path} records no parent model in its lmadapt_meta.json (trained "
                          "from scratch, or not an lmadapt output); set merge.base")
    return str(base)


def check_same_network(base_sd: dict, adapted_sd: dict, base: str, adapted: str) -> None:
    """Weights can only be interpolated between two copies of one architecture."""
    missing = sorted(set(adapted_sd) ^ set(base_sd))
    if missing:
        raise ConfigError(f"merge: {base} and {adapted} are different networks (parameter {missing[0]!r} is in "
                          "only one of them)")
    for name, t in adapted_sd.items():
        if tuple(t.shape) != tuple(base_sd[name].shape):
            raise ConfigError(f"merge: {name} has shape {tuple(base_sd[name].shape)} in {base} but "
                              f"{tuple(t.shape)} in {adapted} (a resized vocabulary, another size?)")


class Interpolator:
    """Sets ``model``'s weights to base + alpha x (adapted - base), computed in fp32 per tensor."""

    def __init__(self, model, base_sd: dict, adapted_sd: dict):
        self.model, self.base, self.adapted = model, base_sd, adapted_sd

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        for name, p in self.model.state_dict().items():
            a, b = self.adapted[name], self.base[name]
            if p.is_floating_point():
                p.copy_(torch.lerp(b.float(), a.float(), float(alpha)).to(p.dtype))
            else:   # integer buffers (position ids and the like) are the adapted model's
                p.copy_(a)


def choose(sweep: dict[float, dict], roles: dict, budget: float) -> tuple[float, str]:
    """The weight with the lowest domain perplexity among those within the forgetting budget."""
    dom, gen = roles["domain"], roles["general"]
    ppl = {a: {n: m["perplexity"] for n, m in sets.items()} for a, sets in sweep.items()}
    if gen is None:
        eligible, rule = list(ppl), "lowest domain perplexity (no general set to bound forgetting)"
    else:
        limit = ppl[0.0][gen] * (1 + budget)
        eligible = [a for a in ppl if ppl[a][gen] <= limit]
        rule = (f"lowest {dom} perplexity with {gen} perplexity within +{budget:.0%} of the base's "
                f"({ppl[0.0][gen]:,.2f} → at most {limit:,.2f})")
    best = min(eligible, key=lambda a: (ppl[a][dom], a))
    return best, rule


def refine(score: Callable[[float], dict], sweep: dict[float, dict], roles: dict, budget: float, steps: int) -> None:
    """Bisect between the chosen weight and the nearest weight above it that breaks the forgetting
    budget, ``steps`` times, adding each scored weight to ``sweep``.

    A coarse grid can put the budget's edge between two points (seen: +6.4% general perplexity at
    0.25 against a 5% budget, so the grid's choice was the base itself); general perplexity rises
    with alpha, so a few halvings find a weight near the edge, which keeps more of the domain gain."""
    gen = roles["general"]
    if gen is None:
        return
    limit = sweep[0.0][gen]["perplexity"] * (1 + budget)
    for _ in range(steps):
        best, _ = choose(sweep, roles, budget)
        above = [a for a in sweep if a > best and sweep[a][gen]["perplexity"] > limit]
        if not above:
            return
        mid = round((best + min(above)) / 2, 6)
        if mid in sweep:
            return
        sweep[mid] = score(mid)


def sweep_table(sweep: dict[float, dict], roles: dict) -> str:
    dom, gen = roles["domain"], roles["general"]
    d0, d1 = sweep[0.0][dom]["perplexity"], sweep[1.0][dom]["perplexity"]
    lines = [f"{'alpha':>6}  {dom + ' ppl':>14}  {(gen or '-') + ' ppl':>14}  {'domain gain kept':>16}  {'general change':>14}"]
    for a, sets in sorted(sweep.items()):
        d = sets[dom]["perplexity"]
        kept = f"{(d0 - d) / (d0 - d1):.0%}" if d0 != d1 else "-"
        g = sets[gen]["perplexity"] if gen else None
        change = f"{g / sweep[0.0][gen]['perplexity'] - 1:+.1%}" if gen else "-"
        lines.append(f"{a:>6.3f}  {d:>14,.2f}  {g if g is None else f'{g:,.2f}':>14}  {kept:>16}  {change:>14}")
    return "\n".join(lines)


def run_merge(cfg: MergeConfig) -> dict:
    """Run one merge stage; returns the metrics written to metrics.json."""
    t_start = time.time()
    out = prepare_output_dir(cfg.train.output_dir, resume=False, overwrite=cfg.train.overwrite or cfg.train.resume)
    base_path = resolve_base(cfg)
    adapted = load_model(cfg.model)
    base = load_model(ModelConfig(path=base_path, objective=adapted.objective,
                                  trust_remote_code=cfg.model.trust_remote_code))
    if len(base.tokenizer) != len(adapted.tokenizer):
        raise ConfigError(f"merge: {base_path} has {len(base.tokenizer):,} tokens, {cfg.model.path} "
                          f"{len(adapted.tokenizer):,}; interpolation needs one vocabulary")
    base_sd = {k: v.detach().to("cpu", copy=True) for k, v in base.model.state_dict().items()}
    del base
    adapted_sd = {k: v.detach().to("cpu", copy=True) for k, v in adapted.model.state_dict().items()}
    check_same_network(base_sd, adapted_sd, base_path, cfg.model.path)
    model, tokenizer, objective = to_process_device(adapted.model), adapted.tokenizer, adapted.objective
    weights = Interpolator(model, base_sd, adapted_sd)
    log(f"merge: base {base_path}, adapted {cfg.model.path} ({sum(t.numel() for t in adapted_sd.values()):,} weights)")

    sweep: dict[float, dict] = {}
    roles = cfg.eval.roles()
    if cfg.eval.sets:
        mode = "document" if supports_document_packing(model, objective) else "concat"
        sets = heldout_sets({str(k): str(v) for k, v in cfg.eval.sets.items()}, tokenizer, objective, mode,
                            block_size=cfg.eval.block_size, max_tokens=cfg.eval.max_tokens,
                            text_field=cfg.eval.text_field)
        collator = heldout_collator(objective, mode, tokenizer, model)

        def score(alpha: float) -> dict:
            weights.set(alpha)
            res = score_sets(model, sets, collator, objective, tokenizer, batch_size=cfg.eval.batch_size, mode=mode)
            log(f"alpha {alpha:.3f}: " + ", ".join(f"{n} perplexity {m['perplexity']:,.2f}" for n, m in res.items()))
            return res

        for alpha in cfg.merge.grid():
            sweep[alpha] = score(alpha)
        if cfg.merge.alpha is None:
            refine(score, sweep, roles, cfg.merge.forgetting_budget, cfg.merge.refine)
    if cfg.merge.alpha is not None:
        alpha, rule = float(cfg.merge.alpha), "fixed (merge.alpha)"
    else:
        alpha, rule = choose(sweep, roles, cfg.merge.forgetting_budget)
        if alpha == 0.0:
            rule += "; no weight above 0 stays within the budget, so the merged model is the base"
    if sweep:
        log("weight sweep (0 = base, 1 = adapted):\n" + sweep_table(sweep, roles))
    log(f"chosen: alpha {alpha:.2f}, {rule}")
    weights.set(alpha)

    metrics = {
        "stage": "merge", "alpha": alpha, "base": base_path, "adapted": cfg.model.path, "objective": objective,
        "selection": {"rule": rule, "forgetting_budget": cfg.merge.forgetting_budget, "roles": roles},
        "sweep": [{"alpha": a, "sets": sets} for a, sets in sorted(sweep.items())],
        # the shape a pretrain stage writes: "before" is the base (alpha 0), "after" the merged model
        "heldout": {n: {"before": sweep[0.0][n], "after": sweep[alpha][n],
                        "perplexity_ratio": sweep[alpha][n]["perplexity"] / sweep[0.0][n]["perplexity"]}
                    for n in (sweep.get(alpha) or {})},
        "train": {"wall_seconds": round(time.time() - t_start, 2)},
    }
    if is_main_process():
        save_model(model, tokenizer, out, merge=False)
        write_recipe(out, to_dict(cfg))
        write_meta(out, stage="merge", objective=objective, model_type=adapted.model_type, parent=cfg.model.path,
                   base=base_path, alpha=alpha, lora=False)
        update_metrics(out, metrics)
        log(f"saved {out}")
    return metrics
