"""The recipe of `lmadapt merge`: interpolate an adapted model's weights back toward its base.

    model: {path: runs/dapt}                        # the adapted model (a pipeline sets the previous stage)
    merge: {alphas: [0, 0.25, 0.5, 0.75, 1], forgetting_budget: 0.05}   # base: default from runs/dapt's meta
    eval:  {sets: {domain: computing_valid.jsonl.gz, general: general_valid.jsonl.gz}, max_tokens: 20000}
    train: {output_dir: runs/dapt_merged}

merged = base + alpha x (adapted - base): alpha 1 is the adapted model, 0 the base. Continued
pretraining moves the weights toward the domain and away from general text; stopping part of the
way often keeps most of the domain gain for a fraction of the forgetting (WiSE-FT, Wortsman et al.
2022, for fine-tuning). With ``alpha`` unset the stage scores every ``alphas`` value on the held-out
sets and keeps the one with the lowest domain perplexity whose forgetting stays within
``forgetting_budget`` of the base's. Forgetting is general perplexity by default; ``budget_metric``
can bound a capability instead (scored at every weight, so each costs one harness run or one
instruction scoring per alpha):

    merge: {budget_metric: "harness:lmadapt_cloze/acc_norm", forgetting_budget: 2}   # at most 2 points lower
    eval:  {sets: {...}, harness: {tasks: [lmadapt_cloze], limit: 200}}
    merge: {budget_metric: instruction_loss, forgetting_budget: 0.1}                 # at most +10% response loss
    eval:  {sets: {...}, instruction_retention: {data: held_out_instructions.jsonl}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import ConfigError, opt
from .capability import HarnessConfig, RetentionConfig
from .data import heldout_roles
from .hub import is_hub_spec
from .model import ModelConfig
from .sharding import FsdpConfig, Sharding


@dataclass
class MergeSection:
    """Which base, and which weight of the adapted model."""

    base: str | None = opt(
        None,
        "the model before adaptation (default: the parent recorded in the adapted "
        "folder's lmadapt_meta.json, e.g. the base a pretrain stage started from)",
    )
    alpha: float | None = opt(
        None,
        "fixed weight of the adapted model (0 = base, 1 = adapted); null: chosen from `alphas` on the held-out sets",
    )
    alphas: list[float] = opt(
        doc="weights scored when alpha is null (0 and 1 are always added, as anchors)",
        factory=lambda: [0.25, 0.5, 0.75],
    )
    budget_metric: str = opt(
        "general_perplexity",
        "what the forgetting budget bounds: general_perplexity (the general "
        "eval set) | harness:<task>/<metric> (e.g. harness:lmadapt_cloze/acc_norm; "
        "needs eval.harness) | instruction_loss (needs eval.instruction_retention)",
    )
    forgetting_budget: float | None = opt(
        None,
        "chosen alpha: lowest domain perplexity among those whose forgetting is "
        "within budget. Losses and perplexities: a relative increase over the "
        "base's (default 0.05: at most 1.05 x); harness accuracies: a drop in "
        "points (default 1.0: at most 1 point below the base's)",
    )
    refine: int = opt(
        3,
        "then halve the gap between the chosen alpha and the nearest one above it that breaks "
        "the budget this many times (one more scoring each), to land near the budget's edge",
    )

    def __post_init__(self):
        for a in ([self.alpha] if self.alpha is not None else []) + list(self.alphas):
            if not 0 <= a <= 1:
                raise ConfigError(f"alpha: weights must be in [0, 1], got {a}")
        if self.forgetting_budget is not None and self.forgetting_budget < 0:
            raise ConfigError(f"forgetting_budget: must be >= 0, got {self.forgetting_budget}")
        m = self.budget_metric
        if m not in ("general_perplexity", "instruction_loss") and not (m.startswith("harness:") and len(m) > 8):
            raise ConfigError(
                f"budget_metric: {m!r} is not general_perplexity, instruction_loss or harness:<task>/<metric>"
            )
        if self.refine < 0:
            raise ConfigError(f"refine: must be >= 0, got {self.refine}")

    @property
    def harness_task(self) -> str | None:
        """The task of a ``harness:<task>/<metric>`` budget metric."""
        return (
            self.budget_metric[len("harness:") :].split("/")[0] if self.budget_metric.startswith("harness:") else None
        )

    def budget(self, higher_is_better: bool = False) -> float:
        """forgetting_budget, or its default for this kind of metric (points for accuracies, else relative)."""
        if self.forgetting_budget is not None:
            return float(self.forgetting_budget)
        return 1.0 if higher_is_better else 0.05

    def grid(self) -> list[float]:
        """The weights to score: the fixed one, or the sweep with both anchors, ascending."""
        if self.alpha is not None:
            return sorted({0.0, float(self.alpha), 1.0})
        return sorted({0.0, 1.0, *map(float, self.alphas)})


@dataclass
class MergeEvalConfig:
    """Held-out sets the weights are scored on."""

    sets: dict = opt(
        doc="{name: path or hub split}, e.g. {domain: valid.jsonl.gz, general: general_valid.jsonl.gz}", factory=dict
    )
    domain_set: str | None = opt(None, "which set is the domain (default: 'domain', else the first)")
    general_set: str | None = opt(None, "which set is general text (default: 'general', else the second)")
    block_size: int = opt(256, "tokens per block")
    max_tokens: int | None = opt(20000, "score at most this many tokens per set (leading documents)")
    batch_size: int = opt(8, "blocks per forward pass")
    text_field: str = opt("text", "text field for jsonl/csv/parquet")
    harness: HarnessConfig = opt(
        doc="lm-evaluation-harness tasks scored at every weight (for merge.budget_metric: harness:<task>/<metric>)",
        factory=HarnessConfig,
    )
    instruction_retention: RetentionConfig = opt(
        doc="held-out instructions scored at every weight (for merge.budget_metric: instruction_loss)",
        factory=RetentionConfig,
    )

    def roles(self) -> dict[str, str | None]:
        """{'domain': set name, 'general': set name} (None where there is no such set)."""
        return heldout_roles(list(self.sets), self.domain_set, self.general_set)


@dataclass
class MergeOutputConfig:
    """Where the merged model goes (keys shared with the training stages, so pipelines hand off alike)."""

    output_dir: str = opt("runs/merged", "output folder (merged model, tokenizer, recipe, metrics with the sweep)")
    overwrite: bool = opt(False, "allow writing into a non-empty output_dir")
    resume: bool = opt(False, "accepted for pipelines; a merge has no checkpoints and simply runs again")
    sharding: Sharding = opt(
        "none",
        "none: every process holds the whole model; fsdp (under torchrun): the adapted "
        "model sharded over the processes (FSDP2), each interpolating only its own "
        "shards and scoring in lockstep; the merged model is gathered to the main "
        "process to save (both models are still loaded whole on each process first)",
    )
    fsdp: FsdpConfig = opt(doc="FSDP2 options (train.sharding: fsdp)", factory=FsdpConfig)


@dataclass
class MergeConfig:
    """Weight interpolation between a base model and its adapted version."""

    model: ModelConfig = opt(doc="the adapted model (a pretrain output, merged or a LoRA adapter folder)")
    merge: MergeSection = opt(doc="base and weights", factory=MergeSection)
    eval: MergeEvalConfig = opt(doc="held-out sets for choosing the weight", factory=MergeEvalConfig)
    train: MergeOutputConfig = opt(doc="output folder", factory=MergeOutputConfig)

    def validate(self) -> None:
        if self.model.init != "pretrained" or not self.model.path:
            raise ConfigError("model.path: the adapted model folder is required")
        if self.merge.alpha is None and not self.eval.sets:
            raise ConfigError(
                "eval.sets: choosing alpha needs held-out sets (at least a domain set); or set merge.alpha"
            )
        for name, path in self.eval.sets.items():
            if not isinstance(path, str) or not (is_hub_spec(path) or Path(path).exists()):
                raise ConfigError(f"eval.sets.{name}: file not found: {path}")
        for key in ("domain_set", "general_set"):
            name = getattr(self.eval, key)
            if name is not None and name not in self.eval.sets:
                raise ConfigError(
                    f"eval.{key}: {name!r} is not one of eval.sets ({', '.join(self.eval.sets) or 'none'})"
                )
        task = self.merge.harness_task
        if task is not None and not self.eval.harness.enabled:
            # (a subtask of a group, mmlu_anatomy of mmlu, is checked against the scores when they exist)
            raise ConfigError(
                f"merge.budget_metric: {self.merge.budget_metric} needs eval.harness.tasks (e.g. [{task}])"
            )
        if self.merge.budget_metric == "instruction_loss" and not self.eval.instruction_retention.enabled:
            raise ConfigError("merge.budget_metric: instruction_loss needs eval.instruction_retention.data")
        if self.merge.base and self.merge.base.startswith((".", "/", "~")) and not Path(self.merge.base).exists():
            raise ConfigError(f"merge.base: folder not found: {self.merge.base}")
