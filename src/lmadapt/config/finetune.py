"""The recipe of `lmadapt finetune`: base model (+ adapter) + LoRA + labeled data + task + loop.

    model: {path: runs/dapt, max_length: 256}          # a folder, hub id, or a `lmadapt pretrain` output
    data:  {train: train.jsonl, dev: dev.jsonl, label_field: label, max_examples: 300}
    task:  {type: classification, problem: single_label}
    train: {epochs: 5, lr: 3e-5, early_stopping_patience: 2, metric: macro_f1}

Everything is validated here, before a model or a record is loaded.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import ConfigError, opt
from .hub import is_dataset_repo, is_hub_spec, parse_hub_spec
from .model import LoraConfig, ModelConfig
from .tasks import ExtractionConfig, InstructionConfig, QAConfig, check_qa_window
from .train import TrainConfig

TASK_TYPES = ("classification", "extraction", "qa", "instruction")
ADAPTER_FILE = "adapter_config.json"
# model.max_length when the recipe leaves it null: each task's own default (the values its old
# per-task key had, so a recipe that sets no length behaves as before).
TASK_MAX_LENGTH = {"classification": 512, "extraction": 512, "qa": 384, "instruction": 1024}
MIN_MAX_LENGTH = 8
# Task sections that used to hold their own max_length (deprecated; folded into model.max_length).
LENGTH_SECTIONS = ("extraction", "qa", "instruction")

# Scalar metrics a recipe may select per classification problem (first = the `auto` choice).
PROBLEM_METRICS = {
    "single_label": ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "loss"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss"),
    "regression": ("mse", "rmse", "mae", "pearson", "spearman", "loss"),
}


@dataclass
class FinetuneModelConfig(ModelConfig):
    """The model to fine-tune: a base folder or hub id, optionally with a LoRA adapter on top."""

    adapter: str | None = opt(
        None,
        "LoRA adapter folder (e.g. a `lmadapt pretrain` output with lora) applied to `path`; "
        "null: taken from `path` itself when `path` is an adapter folder",
    )
    adapter_mode: Literal["stack", "continue"] = opt(
        "stack",
        "stack: merge the adapter into the base, then train (new LoRA if lora.enabled, else all weights); "
        "continue: keep training that adapter (its own r/targets; the `lora` section is ignored), new head trained in full",
    )
    max_length: int | None = opt(
        None,
        "tokens per example, special tokens included (qa: per window; instruction: per "
        "packed block and generation prompt); longer ones stop the run unless "
        "data.allow_truncation; null: the task's default (classification 512, "
        "extraction 512, qa 384, instruction 1024)",
    )

    def __post_init__(self):
        super().__post_init__()
        _check_min_length(self.max_length, "max_length")


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The optimisation loop, evaluated on the dev set every epoch; the best epoch is kept."""

    epochs: float = opt(3.0, "passes over the training data (ignored when max_steps is set)")
    lr: float = opt(5e-5, "peak learning rate (AdamW); ~2e-5..5e-5 full fine-tuning, ~1e-4..5e-4 LoRA")
    warmup_ratio: float = opt(0.1, "fraction of steps spent warming up (ignored if warmup_steps > 0)")
    output_dir: str = opt("runs/finetune", "output folder (model, tokenizer, recipe, metrics, checkpoints)")
    metric: str = opt(
        "auto",
        "dev metric that picks the best epoch (and drives early stopping): auto = macro_f1 "
        "(single_label), micro_f1 (multi_label), mse (regression), the task's own otherwise; or 'loss'",
    )
    early_stopping_patience: int | None = opt(
        None, "stop after this many epochs without dev improvement (null: run all epochs)"
    )
    early_stopping_threshold: float = opt(0.0, "smallest change of the metric that counts as an improvement")
    keep_checkpoints: bool = opt(
        False, "keep the per-epoch checkpoints after a successful run (they hold optimizer state)"
    )
    eval_batch_size: int | None = opt(None, "examples per forward pass in evaluation and predict (default: batch_size)")
    group_by_length: bool = opt(True, "batch examples of similar length together (less padding; batches stay shuffled)")

    def __post_init__(self):
        super().__post_init__()
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"early_stopping_patience: must be >= 1, got {self.early_stopping_patience}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size: must be >= 1, got {self.eval_batch_size}")


@dataclass
class LabeledDataConfig:
    """Labeled examples: train/dev/test files, fields, splitting, label budget and class balance."""

    train: str = opt(
        doc="training file (.jsonl, .csv, .tsv, .parquet; .gz too), a save_to_disk split folder, or a hub dataset's split: "
        "hub:owner/name[@revision][[subset]][:split], e.g. hub:nyu-mll/glue[sst2]:train"
    )
    dev: str | None = opt(
        None, "dev file or hub split (model selection, early stopping); null: split off train (dev_fraction)"
    )
    test: str | None = opt(
        None,
        "test file or hub split (reported, never used for selection); null: split off train when test_fraction > 0",
    )
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet"] = opt("auto", "reader; auto decides from the suffix")
    text_field: str = opt("text", "classification: field holding the text")
    text_pair_field: str | None = opt(None, "classification: optional second text (sentence pairs: NLI, paraphrase)")
    label_field: str = opt(
        "label",
        "classification: field holding the label (a list, or a string split on "
        "label_separator, for multi_label; a number for regression)",
    )
    label_separator: str | None = opt(
        None, "multi_label: split string labels on this separator (lists are taken as is)"
    )
    dev_fraction: float = opt(0.1, "fraction of train held out as dev (stratified by label) when `dev` is null")
    test_fraction: float = opt(0.0, "fraction of train held out as test when `test` is null")
    split_seed: int = opt(
        0, "seed of the dev/test split (fixed by default so every run is judged on the same examples)"
    )
    max_examples: int | None = opt(
        None,
        "label budget: a stratified subsample of train (after splitting); nested "
        "and identical across arms for a given subset_seed",
    )
    subset_seed: int | None = opt(None, "seed of the max_examples subsample (default: train.seed)")
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad record (malformed line, missing field, empty text): stop with file:line, or skip and count"
    )
    allow_truncation: bool = opt(False, "cut examples longer than model.max_length (counted) instead of stopping")
    class_weights: Literal["none", "balanced"] = opt("none", "balanced: weight the loss by inverse class frequency")
    balanced_sampling: bool = opt(False, "draw training batches with equal class probability (with replacement)")

    def __post_init__(self):
        if not 0 <= self.dev_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError("dev_fraction, test_fraction: must be in [0, 1)")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"dev_fraction + test_fraction ({self.dev_fraction} + {self.test_fraction}) leave no training data"
            )
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1, got {self.max_examples}")
        if self.class_weights == "balanced" and self.balanced_sampling:
            raise ConfigError(
                "class_weights: balanced together with balanced_sampling corrects the imbalance twice; choose one"
            )


@dataclass
class TaskConfig:
    """Which task, and for classification what kind of label."""

    type: Literal["classification", "extraction", "qa", "instruction"] = opt("classification", "the task")
    problem: Literal["single_label", "multi_label", "regression"] = opt(
        "single_label", "classification: one label per text, any number of labels per text, or a number"
    )
    threshold: float = opt(0.5, "multi_label: a label is predicted when its probability is at least this")
    top_k: int = opt(3, "classification predict: how many most probable labels to list")

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold: must be in (0, 1), got {self.threshold}")
        if self.top_k < 1:
            raise ConfigError(f"top_k: must be >= 1, got {self.top_k}")


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning on labeled examples."""

    model: FinetuneModelConfig = opt(doc="the model to fine-tune")
    data: LabeledDataConfig = opt(doc="labeled examples")
    task: TaskConfig = opt(doc="task and label kind", factory=TaskConfig)
    lora: LoraConfig = opt(doc="LoRA adapters (off: full fine-tuning)", factory=LoraConfig)
    train: FinetuneTrainConfig = opt(doc="optimisation loop", factory=FinetuneTrainConfig)
    extraction: ExtractionConfig = opt(doc="task type extraction: token classification", factory=ExtractionConfig)
    qa: QAConfig = opt(doc="task type qa: extractive question answering", factory=QAConfig)
    instruction: InstructionConfig = opt(
        doc="task type instruction: prompt/response fine-tuning", factory=InstructionConfig
    )

    def __post_init__(self):
        # Resolved at load, so every reader (tasks, the saved recipe, predict) sees one number.
        self.model.max_length = resolve_max_length(self)
        if self.task.type == "qa":
            try:
                check_qa_window(self.qa, self.model.max_length, "model.max_length")
            except ConfigError as exc:
                raise ConfigError(f"qa.{exc}") from None

    @property
    def max_length(self) -> int:
        """Tokens per example (the resolved ``model.max_length``); what the tasks read."""
        return self.model.max_length

    def validate(self) -> None:
        m, d, t = self.model, self.data, self.task
        for key in ("train", "dev", "test"):
            p = getattr(d, key)
            if is_hub_spec(p):  # loaded (and its split checked) when read: the hub may need the network
                try:
                    spec = parse_hub_spec(p)
                except ValueError as exc:
                    raise ConfigError(f"data.{key}: {exc}") from None
                if not is_dataset_repo(spec.repo):
                    raise ConfigError(
                        f"data.{key}: {spec.repo!r} is neither a hub dataset id (owner/name) nor a local dataset folder"
                    )
            elif p is not None and not (Path(p).is_file() or _is_datasets_folder(Path(p))):
                raise ConfigError(
                    f"data.{key}: file not found: {p}"
                    + (" (a folder, but not a save_to_disk split folder)" if Path(p).is_dir() else "")
                )
        if m.init != "pretrained":
            raise ConfigError(
                "model.init: fine-tuning starts from a model folder; build a scratch model with "
                "`lmadapt pretrain` first"
            )
        if m.objective != "auto":
            raise ConfigError("model.objective: not used by fine-tuning (the task decides the head); leave it 'auto'")
        _check_model_path(m.path, "model.path")
        if m.adapter is not None:
            if not (Path(m.adapter) / ADAPTER_FILE).is_file():
                raise ConfigError(f"model.adapter: {m.adapter} is not a LoRA adapter folder (no {ADAPTER_FILE})")
        continuing = m.adapter_mode == "continue" and (m.adapter or (Path(m.path) / ADAPTER_FILE).is_file())
        if self.lora.quantize != "none" and (m.adapter or (Path(m.path) / ADAPTER_FILE).is_file()):
            raise ConfigError(
                f"lora.quantize: {self.lora.quantize} quantises a plain base model; model.path/adapter name a "
                "LoRA adapter (merge it first: `lmadapt merge`, or finetune with quantize: none)"
            )
        if self.lora.quantize != "none" and self.train.sharding != "none":
            raise ConfigError(
                f"lora.quantize: {self.lora.quantize} is not supported with train.sharding: {self.train.sharding}"
            )
        if self.lora.merge and not self.lora.enabled and not continuing:
            raise ConfigError("lora.merge: only meaningful with lora.enabled: true (or a continued adapter)")
        if m.adapter is not None and (Path(m.path) / ADAPTER_FILE).is_file():
            raise ConfigError(
                f"model.adapter: model.path {m.path} is itself an adapter folder; give its base as "
                "model.path, or drop model.adapter"
            )
        if t.type != "classification" and t.problem != "single_label":
            raise ConfigError(f"task.problem: {t.problem!r} applies to classification only, not {t.type!r}")
        if t.type != "classification" and (d.class_weights != "none" or d.balanced_sampling):
            raise ConfigError(f"data.class_weights / data.balanced_sampling: classification only, not {t.type!r}")
        if t.problem == "regression":
            if d.class_weights != "none" or d.balanced_sampling:
                raise ConfigError("data.class_weights / data.balanced_sampling: regression has no classes")
            if d.label_separator:
                raise ConfigError("data.label_separator: multi_label only, not regression")
        if d.label_separator is not None and t.problem != "multi_label":
            raise ConfigError(
                f"data.label_separator: only meaningful with task.problem: multi_label, not {t.problem!r}"
            )
        if t.type == "classification":
            allowed = PROBLEM_METRICS[t.problem]
            if self.train.metric not in ("auto",) + allowed:
                raise ConfigError(
                    f"train.metric: {self.train.metric!r} is not a {t.problem} metric "
                    f"(choose from: auto, {', '.join(allowed)})"
                )
        if self.train.early_stopping_patience and d.dev is None and d.dev_fraction == 0:
            raise ConfigError("train.early_stopping_patience: needs a dev set (data.dev or data.dev_fraction > 0)")
        if self.train.max_tokens is not None:
            raise ConfigError(
                "train.max_tokens: fine-tuning counts examples, not tokens; use train.epochs or train.max_steps"
            )


_noticed: set[str] = set()


def _deprecated(key: str) -> None:
    """Print a deprecation notice once per process (a pipeline loads the same recipe many times)."""
    if key not in _noticed:
        _noticed.add(key)
        print(f"{key} is deprecated: use model.max_length", file=sys.stderr)


def _check_min_length(value: int | None, key: str) -> None:
    if value is not None and value < MIN_MAX_LENGTH:
        raise ConfigError(f"{key}: must be at least {MIN_MAX_LENGTH}, got {value}")


def resolve_max_length(cfg: FinetuneConfig) -> int:
    """model.max_length, else the chosen task's deprecated ``<task>.max_length``, else the task's default.

    The deprecated key is folded into model.max_length (and cleared), so the resolved recipe names
    one length; both set and different is an error naming both. Another task's section is not read
    (as before), but its length key still draws the notice."""
    length = cfg.model.max_length
    for name in LENGTH_SECTIONS:
        sec = getattr(cfg, name)
        if sec.max_length is None:
            continue
        _deprecated(f"{name}.max_length")
        if name != cfg.task.type:
            continue
        if length is not None and length != sec.max_length:
            raise ConfigError(
                f"model.max_length ({length}) and {name}.max_length ({sec.max_length}) disagree; "
                f"keep model.max_length only ({name}.max_length is deprecated)"
            )
        _check_min_length(sec.max_length, f"{name}.max_length")
        length, sec.max_length = sec.max_length, None
    return length if length is not None else TASK_MAX_LENGTH[cfg.task.type]


def upgrade_saved_recipe(raw: dict) -> dict:
    """A fine-tuned folder's saved recipe in today's keys. Folders written before model.max_length
    covered every task hold each task's own max_length, and a model.max_length that only
    classification read; the chosen task's length becomes model.max_length, without a notice (the
    user never wrote those keys), and the other tasks' lengths are dropped (they were never read)."""
    raw = copy.deepcopy(raw)
    task_type = (raw.get("task") or {}).get("type", "classification")
    for name in LENGTH_SECTIONS:
        sec = raw.get(name)
        if isinstance(sec, dict) and sec.get("max_length") is not None:
            length = sec.pop("max_length")
            if name == task_type and isinstance(raw.get("model"), dict):
                raw["model"]["max_length"] = length
    return raw


def _is_datasets_folder(p: Path) -> bool:
    """A ``save_to_disk`` folder (one split, or a DatasetDict the reader will ask to narrow)."""
    return p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file())


def _check_model_path(path: str, key: str) -> None:
    """A local path that does not exist is an error; a hub id (org/name) is left to the loader."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{key}: {path} is a file; give the model folder")
        if not (p / "config.json").is_file() and not (p / ADAPTER_FILE).is_file():
            raise ConfigError(f"{key}: {path} has neither config.json nor {ADAPTER_FILE}: not a model folder")
        if (p / ADAPTER_FILE).is_file():
            try:
                json.loads((p / ADAPTER_FILE).read_text())
            except ValueError as exc:
                raise ConfigError(f"{key}: {p / ADAPTER_FILE} is not valid JSON ({exc})") from None
        return
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local:
        raise ConfigError(f"{key}: folder not found: {path}")
