"""The recipe of `lmadapt run`: named arms of stages, repeated over seeds, with evidence and a report.

    output_dir: runs/demo
    seeds: [0, 1, 2]
    seeded_kinds: [finetune]          # these stages get train.seed=<seed> and run once per seed
    vars: {corpus: data/domain}       # ${corpus} anywhere in a string below; ${sample_data} is built in
    defaults: {pretrain: {...}, finetune: {...}}    # deep-merged under every stage of that kind
    evaluation: {lm_sets: {domain: d.jsonl, general: g.jsonl}, block_size: 256, max_tokens: 20000}
    baseline: {tfidf: true}
    stages:
      base: {kind: pretrain, recipe: {...}}         # a PretrainConfig / FinetuneConfig mapping
      ft:   {kind: finetune, recipe: {...}}
    arms:
      ft_only: [base, ft]
      dapt_ft: [base, {kind: pretrain, recipe: {...}}, ft]   # inline stages are fine too
      dapt_merge_ft: [base, dapt, {kind: merge, recipe: {eval: {sets: {...}}}}, ft]   # interpolate dapt toward base

Hand-off: every stage after the first starts from the previous stage's output folder (its
``model.path`` is set; ``"@previous"`` may be written there explicitly). Every stage recipe is
validated here, with a placeholder for the parent folder, before anything runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .base import ConfigError, apply_overrides, from_dict, load_recipe, opt, read_yaml
from .capability import HarnessConfig, RetentionConfig
from .data import heldout_roles
from .hub import is_hub_spec, parse_hub_spec

STAGE_KINDS = ("pretrain", "finetune", "evaluate", "merge")
# Kinds whose output is a language model (held-out perplexity evidence is taken after them).
LM_KINDS = ("pretrain", "merge")
PREVIOUS = "@previous"
# Stands in for the parent's output folder while validating (a hub-id-like name: not checked on disk).
PARENT_PLACEHOLDER = "lmadapt-parent/previous-stage"
SCRATCH_ONLY_KEYS = ("arch", "size", "dims", "gguf_file")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class EvaluateStageConfig:
    """A stage of kind `evaluate`: held-out LM loss/perplexity of the previous stage's model."""

    data: dict | list[str] = opt(doc="held-out sets: {name: path} or a list of paths (named by file stem)")
    model: str | None = opt(None, "model folder or hub id (only for an evaluate stage that starts an arm)")
    text_field: str = opt("text", "text field for jsonl/csv/parquet")
    split_docs: Literal["file", "blank_line", "line"] = opt("file", "document split for .txt files")
    block_size: int = opt(512, "tokens per block")
    batch_size: int = opt(8, "blocks per forward pass")
    max_tokens: int | None = opt(None, "score at most this many tokens per set")
    packing: Literal["auto", "document", "concat"] = opt("auto", "block layout")

    def sets(self) -> dict[str, str]:
        if isinstance(self.data, dict):
            return {str(k): str(v) for k, v in self.data.items()}
        return {_stem(p): p for p in self.data}

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("data: at least one held-out set is required")
        for name, path in self.sets().items():
            if not (is_hub_spec(path) or Path(path).exists()):
                raise ConfigError(f"data.{name}: file not found: {path}")
        if (
            self.model
            and self.model != PREVIOUS
            and self.model.startswith((".", "/", "~"))
            and not Path(self.model).exists()
        ):
            raise ConfigError(f"model: folder not found: {self.model}")


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet", ".md"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or str(path)


@dataclass
class StageSpec:
    """One stage: its kind and its recipe (the keys of that kind's single-stage recipe)."""

    kind: Literal["pretrain", "finetune", "evaluate", "merge"] = opt(doc="pretrain | finetune | evaluate | merge")
    recipe: dict = opt(
        doc="the stage's recipe (PretrainConfig / FinetuneConfig / evaluate / MergeConfig keys)", factory=dict
    )


@dataclass
class EvaluationConfig:
    """LM evidence: held-out perplexity after every pretrain stage and of an arm's starting model."""

    lm_sets: dict = opt(doc="held-out sets {name: path}, e.g. {domain: ..., general: ...}", factory=dict)
    block_size: int = opt(256, "tokens per block")
    max_tokens: int | None = opt(20000, "score at most this many tokens per set (leading documents)")
    batch_size: int = opt(8, "blocks per forward pass")
    text_field: str = opt("text", "text field for jsonl/csv/parquet")
    domain_set: str | None = opt(None, "which lm_sets entry is the domain (default: 'domain', else the first)")
    general_set: str | None = opt(None, "which lm_sets entry is general text (default: 'general', else the second)")
    harness: HarnessConfig = opt(
        doc="lm-evaluation-harness tasks scored on the same models as lm_sets (forgetting on capability benchmarks)",
        factory=HarnessConfig,
    )
    instruction_retention: RetentionConfig = opt(
        doc="response loss on held-out instructions, for instruction-tuned base models", factory=RetentionConfig
    )

    def __post_init__(self):
        if self.block_size < 8:
            raise ConfigError(f"block_size: must be at least 8, got {self.block_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        for key in ("domain_set", "general_set"):
            name = getattr(self, key)
            if name is not None and name not in self.lm_sets:
                raise ConfigError(f"{key}: {name!r} is not one of lm_sets ({', '.join(self.lm_sets) or 'none'})")

    def roles(self) -> dict[str, str | None]:
        """{'domain': set name, 'general': set name} (None where there is no such set)."""
        return heldout_roles(list(self.lm_sets), self.domain_set, self.general_set)

    @property
    def enabled(self) -> bool:
        """Is any LM evidence configured (held-out sets, harness tasks, instruction retention)?"""
        return bool(self.lm_sets) or self.harness.enabled or self.instruction_retention.enabled


@dataclass
class BaselineConfig:
    """Non-neural reference rows on every single-label classification fine-tune's data."""

    tfidf: bool = opt(False, "TF-IDF (word 1-2 grams) + logistic regression, C chosen by dev macro-F1")
    C: list[float] = opt(doc="inverse regularisation strengths tried", factory=lambda: [0.1, 1.0, 10.0])
    max_features: int | None = opt(100000, "vocabulary cap of the TF-IDF vectorizer")
    min_df: int = opt(
        1,
        "keep n-grams found in at least this many training texts (the shared/data README's "
        "baselines use 2 and a 200k cap)",
    )

    def __post_init__(self):
        if not self.C or any(c <= 0 for c in self.C):
            raise ConfigError(f"C: a non-empty list of positive numbers, got {self.C}")
        if self.min_df < 1:
            raise ConfigError(f"min_df: a whole number >= 1, got {self.min_df}")


@dataclass
class ReportConfig:
    """How arms are compared in report.md / report.html."""

    reference_arm: str | None = opt(None, "arm every other arm is compared with (default: ft_only, else the first arm)")
    noise_factor: float = opt(2.0, "a difference counts as real when |diff| > noise_factor x its pooled standard error")

    def __post_init__(self):
        if self.noise_factor <= 0:
            raise ConfigError(f"noise_factor: must be > 0, got {self.noise_factor}")


@dataclass
class PipelineConfig:
    """Arms (sequences of stages) x seeds, with a shared stage cache, evidence and a report."""

    output_dir: str = opt(doc="run folder: stages/, results.jsonl, run_state.json, report.md, report.html")
    arms: dict = opt(doc="arm name -> list of stage names (keys of `stages`) or inline {kind, recipe} stages")
    seeds: list[int] = opt(doc="every seeded stage runs once per seed", factory=lambda: [0])
    seeded_kinds: list[Literal["pretrain", "finetune", "evaluate"]] = opt(
        doc="stage kinds that get train.seed=<seed> and run per seed; the others run once and are shared",
        factory=lambda: ["finetune"],
    )
    vars: dict = opt(
        doc="values for ${name} placeholders in any string of this file (${sample_data} is built in)", factory=dict
    )
    defaults: dict = opt(doc="kind -> recipe mapping deep-merged under every stage of that kind", factory=dict)
    evaluation: EvaluationConfig = opt(
        doc="LM evidence (perplexity, harness, instruction retention) after pretrain and merge stages",
        factory=EvaluationConfig,
    )
    baseline: BaselineConfig = opt(doc="reference rows", factory=BaselineConfig)
    report: ReportConfig = opt(doc="comparison settings", factory=ReportConfig)
    stages: dict = opt(doc="named stages {name: {kind, recipe}}, reusable across arms", factory=dict)
    keep_checkpoints: bool = opt(
        False,
        "keep a finished stage's training checkpoints (weights and optimizer state); "
        "by default they are deleted once it is DONE, as a finished stage is never resumed",
    )

    def __post_init__(self):
        parsed = {}
        for name, spec in (self.stages or {}).items():
            if isinstance(spec, StageSpec):
                parsed[str(name)] = spec
                continue
            if not isinstance(spec, dict):
                raise ConfigError(f"stages.{name}: expected a mapping {{kind, recipe}}, got {spec!r}")
            parsed[str(name)] = from_dict(StageSpec, spec, prefix=f"stages.{name}")
        self.stages = parsed
        arms = {}
        for arm, items in (self.arms or {}).items():
            if not isinstance(items, (list, tuple)) or not items:
                raise ConfigError(f"arms.{arm}: a non-empty list of stages, got {items!r}")
            out = []
            for i, item in enumerate(items):
                if isinstance(item, StageSpec):
                    out.append(item)
                elif isinstance(item, str):
                    if item not in self.stages:
                        raise ConfigError(
                            f"arms.{arm}[{i}]: no stage named {item!r} (stages: {', '.join(self.stages) or 'none'})"
                        )
                    out.append(item)
                elif isinstance(item, dict):
                    out.append(from_dict(StageSpec, item, prefix=f"arms.{arm}[{i}]"))
                else:
                    raise ConfigError(f"arms.{arm}[{i}]: a stage name or an inline {{kind, recipe}}, got {item!r}")
            arms[str(arm)] = out
        self.arms = arms
        for key, value in (self.defaults or {}).items():
            if key not in STAGE_KINDS:
                raise ConfigError(f"defaults.{key}: not a stage kind ({', '.join(STAGE_KINDS)})")
            if not isinstance(value, dict):
                raise ConfigError(f"defaults.{key}: expected a recipe mapping, got {value!r}")

    # --- resolution ------------------------------------------------------------------------------

    def stage_of(self, arm: str, index: int) -> tuple[str, StageSpec]:
        """(name, spec) of an arm's index-th stage; inline stages are named ``<arm>-<index>``."""
        item = self.arms[arm][index]
        if isinstance(item, str):
            return item, self.stages[item]
        return f"{arm}-{index + 1}", item

    def stage_recipe(self, spec: StageSpec, *, parent_model: str | None, seed: int | None, output_dir: str) -> dict:
        """The full recipe of one stage instance: defaults < stage recipe < hand-off, seed, output_dir."""
        recipe = deep_merge(self.defaults.get(spec.kind, {}), spec.recipe)
        if spec.kind == "evaluate":
            if parent_model is not None:
                recipe["model"] = parent_model
            return recipe
        model = dict(recipe.get("model") or {})
        if parent_model is not None:
            if model.get("init") == "scratch":
                model.pop("tokenizer", None)  # the scratch tokenizer now lives in the parent folder
            for key in SCRATCH_ONLY_KEYS:
                model.pop(key, None)
            model.update(init="pretrained", path=parent_model)
        recipe["model"] = model
        train = dict(recipe.get("train") or {})
        train["output_dir"] = output_dir
        if seed is not None:
            train["seed"] = seed
        recipe["train"] = train
        return recipe

    def reference(self) -> str:
        if self.report.reference_arm:
            return self.report.reference_arm
        return "ft_only" if "ft_only" in self.arms else next(iter(self.arms))

    def validate(self) -> None:
        if not self.arms:
            raise ConfigError("arms: at least one arm is required")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is required")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: duplicates in {self.seeds}")
        if self.report.reference_arm is not None and self.report.reference_arm not in self.arms:
            raise ConfigError(
                f"report.reference_arm: {self.report.reference_arm!r} is not an arm ({', '.join(self.arms)})"
            )
        for name, path in self.evaluation.lm_sets.items():
            if is_hub_spec(path):  # read when evaluated (the hub may need the network); its form checked here
                try:
                    parse_hub_spec(path)
                except ValueError as exc:
                    raise ConfigError(f"evaluation.lm_sets.{name}: {exc}") from None
            elif not isinstance(path, str) or not Path(path).exists():
                raise ConfigError(f"evaluation.lm_sets.{name}: file not found: {path}")
        checked: set[tuple[str, bool]] = set()
        for arm, items in self.arms.items():
            model_kind = None  # kind of the last stage that produced a model (evaluate passes its input on)
            for i in range(len(items)):
                name, spec = self.stage_of(arm, i)
                where = f"arms.{arm}[{i}] ({name}, {spec.kind})"
                if model_kind == "finetune" and spec.kind in ("pretrain", "evaluate", "merge"):
                    raise ConfigError(
                        f"{where}: cannot follow a finetune stage (a fine-tuned task model is not a "
                        "language model to pretrain, merge or score)"
                    )
                if spec.kind != "evaluate":
                    model_kind = spec.kind
                first = i == 0
                if (name, first) in checked and isinstance(items[i], str):
                    continue
                checked.add((name, first))
                self._validate_stage(spec, first=first, where=where)

    def _validate_stage(self, spec: StageSpec, *, first: bool, where: str) -> None:
        recipe = self.stage_recipe(
            spec,
            parent_model=None if first else PARENT_PLACEHOLDER,
            seed=self.seeds[0] if spec.kind in self.seeded_kinds else None,
            output_dir=str(Path(self.output_dir) / "stages" / "_validate"),
        )
        model = recipe.get("model")
        path = model if spec.kind == "evaluate" else (model or {}).get("path")
        if first and path == PREVIOUS:
            raise ConfigError(
                f"{where}: model path {PREVIOUS!r} in the first stage of an arm (there is no previous stage)"
            )
        if first and spec.kind == "evaluate" and not path:
            raise ConfigError(f"{where}: an evaluate stage that starts an arm needs `model`")
        try:
            load_recipe(recipe_class(spec.kind), data=recipe)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def recipe_class(kind: str) -> type:
    if kind == "pretrain":
        from .pretrain import PretrainConfig

        return PretrainConfig
    if kind == "finetune":
        from .finetune import FinetuneConfig

        return FinetuneConfig
    if kind == "evaluate":
        return EvaluateStageConfig
    if kind == "merge":
        from .merge import MergeConfig

        return MergeConfig
    raise ConfigError(f"kind: {kind!r} is not one of {', '.join(STAGE_KINDS)}")


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base`` (mappings recursively; anything else replaced). Copies."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = deep_merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def sample_data_dir() -> str:
    """Folder of the bundled sample data (``lmadapt/sample_data``)."""
    from importlib.resources import files

    return str(files("lmadapt") / "sample_data")


def substitute_vars(data: Any, variables: dict[str, Any], where: str = "") -> Any:
    """Replace ``${name}`` in every string; a string that is just ``${name}`` takes the value as is."""
    if isinstance(data, dict):
        return {k: substitute_vars(v, variables, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_vars(v, variables, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data
    whole = _VAR.fullmatch(data)

    def value(name: str) -> Any:
        if name not in variables:
            raise ConfigError(
                f"{where}: undefined variable ${{{name}}} (define it under `vars:`; known: "
                f"{', '.join(sorted(variables)) or 'none'})"
            )
        return variables[name]

    if whole:
        return value(whole.group(1))
    return _VAR.sub(lambda m: str(value(m.group(1))), data)


def load_pipeline(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    data: dict | None = None,
    variables: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Read a pipeline YAML (or ``data``), apply ``key=value`` overrides and ``${var}`` values, validate."""
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    where = f"{path}: " if path is not None else ""
    try:
        raw = apply_overrides(raw, overrides or [])
        if not isinstance(raw.get("vars", {}) or {}, dict):
            raise ConfigError("vars: expected a mapping of name: value")
        env: dict[str, Any] = {"sample_data": sample_data_dir()}
        env.update(raw.get("vars") or {})
        env.update(variables or {})
        env = {k: substitute_vars(v, env, f"vars.{k}") for k, v in env.items()}
        if "output_dir" in raw:
            env.setdefault("output_dir", substitute_vars(raw["output_dir"], env, "output_dir"))
        body = {k: v for k, v in raw.items() if k != "vars"}
        body = substitute_vars(body, env)
        body["vars"] = {k: v for k, v in env.items() if k != "sample_data"}
        cfg = from_dict(PipelineConfig, body)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return cfg
