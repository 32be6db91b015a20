"""`lmadapt merge`: interpolate an adapted model's weights back toward its base, to trade domain
gain against forgetting, and measure the trade.

    lmadapt merge model.path=runs/dapt eval.sets.domain=valid.jsonl eval.sets.general=general_valid.jsonl \\
        train.output_dir=runs/dapt_merged

Reads top to bottom: find the base -> load both (a LoRA adapter folder is merged into its base) ->
check they are the same network -> score every weight on the held-out sets -> choose -> save. The
output is a plain model folder like a pretrain stage's, so fine-tuning (or a pipeline arm) can start
from it; metrics.json keeps the whole sweep. Memory: the base's and the adapted model's weights are
both held (on the CPU) besides the model being scored.

Sharded (``train.sharding: fsdp`` under torchrun, or an ``accelerate launch`` FSDP config): the
adapted model is loaded by the main process only (the others build an empty one on the meta device)
and sharded (FSDP2), its shards filled from the main process (models/on_main.py, train/fsdp_init.py),
then the base likewise, and each process keeps only its own shards of both; every weight is set
shard by shard, every process scores the same batches in lockstep, and the merged model is streamed
to the folder one tensor at a time (train/fsdp_save.py). Still whole: each model on the main process
while it loads (host RAM).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..config.base import ConfigError, to_dict
from ..config.merge import MergeConfig
from ..config.model import ModelConfig
from ..data.heldout import heldout_sets
from ..models.load import check_block_size, load_model, supports_document_packing
from ..models.lora import save_model
from ..tasks.retention import instruction_retention, read_retention_set
from ..runtime.dist import is_main_process, log, to_process_device
from ..train.fsdp import check_launch
from ..train.fsdp import local_part, save_whole, shard_model, wants_sharding
from ..train.harness import check_tasks, harness_value, run_harness
from ..train.lm_eval import heldout_collator, score_sets
from ..runtime.run_folder import prepare_output_dir
from ..runtime.outputs import read_meta, update_metrics, write_meta, write_recipe


def resolve_base(cfg: MergeConfig) -> str:
    """``merge.base``, else the parent the adapted folder records (a pretrain stage's starting model)."""
    meta = read_meta(cfg.model.path)
    if meta.get("stage") == "finetune":
        raise ConfigError(
            f"model.path: {cfg.model.path} is a fine-tuned task model; merge interpolates language "
            "models (a pretrain output and its base)"
        )
    base = cfg.merge.base or meta.get("parent")
    if not base:
        raise ConfigError(
            f"merge.base: {cfg.model.path} records no parent model in its lmadapt_meta.json (trained "
            "from scratch, or not an lmadapt output); set merge.base"
        )
    return str(base)


def check_same_network(base_sd: dict, adapted_sd: dict, base: str, adapted: str) -> None:
    """Weights can only be interpolated between two copies of one architecture."""
    missing = sorted(set(adapted_sd) ^ set(base_sd))
    if missing:
        raise ConfigError(
            f"merge: {base} and {adapted} are different networks (parameter {missing[0]!r} is in only one of them)"
        )
    for name, t in adapted_sd.items():
        if tuple(t.shape) != tuple(base_sd[name].shape):
            raise ConfigError(
                f"merge: {name} has shape {tuple(base_sd[name].shape)} in {base} but "
                f"{tuple(t.shape)} in {adapted} (a resized vocabulary, another size?)"
            )


class Interpolator:
    """Sets ``model``'s weights to base + alpha x (adapted - base), computed in fp32 per tensor.
    For a sharded model ``base_sd`` / ``adapted_sd`` hold this process's shards only (:meth:`sharded`)
    and each process sets only its own part of every weight."""

    def __init__(self, model, base_sd: dict, adapted_sd: dict):
        self.model, self.base, self.adapted = model, base_sd, adapted_sd

    @classmethod
    def sharded(cls, model, base_model) -> "Interpolator":
        """``model`` and ``base_model``: sharded alike (the adapted and the base weights); both ends
        kept as this process's shards on the host (as unsharded), so ``base_model`` can be freed."""
        state = model.state_dict()  # DTensors (FSDP2 reshards the root's gathered weights first)
        base_state = base_model.state_dict()
        adapted = {k: local_part(v).detach().to("cpu", copy=True) for k, v in state.items()}
        base = {k: local_part(base_state[k]).detach().to("cpu", copy=True) for k in state}
        return cls(model, base, adapted)

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        for name, p in self.model.state_dict().items():
            p = local_part(p)  # a sharded weight: this process's shard, written through to FSDP2's storage
            a, b = self.adapted[name], self.base[name]
            if p.is_floating_point():
                p.copy_(torch.lerp(b.float(), a.float(), float(alpha)).to(p.dtype))
            else:  # integer buffers (position ids and the like) are the adapted model's
                p.copy_(a)


def budget_series(
    sweep: dict[float, dict], roles: dict, metric: str = "general_perplexity", caps: dict[float, dict] | None = None
) -> tuple[dict[float, float], bool, str] | None:
    """({alpha: forgetting metric}, higher is better, its name), or None when there is nothing to
    bound (general perplexity without a general set). ``caps[alpha]``: {"harness": run_harness
    scores, "instruction_retention": ...} at that weight."""
    caps = caps or {}
    if metric == "general_perplexity":
        gen = roles["general"]
        if gen is None:
            return None
        return {a: sets[gen]["perplexity"] for a, sets in sweep.items()}, False, f"{gen} perplexity"
    if metric == "instruction_loss":
        vals = {a: ((caps.get(a) or {}).get("instruction_retention") or {}).get("response_loss") for a in sweep}
        name, higher = "instruction response loss", False
    else:
        spec = metric[len("harness:") :]
        task, _, m = spec.partition("/")
        base = ((caps.get(0.0) or {}).get("harness") or {}).get(task) or {}
        m = m or base.get("primary") or ""
        vals = {a: harness_value((caps.get(a) or {}).get("harness") or {}, f"{task}/{m}") for a in sweep}
        name, higher = f"{task} {m}", bool((base.get("higher_is_better") or {}).get(m, True))
    missing = sorted(a for a, v in vals.items() if v is None)
    if missing:
        have = ", ".join(
            f"{t}/{k}"
            for t, sc in ((caps.get(missing[0]) or {}).get("harness") or {}).items()
            for k in sc
            if isinstance(sc[k], float) and "stderr" not in k
        )
        raise ConfigError(
            f"merge.budget_metric: no {metric} score at alpha {missing[0]}" + (f" (scored: {have})" if have else "")
        )
    return vals, higher, name


def budget_limit(base: float, budget: float, higher: bool) -> float:
    """The worst allowed value: ``budget`` points (of 100) below an accuracy, or (1 + budget) x a loss."""
    return base - budget / 100 if higher else base * (1 + budget)


def _within(value: float, limit: float, higher: bool) -> bool:
    return value >= limit if higher else value <= limit


def choose(
    sweep: dict[float, dict],
    roles: dict,
    budget: float,
    metric: str = "general_perplexity",
    caps: dict[float, dict] | None = None,
) -> tuple[float, str]:
    """The weight with the lowest domain perplexity among those within the forgetting budget."""
    dom = roles["domain"]
    ppl = {a: {n: m["perplexity"] for n, m in sets.items()} for a, sets in sweep.items()}
    series = budget_series(sweep, roles, metric, caps)
    if series is None:
        eligible, rule = list(ppl), "lowest domain perplexity (no general set to bound forgetting)"
    else:
        vals, higher, name = series
        limit = budget_limit(vals[0.0], budget, higher)
        eligible = [a for a in ppl if _within(vals[a], limit, higher)]
        allowed = f"at most {budget:g} points below" if higher else f"within +{budget:.0%} of"
        rule = (
            f"lowest {dom} perplexity with {name} {allowed} the base's "
            f"({vals[0.0]:,.{3 if higher else 2}f} → at {'least' if higher else 'most'} "
            f"{limit:,.{3 if higher else 2}f})"
        )
    best = min(eligible, key=lambda a: (ppl[a][dom], a))
    return best, rule


def refine(
    score: Callable[[float], dict],
    sweep: dict[float, dict],
    roles: dict,
    budget: float,
    steps: int,
    metric: str = "general_perplexity",
    caps: dict[float, dict] | None = None,
) -> None:
    """Bisect between the chosen weight and the nearest weight above it that breaks the forgetting
    budget, ``steps`` times, adding each scored weight to ``sweep`` (``score`` fills ``caps`` too).

    A coarse grid can put the budget's edge between two points (seen: +6.4% general perplexity at
    0.25 against a 5% budget, so the grid's choice was the base itself); forgetting grows with
    alpha, so a few halvings find a weight near the edge, which keeps more of the domain gain. (A
    harness score on a few hundred questions is noisy, so there the edge is only as sharp as the
    score.)"""
    for _ in range(steps):
        series = budget_series(sweep, roles, metric, caps)
        if series is None:
            return
        vals, higher, _ = series
        limit = budget_limit(vals[0.0], budget, higher)
        best, _ = choose(sweep, roles, budget, metric, caps)
        above = [a for a in sweep if a > best and not _within(vals[a], limit, higher)]
        if not above:
            return
        mid = round((best + min(above)) / 2, 6)
        if mid in sweep:
            return
        sweep[mid] = score(mid)


def capability_at(model, tokenizer, cfg: MergeConfig, retention_examples: list | None) -> dict:
    """Harness and instruction-retention scores of the weights the model holds now (those configured)."""
    out = {}
    if cfg.eval.harness.enabled:
        out["harness"] = run_harness(model, tokenizer, cfg.eval.harness)
    if retention_examples is not None:
        out["instruction_retention"] = instruction_retention(
            model, tokenizer, cfg.eval.instruction_retention, retention_examples
        )
    return out


def _capability_cells(caps: dict) -> list[tuple[str, str]]:
    """(header, value) of each capability score at one weight: a harness task's headline metric,
    the instruction response loss."""
    cells = [
        (f"{t} {m.get('primary')}", f"{m.get(m.get('primary') or '', float('nan')):.3f}")
        for t, m in (caps.get("harness") or {}).items()
    ]
    if caps.get("instruction_retention"):
        loss = caps["instruction_retention"].get("response_loss")
        cells.append(("instruction loss", "-" if loss is None else f"{loss:.3f}"))
    return cells


def sweep_table(sweep: dict[float, dict], roles: dict, caps: dict[float, dict] | None = None) -> str:
    dom, gen = roles["domain"], roles["general"]
    caps = caps or {}
    d0, d1 = sweep[0.0][dom]["perplexity"], sweep[1.0][dom]["perplexity"]
    extra = [h for h, _ in _capability_cells(caps.get(0.0) or {})]
    lines = [
        f"{'alpha':>6}  {dom + ' ppl':>14}  {(gen or '-') + ' ppl':>14}  {'domain gain kept':>16}  {'general change':>14}"
        + "".join(f"  {h:>18}" for h in extra)
    ]
    for a, sets in sorted(sweep.items()):
        d = sets[dom]["perplexity"]
        kept = f"{(d0 - d) / (d0 - d1):.0%}" if d0 != d1 else "-"
        g = sets[gen]["perplexity"] if gen else None
        change = f"{g / sweep[0.0][gen]['perplexity'] - 1:+.1%}" if gen else "-"
        lines.append(
            f"{a:>6.3f}  {d:>14,.2f}  {g if g is None else f'{g:,.2f}':>14}  {kept:>16}  {change:>14}"
            + "".join(f"  {v:>18}" for _, v in _capability_cells(caps.get(a) or {}))
        )
    return "\n".join(lines)


def load_pair(cfg: MergeConfig, base_path: str):
    """(the adapted model as loaded, the model to score, its :class:`Interpolator`). Sharded: each
    model is loaded by the main process only and sharded (the others' shards filled from it, as a
    pretrain stage does), the adapted one before the base loads; each process keeps its own shards."""
    sharded = wants_sharding(cfg.train)
    adapted = load_model(cfg.model, weights_on_main=sharded)
    if cfg.eval.sets:
        check_block_size(adapted.model, cfg.eval.block_size, "eval.block_size")
    if sharded:
        shard_model(adapted.model, cfg.train)
    base = load_model(
        ModelConfig(path=base_path, objective=adapted.objective, trust_remote_code=cfg.model.trust_remote_code),
        weights_on_main=sharded,
    )
    if len(base.tokenizer) != len(adapted.tokenizer):
        raise ConfigError(
            f"merge: {base_path} has {len(base.tokenizer):,} tokens, {cfg.model.path} "
            f"{len(adapted.tokenizer):,}; interpolation needs one vocabulary"
        )
    if sharded:  # (a DTensor's shape is the whole weight's: the check is the same as unsharded)
        check_same_network(base.model.state_dict(), adapted.model.state_dict(), base_path, cfg.model.path)
        shard_model(base.model, cfg.train)
        model, weights = adapted.model, Interpolator.sharded(adapted.model, base.model)
        del base
    else:
        base_sd = {k: v.detach().to("cpu", copy=True) for k, v in base.model.state_dict().items()}
        del base
        adapted_sd = {k: v.detach().to("cpu", copy=True) for k, v in adapted.model.state_dict().items()}
        check_same_network(base_sd, adapted_sd, base_path, cfg.model.path)
        model = to_process_device(adapted.model)
        weights = Interpolator(model, base_sd, adapted_sd)
    log(
        f"merge: base {base_path}, adapted {cfg.model.path} "
        f"({sum(t.numel() for t in model.state_dict().values()):,} weights)"
    )
    return adapted, model, weights


def _sweep(cfg: MergeConfig, model, weights: Interpolator, tokenizer, objective: str):
    """Score the grid (and the refining bisections): (sweep, caps, budget)."""
    sweep: dict[float, dict] = {}
    caps: dict[float, dict] = {}  # harness / instruction scores per weight, when configured
    roles, metric = cfg.eval.roles(), cfg.merge.budget_metric
    if not cfg.eval.sets:
        return sweep, caps, cfg.merge.budget(False)
    mode = "document" if supports_document_packing(model, objective) else "concat"
    sets = heldout_sets(
        {str(k): str(v) for k, v in cfg.eval.sets.items()},
        tokenizer,
        objective,
        mode,
        block_size=cfg.eval.block_size,
        max_tokens=cfg.eval.max_tokens,
        text_field=cfg.eval.text_field,
    )
    collator = heldout_collator(objective, mode, tokenizer, model)
    retention = read_retention_set(cfg.eval.instruction_retention) if cfg.eval.instruction_retention.enabled else None

    def score(alpha: float) -> dict:
        weights.set(alpha)
        res = score_sets(model, sets, collator, objective, tokenizer, batch_size=cfg.eval.batch_size, mode=mode)
        text = ", ".join(f"{n} perplexity {m['perplexity']:,.2f}" for n, m in res.items())
        caps[alpha] = capability_at(model, tokenizer, cfg, retention)
        for task, m in (caps[alpha].get("harness") or {}).items():
            text += f", {task} {m.get('primary')} {m.get(m.get('primary'), float('nan')):.3f}"
        if "instruction_retention" in caps[alpha]:
            text += f", instruction loss {caps[alpha]['instruction_retention'].get('response_loss')}"
        log(f"alpha {alpha:.3f}: {text}")
        return res

    for alpha in cfg.merge.grid():
        sweep[alpha] = score(alpha)
    higher = (budget_series(sweep, roles, metric, caps) or ({}, False, ""))[1]
    budget = cfg.merge.budget(higher)
    if cfg.merge.alpha is None:
        refine(score, sweep, roles, budget, cfg.merge.refine, metric, caps)
    return sweep, caps, budget


def _chosen(cfg: MergeConfig, sweep: dict, caps: dict, budget: float) -> tuple[float, str]:
    if cfg.merge.alpha is not None:
        return float(cfg.merge.alpha), "fixed (merge.alpha)"
    alpha, rule = choose(sweep, cfg.eval.roles(), budget, cfg.merge.budget_metric, caps)
    if alpha == 0.0:
        rule += "; no weight above 0 stays within the budget, so the merged model is the base"
    return alpha, rule


def run_merge(cfg: MergeConfig) -> dict:
    """Run one merge stage; returns the metrics written to metrics.json."""
    t_start = time.time()
    if cfg.eval.harness.enabled:
        check_tasks(cfg.eval.harness)
    check_launch(cfg.train)  # an accelerate FSDP launch turns sharding on; impossible options stop here
    out = prepare_output_dir(cfg.train.output_dir, resume=False, overwrite=cfg.train.overwrite or cfg.train.resume)
    base_path = resolve_base(cfg)
    adapted, model, weights = load_pair(cfg, base_path)
    tokenizer, objective = adapted.tokenizer, adapted.objective
    roles, metric = cfg.eval.roles(), cfg.merge.budget_metric
    sweep, caps, budget = _sweep(cfg, model, weights, tokenizer, objective)
    alpha, rule = _chosen(cfg, sweep, caps, budget)
    if sweep:
        log("weight sweep (0 = base, 1 = adapted):\n" + sweep_table(sweep, roles, caps))
    log(f"chosen: alpha {alpha:.2f}, {rule}")
    weights.set(alpha)

    metrics = {
        "stage": "merge",
        "alpha": alpha,
        "base": base_path,
        "adapted": cfg.model.path,
        "objective": objective,
        "selection": {"rule": rule, "forgetting_budget": budget, "budget_metric": metric, "roles": roles},
        "sweep": [{"alpha": a, "sets": sets, **caps.get(a, {})} for a, sets in sorted(sweep.items())],
        # the shape a pretrain stage writes: "before" is the base (alpha 0), "after" the merged model
        "heldout": {
            n: {
                "before": sweep[0.0][n],
                "after": sweep[alpha][n],
                "perplexity_ratio": sweep[alpha][n]["perplexity"] / sweep[0.0][n]["perplexity"],
            }
            for n in (sweep.get(alpha) or {})
        },
        "train": {"wall_seconds": round(time.time() - t_start, 2)},
    }
    if caps.get(alpha):
        metrics["capabilities"] = {"before": caps[0.0], "after": caps[alpha]}
    # sharded: streamed to the folder shard by shard, never whole on one process
    save_whole(model, tokenizer, out, lambda m: save_model(m, tokenizer, out, merge=False))
    if is_main_process():
        write_recipe(out, to_dict(cfg))
        write_meta(
            out,
            stage="merge",
            objective=objective,
            model_type=adapted.model_type,
            parent=cfg.model.path,
            base=base_path,
            alpha=alpha,
            lora=False,
        )
        update_metrics(out, metrics)
        log(f"saved {out}")
    return metrics
