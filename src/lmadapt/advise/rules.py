"""The decision: which adaptation to do, from a measurements dict and the goal. Pure, no I/O.

    advice = recommend(measurements, "classify")        # measurements as written by measure()
    advice.recommendation   -> "continued_pretraining_then_finetuning"
    advice.reasons          -> [{rule, finding, value, threshold, supports}, ...]

Seed table (each row is a rule below; ``reasons[].rule`` names it):

    lots of unlabeled domain data (>= lots_domain_tokens)         -> continued pretraining    (rule "volume")
    labeled data for a specific task                               -> fine-tuning              (rule "labels")
    both                                                           -> continued pretraining first, then fine-tune
    goal generate/understand industry-specific language            -> continued pretraining    (rule "goal")
    goal classify/extract/instruct in that domain                  -> fine-tuning              (rule "goal")

Measurements refine it:

* **shift** (perplexity ratio domain / general reference for the *base model*): >= shift_ratio means the
  model finds the domain foreign, so continued pretraining should help more (Gururangan et al. 2020);
  < close_ratio means the model already handles it (continued pretraining is expected to add little:
  confidence drops and the pipeline's arms decide). The ratio is relative to the *model*: a model trained
  on web and code text may find computing documentation easier than general prose (ratio < 1). With
  labeled data but not "lots" of domain text, task texts foreign to the model add task-adaptive
  pretraining (TAPT: continued pretraining on the task's own texts) before fine-tuning: the task texts'
  own ratio decides, else the domain's, else (no usable perplexity) the vocabulary overlap. With no
  usable domain corpus and a language goal, TAPT on the task texts is the continued pretraining possible.
* **vocabulary**: overlap < overlap_shifted and tokenizer fragmentation (>= split3_excess more frequent
  domain words split into >= 3 pieces than general words) are reported as evidence; fragmentation
  turns on ``lora.train_embeddings`` and lists vocabulary-extension candidates.
* **method** (LoRA or full): LoRA when full training does not fit memory_fraction of the memory, when
  the model has >= large_model_params parameters, or when continued pretraining has little data
  (< some_domain_tokens); otherwise full (LoRA learns less in continued pretraining on large,
  shifted corpora: Biderman et al. 2024).

"Not enough evidence": a domain sample with < min_domain_docs documents or < min_domain_tokens tokens,
labeled data with < min_per_class examples in some class (< min_examples without classes), or a
perplexity ratio from < min_scored_tokens tokens per set is not used to decide; the advice then says
what is missing instead of guessing. Confidence starts high and drops one level for each: a deciding
number within +-near of its threshold, a missing or thin shift measurement where continued pretraining
is decided, measurements that disagree with the seed rule, a goal whose data is missing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GOALS = ("generate", "understand", "classify", "extract", "instruct")
LANGUAGE_GOALS = ("generate", "understand")
TASK_TYPES = {"classify": "classification", "extract": "extraction", "instruct": "instruction"}

THRESHOLDS: dict[str, float] = {
    "lots_domain_tokens": 5_000_000,   # >= : "lots" of unlabeled domain data
    "some_domain_tokens": 1_000_000,   # <  : little domain data: continued pretraining with LoRA, few steps
    "shift_ratio": 1.5,                # perplexity ratio domain/general >= : shifted (foreign to the model)
    "close_ratio": 1.2,                # <  : close to what the model knows
    "overlap_shifted": 0.35,           # top-10k vocabulary overlap < : vocabulary shifted (two general samples: ~0.45)
    "split3_excess": 0.10,             # domain minus general share of top-1k words cut into >= 3 pieces >= : fragmented
    "min_domain_docs": 20,             # fewer sampled documents: not enough evidence about the domain
    "min_domain_tokens": 5_000,        # fewer tokens in the domain sample: not enough evidence
    "min_per_class": 10,               # fewer labeled examples in some class: not enough evidence
    "min_examples": 50,                # labeled data without classes: fewer examples is not enough evidence
    # perplexity from fewer scored tokens per set: thin shift measurement. The default probe scores 8
    # blocks of 256, i.e. about 2,000 tokens, not 2,048: a causal block predicts 255 of its tokens and
    # a document's first token is never predicted. The floor sits below that, at 7 blocks' worth.
    "min_scored_tokens": 1_792,
    "memory_fraction": 0.8,            # full training must fit in this share of the device memory
    "large_model_params": 1_000_000_000,  # >= : LoRA (optimizer state for full training is 16 bytes/param)
    "near": 0.2,                       # a deciding value within +-20% of its threshold lowers confidence
}

RECOMMENDATIONS = {
    ("dapt", "ft"): "continued_pretraining_then_finetuning",
    ("dapt",): "continued_pretraining",
    ("tapt", "ft"): "task_adaptive_pretraining_then_finetuning",
    ("ft",): "finetuning",
    (): "not_enough_evidence",
}
STEP_NAMES = {"dapt": "continued pretraining on the domain corpus",
              "tapt": "task-adaptive pretraining on the task's own texts",
              "ft": "fine-tuning on the labeled data"}
CONFIDENCE = ("low", "medium", "high")
NO_EVIDENCE = "not enough evidence"


@dataclass
class Advice:
    """What to do, why (each reason backed by a measured number), and how sure."""

    goal: str
    recommendation: str              # a value of RECOMMENDATIONS
    steps: list[str]                 # in order, from "dapt", "tapt", "ft"
    method: str | None               # "full" | "lora" (None when there is nothing to train)
    confidence: str                  # "high" | "medium" | "low" | "not enough evidence"
    summary: str
    reasons: list[dict] = field(default_factory=list)   # {rule, finding, value, threshold, supports}
    missing: list[str] = field(default_factory=list)    # data that would be needed to decide or to reach the goal
    warnings: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)       # pipeline arms that would confirm the advice
    train_embeddings: bool = False   # LoRA: also train embeddings/head (fragmented domain vocabulary)
    vocabulary_candidates: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def _near(value: float | None, threshold: float, rel: float) -> bool:
    return value is not None and threshold > 0 and abs(value - threshold) <= rel * threshold


def domain_evidence(m: dict, t: dict) -> tuple[bool, str | None]:
    """(usable, why not) for the domain corpus sample."""
    dom = m.get("domain")
    if not dom:
        return False, None
    docs, toks = dom.get("sampled_documents") or 0, dom.get("sampled_tokens") or 0
    if docs < t["min_domain_docs"] or toks < t["min_domain_tokens"]:
        return False, (f"domain sample too small to judge: {docs} documents / {toks:,} tokens "
                       f"(need >= {t['min_domain_docs']} documents and >= {t['min_domain_tokens']:,} tokens)")
    return True, None


def task_evidence(m: dict, t: dict, goal: str | None = None) -> tuple[bool, str | None]:
    """(usable, why not) for the labeled data. Records without a label (the label field is in none
    of them) or a single class are nothing to fine-tune a classifier on: said so, never "fine-tuning,
    confidence high" (extraction and instruction data carry their targets in other fields)."""
    task = m.get("task")
    if not task:
        return False, None
    if goal not in ("extract", "instruct") and "label_field" in task and not task.get("label_field"):
        return False, (f"the labeled data has no labels: none of its {task.get('examples') or 0} records has the "
                       "label field (--label-field names it)")
    if task.get("classes") == 1:
        only = next(iter(task.get("per_class") or {}), None)
        return False, (f"the labeled data has a single class{f' ({only!r})' if only is not None else ''}: "
                       "a classifier needs at least two to learn anything")
    if task.get("classes"):
        low = task.get("per_class_min") or 0
        if low < t["min_per_class"]:
            return False, (f"labeled data too small to judge: smallest class has {low} examples "
                           f"(need >= {t['min_per_class']} per class)")
        return True, None
    n = task.get("examples") or 0
    if n < t["min_examples"]:
        return False, f"labeled data too small to judge: {n} examples (need >= {t['min_examples']})"
    return True, None


def recommend(measurements: dict, goal: str, thresholds: dict | None = None) -> Advice:
    """Decide from ``measurements`` (see :func:`lmadapt.advise.measure.measure` for the keys; any
    section may be missing or None) and ``goal`` (one of :data:`GOALS`)."""
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}; got {goal!r}")
    t = {**THRESHOLDS, **(thresholds or {})}
    m = measurements
    reasons: list[dict] = []
    missing: list[str] = []
    warnings: list[str] = []
    penalties: list[str] = []

    def reason(rule, finding, value=None, threshold=None, supports=""):
        reasons.append({"rule": rule, "finding": finding, "value": value, "threshold": threshold, "supports": supports})

    lang_goal = goal in LANGUAGE_GOALS
    dom_ok, dom_why = domain_evidence(m, t)
    task_ok, task_why = task_evidence(m, t, goal)
    if dom_why:
        warnings.append(dom_why)
        missing.append(f"more domain text (>= {t['min_domain_docs']} documents and >= {t['min_domain_tokens']:,} tokens)")
    if task_why and "too small" not in task_why:
        warnings.append(task_why)
        missing.append("labeled examples of at least two classes (a label field: --label-field)")
    elif task_why:
        warnings.append(task_why)
        missing.append(f"more labeled examples (>= {t['min_per_class']} per class, or >= {t['min_examples']} without classes)")

    tokens = _get(m, "domain", "estimated_tokens")
    ref_scored = _get(m, "shift", "reference", "tokens", default=0)
    metric = _get(m, "shift", "metric", default="perplexity")

    def shift_of(text: str, usable: bool) -> dict | None:
        """{ratio, thin, shifted, close} of one text set, None when not measured or its data is unusable."""
        r = _get(m, "shift", text, "ratio")
        if r is None or not usable:
            return None
        scored = min(_get(m, "shift", text, "tokens", default=0), ref_scored)
        thin = scored < t["min_scored_tokens"]
        return {"ratio": r, "scored": scored, "thin": thin, "shifted": not thin and r >= t["shift_ratio"],
                "close": not thin and r < t["close_ratio"]}

    d_shift, t_shift = shift_of("domain", dom_ok), shift_of("task", task_ok)
    shifted = bool(d_shift and d_shift["shifted"])
    close = bool(d_shift and d_shift["close"])
    ratio = d_shift["ratio"] if d_shift else None
    overlap = _get(m, "vocabulary", "overlap")
    split_d = _get(m, "vocabulary", "domain_split3_share")
    split_r = _get(m, "vocabulary", "reference_split3_share")
    excess = (split_d - split_r) if split_d is not None and split_r is not None else None
    vocab_text = _get(m, "vocabulary", "text", default="domain")
    vocab_usable = overlap is not None and (vocab_text == "domain" and dom_ok or vocab_text == "task" and task_ok)
    vocab_shifted = vocab_usable and overlap < t["overlap_shifted"]
    fragmented = vocab_usable and excess is not None and excess >= t["split3_excess"]
    lots = dom_ok and tokens is not None and tokens >= t["lots_domain_tokens"]

    # ---- shift and vocabulary: reported whenever measured on usable data
    for text, sh in (("domain", d_shift), ("task", t_shift)):
        if not sh:
            continue
        what = "the domain corpus" if text == "domain" else "the task texts"
        verdict = ("thin measurement, not used to decide" if sh["thin"] else "foreign to the model (shifted)"
                   if sh["shifted"] else "close to what the model already models" if sh["close"] else "moderately shifted")
        reason("shift", f"{metric} ratio of {what} to general English text = {sh['ratio']:.2f}: {verdict} "
               f"({sh['scored']:,} tokens scored per set)", round(sh["ratio"], 3), t["shift_ratio"],
               ("continued pretraining" if text == "domain" else "task-adaptive pretraining") if sh["shifted"]
               else "fine-tuning only" if sh["close"] else "")
    if vocab_usable:
        reason("vocabulary", f"top-{_get(m, 'vocabulary', 'top_k')} word overlap of the {vocab_text} text with general "
               f"text = {overlap:.2f} ({'shifted vocabulary' if vocab_shifted else 'shared vocabulary'}; "
               "two general-English samples: ~0.45)", round(overlap, 3), t["overlap_shifted"],
               "continued pretraining" if vocab_shifted else "")
        if excess is not None:
            reason("tokenizer", f"{split_d:.0%} of the 1k most frequent {vocab_text} words are cut into >= 3 pieces "
                   f"vs {split_r:.0%} of general words", round(excess, 3), t["split3_excess"],
                   "train embeddings / extend vocabulary" if fragmented else "")

    # ---- continued pretraining on the domain corpus
    dapt = False
    if dom_ok:
        if lots:
            dapt = True
            reason("volume", f"about {tokens:,.0f} domain tokens: lots of unlabeled domain data",
                   int(tokens), t["lots_domain_tokens"], "continued pretraining")
            if _near(tokens, t["lots_domain_tokens"], t["near"]):
                penalties.append("domain volume near the 'lots' threshold")
        elif tokens is not None:
            reason("volume", f"about {tokens:,.0f} domain tokens: less than 'lots'", int(tokens),
                   t["lots_domain_tokens"], "")
        if lang_goal:
            dapt = True
            reason("goal", f"goal '{goal}': generating/understanding the domain's own language is learned by "
                   "continued pretraining on its text", None, None, "continued pretraining")
        if dapt:
            if not d_shift or d_shift["thin"]:
                penalties.append("domain shift not measured (or from few tokens)")
            elif close:
                penalties.append("the model already models the domain well")
                warnings.append(f"perplexity ratio {ratio:.2f} < {t['close_ratio']}: continued pretraining is expected "
                                "to add little; the pipeline's arms compare it with the base model")
            elif _near(ratio, t["shift_ratio"], t["near"]) and not lang_goal:
                penalties.append("shift near its threshold")
    elif m.get("domain") is None and lang_goal and not task_ok:
        missing.append("unlabeled domain text (continued pretraining needs it; >= 5M tokens is 'lots')")

    # ---- fine-tuning
    ft = task_ok
    if task_ok:
        task = m["task"]
        per = (f"{task.get('examples', 0):,} labeled examples"
               + (f", {task['classes']} classes, min/median {task.get('per_class_min')}/{task.get('per_class_median')} per class"
                  if task.get("classes") else ""))
        reason("labels", f"{per}: labeled data for a specific task", task.get("examples"), None, "fine-tuning")
    if goal in TASK_TYPES:
        reason("goal", f"goal '{goal}': a task behaviour is learned from labeled examples", None, None, "fine-tuning")
        if not task_ok:
            penalties.append("the goal needs labeled data")
            if not m.get("task"):
                missing.append(f"labeled {goal} examples (--task-train; >= {t['min_per_class']} per class)"
                               if goal == "classify" else f"labeled {goal} examples (--task-train; >= {t['min_examples']})")

    # ---- task-adaptive pretraining on the task's own texts
    tapt = False
    if task_ok and not dapt:
        if lang_goal:
            tapt = True
            reason("goal", f"goal '{goal}' without a usable domain corpus: continued pretraining on the task's "
                   "own texts is the domain text available", None, None, "task-adaptive pretraining")
        else:
            # Foreign to the model? The task texts' own perplexity ratio decides, else the domain's,
            # else (no usable perplexity) the vocabulary overlap.
            sh = next((x for x in (t_shift, d_shift) if x and not x["thin"]), None)
            foreign = sh["shifted"] if sh else vocab_shifted
            if foreign:
                tapt = True
                what = f"perplexity ratio {sh['ratio']:.2f}" if sh else f"vocabulary overlap {overlap:.2f}"
                reason("tapt", f"text foreign to the model ({what}) but not 'lots' of domain text: task-adaptive "
                       "pretraining (Gururangan et al. 2020) is cheap and helps", None, None, "task-adaptive pretraining")
                if not sh:
                    penalties.append("shift not measured on enough tokens")

    steps = [s for s, on in (("dapt", dapt), ("tapt", tapt), ("ft", ft)) if on]
    recommendation = RECOMMENDATIONS[tuple(steps)]
    if dapt and not ft and goal in TASK_TYPES:
        warnings.append(f"goal '{goal}': after continued pretraining, fine-tune on labeled examples "
                        "(then rerun advise with --task-train)")

    # ---- method: LoRA or full
    method, train_embeddings = None, False
    if steps:
        method, train_embeddings = _method(m, t, steps, tokens, lots, shifted, fragmented, reason, warnings)
    candidates = [c["word"] for c in (_get(m, "vocabulary", "candidates", default=[]) or [])] if vocab_usable else []
    if fragmented and candidates:
        warnings.append("the tokenizer fragments frequent domain words; vocabulary-extension candidates: "
                        + ", ".join(candidates[:10]) + " (add them: `lmadapt tokenizer extend MODEL --data CORPUS "
                        "--add N`, or vocab.extend in the pretrain stage)")

    # ---- cost
    secs = _get(m, "cost", "seconds_per_epoch")
    if secs is not None and "dapt" in steps:
        reason("cost", f"one epoch of the domain corpus: {_get(m, 'cost', 'flops_per_epoch', default=0):.3g} FLOPs "
               f"(6 x params x tokens), about {_hours(secs)} on {_get(m, 'cost', 'probe', 'device', default='this machine')}",
               round(secs), None, "")

    # ---- confidence
    if not steps or (not dom_ok and not task_ok):
        confidence = NO_EVIDENCE
        if not missing and not warnings:
            missing.append("unlabeled domain text (--domain) and/or labeled task data (--task-train)")
    else:
        confidence = CONFIDENCE[max(0, 2 - len(penalties))]
    arms = _arms(steps, dom_ok, task_ok, _full_fits(m, t))
    summary = _summary(steps, method, confidence, goal)
    return Advice(goal=goal, recommendation=recommendation, steps=steps, method=method, confidence=confidence,
                  summary=summary, reasons=reasons, missing=missing, warnings=warnings + [f"confidence lowered: {p}" for p in penalties],
                  arms=arms, train_embeddings=train_embeddings, vocabulary_candidates=candidates, thresholds=t)


def _full_fits(m, t) -> bool:
    """Full training fits memory_fraction of the device memory (or memory was not measured)."""
    full_b, avail = _get(m, "cost", "memory", "full_bytes"), _get(m, "cost", "memory", "available_bytes")
    return not (full_b and avail and full_b > t["memory_fraction"] * avail)


def _method(m, t, steps, tokens, lots, shifted, fragmented, reason, warnings):
    params = _get(m, "model", "params")
    full_b, lora_b = _get(m, "cost", "memory", "full_bytes"), _get(m, "cost", "memory", "lora_bytes")
    avail = _get(m, "cost", "memory", "available_bytes")
    gib = 2 ** 30
    method = "full"
    if not _full_fits(m, t):
        method = "lora"
        reason("memory", f"full training needs ~{full_b / gib:.1f} GiB (16 bytes/param + activations), more than "
               f"{t['memory_fraction']:.0%} of {avail / gib:.1f} GiB; LoRA r=16 needs ~{(lora_b or 0) / gib:.1f} GiB",
               round(full_b / gib, 2), round(t["memory_fraction"] * avail / gib, 2), "LoRA")
        if lora_b and lora_b > t["memory_fraction"] * avail:
            warnings.append("even LoRA may not fit: lower train.batch_size / block size or turn on gradient_checkpointing")
    elif params and params >= t["large_model_params"]:
        method = "lora"
        reason("size", f"{params:,} parameters: full training keeps 16 bytes/param of weights, gradients and "
               "Adam states", params, t["large_model_params"], "LoRA")
    elif "dapt" in steps and tokens is not None and tokens < t["some_domain_tokens"]:
        method = "lora"
        reason("method", f"continued pretraining on little data ({tokens:,.0f} tokens): LoRA trains few parameters "
               "and forgets less of the general ability (Biderman et al. 2024)", int(tokens), t["some_domain_tokens"], "LoRA")
    else:
        if full_b and avail:
            reason("memory", f"full training fits: ~{full_b / gib:.1f} GiB of {avail / gib:.1f} GiB",
                   round(full_b / gib, 2), round(t["memory_fraction"] * avail / gib, 2), "full")
        if "dapt" in steps and lots and shifted:
            reason("method", "large, shifted corpus: full training learns more than LoRA in continued "
                   "pretraining (Biderman et al. 2024)", None, None, "full")
    return method, bool(method == "lora" and fragmented)


def _arms(steps, dom_ok, task_ok, full_fits) -> list[str]:
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


def _summary(steps, method, confidence, goal) -> str:
    if not steps:
        return f"Not enough evidence to recommend an adaptation for goal '{goal}'; see 'missing'."
    plan = ", then ".join(STEP_NAMES[s] for s in steps)
    return f"{plan[0].upper() + plan[1:]} ({method}); confidence {confidence}."
