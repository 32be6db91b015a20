"""What the rules add once the steps are decided (advise/rules.py calls these, in its order): the method
(LoRA or full) and why, vocabulary-extension candidates, what an epoch of continued pretraining costs, and
the pipeline arms that would confirm the advice. :class:`Notes` collects every rule's findings."""

from __future__ import annotations

from dataclasses import dataclass, field

from .facts import Facts, get_in


@dataclass
class Notes:
    """What the rules found, in the order they found it: the Advice's reasons, missing data and
    warnings, and the penalties that each lower the confidence one level."""

    reasons: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    penalties: list[str] = field(default_factory=list)

    def reason(self, rule, finding, value=None, threshold=None, supports=""):
        self.reasons.append(
            {"rule": rule, "finding": finding, "value": value, "threshold": threshold, "supports": supports}
        )


def vocabulary_candidates(f: Facts, m: dict, notes: Notes) -> list[str]:
    """Words to add to the tokenizer (from usable vocabulary measurements), and a warning naming
    them when the tokenizer fragments the domain's words."""
    candidates = (
        [c["word"] for c in (get_in(m, "vocabulary", "candidates", default=[]) or [])] if f.vocab_usable else []
    )
    if f.fragmented and candidates:
        notes.warnings.append(
            "the tokenizer fragments frequent domain words; vocabulary-extension candidates: "
            + ", ".join(candidates[:10])
            + " (add them: `lmadapt tokenizer extend MODEL --data CORPUS "
            "--add N`, or vocab.extend in the pretrain stage)"
        )
    return candidates


def rule_cost(m: dict, steps: list[str], notes: Notes) -> None:
    """What one epoch of continued pretraining on the domain corpus costs (reported, decides nothing)."""
    secs = get_in(m, "cost", "seconds_per_epoch")
    if secs is not None and "dapt" in steps:
        notes.reason(
            "cost",
            f"one epoch of the domain corpus: {get_in(m, 'cost', 'flops_per_epoch', default=0):.3g} FLOPs "
            f"(6 x params x tokens), about {_hours(secs)} on {get_in(m, 'cost', 'probe', 'device', default='this machine')}",
            round(secs),
            None,
            "",
        )


def full_fits(m, t) -> bool:
    """Full training fits memory_fraction of the device memory (or memory was not measured)."""
    full_b, avail = get_in(m, "cost", "memory", "full_bytes"), get_in(m, "cost", "memory", "available_bytes")
    return not (full_b and avail and full_b > t["memory_fraction"] * avail)


def choose_method(m, t, steps, tokens, lots, shifted, fragmented, reason, warnings):
    params = get_in(m, "model", "params")
    full_b, lora_b = get_in(m, "cost", "memory", "full_bytes"), get_in(m, "cost", "memory", "lora_bytes")
    avail = get_in(m, "cost", "memory", "available_bytes")
    gib = 2**30
    method = "full"
    if not full_fits(m, t):
        method = "lora"
        reason(
            "memory",
            f"full training needs ~{full_b / gib:.1f} GiB (16 bytes/param + activations), more than "
            f"{t['memory_fraction']:.0%} of {avail / gib:.1f} GiB; LoRA r=16 needs ~{(lora_b or 0) / gib:.1f} GiB",
            round(full_b / gib, 2),
            round(t["memory_fraction"] * avail / gib, 2),
            "LoRA",
        )
        if lora_b and lora_b > t["memory_fraction"] * avail:
            warnings.append(
                "even LoRA may not fit: lower train.batch_size / block size or turn on gradient_checkpointing"
            )
    elif params and params >= t["large_model_params"]:
        method = "lora"
        reason(
            "size",
            f"{params:,} parameters: full training keeps 16 bytes/param of weights, gradients and Adam states",
            params,
            t["large_model_params"],
            "LoRA",
        )
    elif "dapt" in steps and tokens is not None and tokens < t["some_domain_tokens"]:
        method = "lora"
        reason(
            "method",
            f"continued pretraining on little data ({tokens:,.0f} tokens): LoRA trains few parameters "
            "and forgets less of the general ability (Biderman et al. 2024)",
            int(tokens),
            t["some_domain_tokens"],
            "LoRA",
        )
    else:
        if full_b and avail:
            reason(
                "memory",
                f"full training fits: ~{full_b / gib:.1f} GiB of {avail / gib:.1f} GiB",
                round(full_b / gib, 2),
                round(t["memory_fraction"] * avail / gib, 2),
                "full",
            )
        if "dapt" in steps and lots and shifted:
            reason(
                "method",
                "large, shifted corpus: full training learns more than LoRA in continued "
                "pretraining (Biderman et al. 2024)",
                None,
                None,
                "full",
            )
    return method, bool(method == "lora" and fragmented)


def pipeline_arms(steps, dom_ok, task_ok, full_fits) -> list[str]:
    """Pipeline arms that test the advice against its alternatives (each arm uses the advised method,
    except dapt_full / dapt_lora, which compare the methods when there is no task to fine-tune)."""
    arms: list[str] = []
    if task_ok:
        arms.append("ft_only")
        if dom_ok:
            arms += ["dapt_ft", "tapt_ft", "dapt_tapt_ft"]
        else:
            arms.append("tapt_ft")
    elif dom_ok and "dapt" in steps:
        arms = ["dapt_full", "dapt_lora"] if full_fits else ["dapt_lora"]
    return arms


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
