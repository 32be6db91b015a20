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

``facts.py`` reads the measurements into the numbers these rules decide on; each rule below is one
function that appends its reasons, in the order :func:`recommend` calls them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .facts import Facts, domain_evidence, get_in, read_facts, task_evidence
from .method import Notes, choose_method, full_fits, pipeline_arms, rule_cost, vocabulary_candidates

GOALS = ("generate", "understand", "classify", "extract", "instruct")
LANGUAGE_GOALS = ("generate", "understand")
TASK_TYPES = {"classify": "classification", "extract": "extraction", "instruct": "instruction"}

THRESHOLDS: dict[str, float] = {
    "lots_domain_tokens": 5_000_000,  # >= : "lots" of unlabeled domain data
    "some_domain_tokens": 1_000_000,  # <  : little domain data: continued pretraining with LoRA, few steps
    "shift_ratio": 1.5,  # perplexity ratio domain/general >= : shifted (foreign to the model)
    "close_ratio": 1.2,  # <  : close to what the model knows
    "overlap_shifted": 0.35,  # top-10k vocabulary overlap < : vocabulary shifted (two general samples: ~0.45)
    "split3_excess": 0.10,  # domain minus general share of top-1k words cut into >= 3 pieces >= : fragmented
    "min_domain_docs": 20,  # fewer sampled documents: not enough evidence about the domain
    "min_domain_tokens": 5_000,  # fewer tokens in the domain sample: not enough evidence
    "min_per_class": 10,  # fewer labeled examples in some class: not enough evidence
    "min_examples": 50,  # labeled data without classes: fewer examples is not enough evidence
    # perplexity from fewer scored tokens per set: thin shift measurement. The default probe scores 8
    # blocks of 256, i.e. about 2,000 tokens, not 2,048: a causal block predicts 255 of its tokens and
    # a document's first token is never predicted. The floor sits below that, at 7 blocks' worth.
    "min_scored_tokens": 1_792,
    "memory_fraction": 0.8,  # full training must fit in this share of the device memory
    "large_model_params": 1_000_000_000,  # >= : LoRA (optimizer state for full training is 16 bytes/param)
    "near": 0.2,  # a deciding value within +-20% of its threshold lowers confidence
}

RECOMMENDATIONS = {
    ("dapt", "ft"): "continued_pretraining_then_finetuning",
    ("dapt",): "continued_pretraining",
    ("tapt", "ft"): "task_adaptive_pretraining_then_finetuning",
    ("ft",): "finetuning",
    (): "not_enough_evidence",
}
STEP_NAMES = {
    "dapt": "continued pretraining on the domain corpus",
    "tapt": "task-adaptive pretraining on the task's own texts",
    "ft": "fine-tuning on the labeled data",
}
CONFIDENCE = ("low", "medium", "high")
NO_EVIDENCE = "not enough evidence"


@dataclass
class Advice:
    """What to do, why (each reason backed by a measured number), and how sure."""

    goal: str
    recommendation: str  # a value of RECOMMENDATIONS
    steps: list[str]  # in order, from "dapt", "tapt", "ft"
    method: str | None  # "full" | "lora" (None when there is nothing to train)
    confidence: str  # "high" | "medium" | "low" | "not enough evidence"
    summary: str
    reasons: list[dict] = field(default_factory=list)  # {rule, finding, value, threshold, supports}
    missing: list[str] = field(default_factory=list)  # data that would be needed to decide or to reach the goal
    warnings: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)  # pipeline arms that would confirm the advice
    train_embeddings: bool = False  # LoRA: also train embeddings/head (fragmented domain vocabulary)
    vocabulary_candidates: list[str] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _near(value: float | None, threshold: float, rel: float) -> bool:
    return value is not None and threshold > 0 and abs(value - threshold) <= rel * threshold


def recommend(measurements: dict, goal: str, thresholds: dict | None = None) -> Advice:
    """Decide from ``measurements`` (see :func:`lmadapt.advise.measure.measure` for the keys; any
    section may be missing or None) and ``goal`` (one of :data:`GOALS`)."""
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}; got {goal!r}")
    t = {**THRESHOLDS, **(thresholds or {})}
    m = measurements
    notes = Notes()
    dom_ok, task_ok = _rule_evidence(m, t, goal, notes)
    f = read_facts(m, t, goal, lang_goal=goal in LANGUAGE_GOALS, dom_ok=dom_ok, task_ok=task_ok)
    _report_measurements(f, m, t, notes)
    # The rules run in this order: each appends its reasons, and tapt only applies without dapt.
    dapt = _rule_dapt(f, m, t, notes)
    ft = _rule_ft(f, m, t, notes)
    tapt = _rule_tapt(f, dapt, notes)
    steps = [s for s, on in (("dapt", dapt), ("tapt", tapt), ("ft", ft)) if on]
    recommendation = RECOMMENDATIONS[tuple(steps)]
    if dapt and not ft and goal in TASK_TYPES:
        notes.warnings.append(
            f"goal '{goal}': after continued pretraining, fine-tune on labeled examples "
            "(then rerun advise with --task-train)"
        )
    method, train_embeddings = None, False
    if steps:
        method, train_embeddings = choose_method(
            m, t, steps, f.tokens, f.lots, f.shifted, f.fragmented, notes.reason, notes.warnings
        )
    candidates = vocabulary_candidates(f, m, notes)
    rule_cost(m, steps, notes)
    confidence = _confidence(f, steps, notes)
    arms = pipeline_arms(steps, f.dom_ok, f.task_ok, full_fits(m, t))
    summary = _summary(steps, method, confidence, goal)
    return Advice(
        goal=goal,
        recommendation=recommendation,
        steps=steps,
        method=method,
        confidence=confidence,
        summary=summary,
        reasons=notes.reasons,
        missing=notes.missing,
        warnings=notes.warnings + [f"confidence lowered: {p}" for p in notes.penalties],
        arms=arms,
        train_embeddings=train_embeddings,
        vocabulary_candidates=candidates,
        thresholds=t,
    )


def _rule_evidence(m: dict, t: dict, goal: str, notes: Notes) -> tuple[bool, bool]:
    """(domain sample usable, labeled data usable), noting why not and what more data is missing."""
    dom_ok, dom_why = domain_evidence(m, t)
    task_ok, task_why = task_evidence(m, t, goal)
    if dom_why:
        notes.warnings.append(dom_why)
        notes.missing.append(
            f"more domain text (>= {t['min_domain_docs']} documents and >= {t['min_domain_tokens']:,} tokens)"
        )
    if task_why and "too small" not in task_why:
        notes.warnings.append(task_why)
        notes.missing.append("labeled examples of at least two classes (a label field: --label-field)")
    elif task_why:
        notes.warnings.append(task_why)
        notes.missing.append(
            f"more labeled examples (>= {t['min_per_class']} per class, or >= {t['min_examples']} without classes)"
        )
    return dom_ok, task_ok


def _report_measurements(f: Facts, m: dict, t: dict, notes: Notes) -> None:
    """Shift and vocabulary: reported whenever measured on usable data, whether or not they decide."""
    for text, sh in (("domain", f.d_shift), ("task", f.t_shift)):
        if not sh:
            continue
        what = "the domain corpus" if text == "domain" else "the task texts"
        verdict = (
            "thin measurement, not used to decide"
            if sh["thin"]
            else "foreign to the model (shifted)"
            if sh["shifted"]
            else "close to what the model already models"
            if sh["close"]
            else "moderately shifted"
        )
        notes.reason(
            "shift",
            f"{f.metric} ratio of {what} to general English text = {sh['ratio']:.2f}: {verdict} "
            f"({sh['scored']:,} tokens scored per set)",
            round(sh["ratio"], 3),
            t["shift_ratio"],
            ("continued pretraining" if text == "domain" else "task-adaptive pretraining")
            if sh["shifted"]
            else "fine-tuning only"
            if sh["close"]
            else "",
        )
    if f.vocab_usable:
        notes.reason(
            "vocabulary",
            f"top-{get_in(m, 'vocabulary', 'top_k')} word overlap of the {f.vocab_text} text with "
            f"general text = {f.overlap:.2f} ({'shifted vocabulary' if f.vocab_shifted else 'shared vocabulary'}; "
            "two general-English samples: ~0.45)",
            round(f.overlap, 3),
            t["overlap_shifted"],
            "continued pretraining" if f.vocab_shifted else "",
        )
        if f.excess is not None:
            notes.reason(
                "tokenizer",
                f"{f.split_d:.0%} of the 1k most frequent {f.vocab_text} words are cut into >= 3 "
                f"pieces vs {f.split_r:.0%} of general words",
                round(f.excess, 3),
                t["split3_excess"],
                "train embeddings / extend vocabulary" if f.fragmented else "",
            )


def _rule_dapt(f: Facts, m: dict, t: dict, notes: Notes) -> bool:
    """Continued pretraining on the domain corpus: lots of it (rule "volume"), or a language goal."""
    dapt = False
    if f.dom_ok:
        tokens = f.tokens
        if f.lots:
            dapt = True
            notes.reason(
                "volume",
                f"about {tokens:,.0f} domain tokens: lots of unlabeled domain data",
                int(tokens),
                t["lots_domain_tokens"],
                "continued pretraining",
            )
            if _near(tokens, t["lots_domain_tokens"], t["near"]):
                notes.penalties.append("domain volume near the 'lots' threshold")
        elif tokens is not None:
            notes.reason(
                "volume",
                f"about {tokens:,.0f} domain tokens: less than 'lots'",
                int(tokens),
                t["lots_domain_tokens"],
                "",
            )
        if f.lang_goal:
            dapt = True
            notes.reason(
                "goal",
                f"goal '{f.goal}': generating/understanding the domain's own language is learned by "
                "continued pretraining on its text",
                None,
                None,
                "continued pretraining",
            )
        if dapt:
            _dapt_shift_penalties(f, t, notes)
    elif m.get("domain") is None and f.lang_goal and not f.task_ok:
        notes.missing.append("unlabeled domain text (continued pretraining needs it; >= 5M tokens is 'lots')")
    return dapt


def _dapt_shift_penalties(f: Facts, t: dict, notes: Notes) -> None:
    """Continued pretraining is decided: a shift that is missing, thin, close or near its threshold
    makes that decision less sure."""
    if not f.d_shift or f.d_shift["thin"]:
        notes.penalties.append("domain shift not measured (or from few tokens)")
    elif f.close:
        notes.penalties.append("the model already models the domain well")
        notes.warnings.append(
            f"perplexity ratio {f.ratio:.2f} < {t['close_ratio']}: continued pretraining is expected "
            "to add little; the pipeline's arms compare it with the base model"
        )
    elif _near(f.ratio, t["shift_ratio"], t["near"]) and not f.lang_goal:
        notes.penalties.append("shift near its threshold")


def _rule_ft(f: Facts, m: dict, t: dict, notes: Notes) -> bool:
    """Fine-tuning: usable labeled data (rule "labels"); a task goal asks for it (rule "goal")."""
    goal = f.goal
    if f.task_ok:
        task = m["task"]
        per = f"{task.get('examples', 0):,} labeled examples" + (
            f", {task['classes']} classes, min/median {task.get('per_class_min')}/{task.get('per_class_median')} per class"
            if task.get("classes")
            else ""
        )
        notes.reason("labels", f"{per}: labeled data for a specific task", task.get("examples"), None, "fine-tuning")
    if goal in TASK_TYPES:
        notes.reason(
            "goal", f"goal '{goal}': a task behaviour is learned from labeled examples", None, None, "fine-tuning"
        )
        if not f.task_ok:
            notes.penalties.append("the goal needs labeled data")
            if not m.get("task"):
                notes.missing.append(
                    f"labeled {goal} examples (--task-train; >= {t['min_per_class']} per class)"
                    if goal == "classify"
                    else f"labeled {goal} examples (--task-train; >= {t['min_examples']})"
                )
    return f.task_ok


def _rule_tapt(f: Facts, dapt: bool, notes: Notes) -> bool:
    """Task-adaptive pretraining on the task's own texts, when there is labeled data but no domain
    pretraining: for a language goal always, else when the text is foreign to the model."""
    if not f.task_ok or dapt:
        return False
    if f.lang_goal:
        notes.reason(
            "goal",
            f"goal '{f.goal}' without a usable domain corpus: continued pretraining on the task's "
            "own texts is the domain text available",
            None,
            None,
            "task-adaptive pretraining",
        )
        return True
    # Foreign to the model? The task texts' own perplexity ratio decides, else the domain's,
    # else (no usable perplexity) the vocabulary overlap.
    sh = next((x for x in (f.t_shift, f.d_shift) if x and not x["thin"]), None)
    foreign = sh["shifted"] if sh else f.vocab_shifted
    if not foreign:
        return False
    what = f"perplexity ratio {sh['ratio']:.2f}" if sh else f"vocabulary overlap {f.overlap:.2f}"
    notes.reason(
        "tapt",
        f"text foreign to the model ({what}) but not 'lots' of domain text: task-adaptive "
        "pretraining (Gururangan et al. 2020) is cheap and helps",
        None,
        None,
        "task-adaptive pretraining",
    )
    if not sh:
        notes.penalties.append("shift not measured on enough tokens")
    return True


def _confidence(f: Facts, steps: list[str], notes: Notes) -> str:
    """High, lowered one level per penalty; "not enough evidence" when nothing is decided."""
    if not steps or (not f.dom_ok and not f.task_ok):
        if not notes.missing and not notes.warnings:
            notes.missing.append("unlabeled domain text (--domain) and/or labeled task data (--task-train)")
        return NO_EVIDENCE
    return CONFIDENCE[max(0, 2 - len(notes.penalties))]


def _summary(steps, method, confidence, goal) -> str:
    if not steps:
        return f"Not enough evidence to recommend an adaptation for goal '{goal}'; see 'missing'."
    plan = ", then ".join(STEP_NAMES[s] for s in steps)
    return f"{plan[0].upper() + plan[1:]} ({method}); confidence {confidence}."
