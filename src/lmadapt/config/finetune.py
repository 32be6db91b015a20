"""The recipe of `lmadapt finetune`: base model (+ adapter) + LoRA + labeled data + task + loop.

    model: {path: runs/dapt, max_length: 256}          # a folder, hub id, or a `lmadapt pretrain` output
    data:  {train: train.jsonl, dev: dev.jsonl, label_field: label, max_examples: 300}
    task:  {type: classification, problem: single_label}
    train: {epochs: 5, lr: 3e-5, early_stopping_patience: 2, metric: macro_f1}

Everything is validated here, before a model or a record is loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import ConfigError, opt
from .hub import is_dataset_repo, is_hub_spec, parse_hub_spec
from .model import LoraConfig, ModelConfig
from .tasks import ExtractionConfig, InstructionConfig, QAConfig
from .train import TrainConfig

TASK_TYPES = ("classification", "extraction", "qa", "instruction")
ADAPTER_FILE = "adapter_config.json"

# Scalar metrics a recipe may select per classification problem (first = the `auto` choice).
PROBLEM_METRICS = {
    "single_label": ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "loss"),
    "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss"),
    "regression": ("mse", "rmse", "mae", "pearson", "spearman", "loss"),
}


@dataclass
class FinetuneModelConfig(ModelConfig):
    """The model to fine-tune: a base folder or hub id, optionally with a LoRA adapter on top."""

    adapter: str | None = opt(None, "LoRA adapter folder (e.g. a `lmadapt pretrain` output with lora) applied to `path`; "
                                    "null: taken from `path` itself when `path` is an adapter folder")
    adapter_mode: Literal["stack", "continue"] = opt(
        "stack", "stack: merge the adapter into the base, then train (new LoRA if lora.enabled, else all weights); "
                 "continue: keep training that adapter (its own r/targets; the `lora` section is ignored), new head trained in full")
    max_length: int = opt(512, "classification: tokens per example (special tokens included); longer ones need "
                                  "data.allow_truncation (extraction/qa/instruction have their own max_length)")

    def __post_init__(self):
        super().__post_init__()
        if self.max_length < 8:
            raise ConfigError(f"max_length: must be at least 8, got {self.max_length}")


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The optimisation loop, evaluated on the dev set every epoch; the best epoch is kept."""

    epochs: float = opt(3.0, "passes over the training data (ignored when max_steps is set)")
    lr: float = opt(5e-5, "peak learning rate (AdamW); ~2e-5..5e-5 full fine-tuning, ~1e-4..5e-4 LoRA")
    warmup_ratio: float = opt(0.1, "fraction of steps spent warming up (ignored if warmup_steps > 0)")
    output_dir: str = opt("runs/finetune", "output folder (model, tokenizer, recipe, metrics, checkpoints)")
    metric: str = opt("auto", "dev metric that picks the best epoch (and drives early stopping): auto = macro_f1 "
                              "(single_label), micro_f1 (multi_label), mse (regression), the task's own otherwise; or 'loss'")
    early_stopping_patience: int | None = opt(None, "stop after this many epochs without dev improvement (null: run all epochs)")
    early_stopping_threshold: float = opt(0.0, "smallest change of the metric that counts as an improvement")
    keep_checkpoints: bool = opt(False, "keep the per-epoch checkpoints after a successful run (they hold optimizer state)")
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

    train: str = opt(doc="training file (.jsonl, .csv, .tsv, .parquet; .gz too), a save_to_disk split folder, or a hub dataset's split: "
                         "hub:owner/name[@revision][[subset]][:split], e.g. hub:nyu-mll/glue[sst2]:train")
    dev: str | None = opt(None, "dev file or hub split (model selection, early stopping); null: split off train (dev_fraction)")
    test: str | None = opt(None, "test file or hub split (reported, never used for selection); null: split off train when test_fraction > 0")
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet"] = opt("auto", "reader; auto decides from the suffix")
    text_field: str = opt("text", "classification: field holding the text")
    text_pair_field: str | None = opt(None, "classification: optional second text (sentence pairs: NLI, paraphrase)")
    label_field: str = opt("label", "classification: field holding the label (a list, or a string split on "
                                    "label_separator, for multi_label; a number for regression)")
    label_separator: str | None = opt(None, "multi_label: split string labels on this separator (lists are taken as is)")
    dev_fraction: float = opt(0.1, "fraction of train held out as dev (stratified by label) when `dev` is null")
    test_fraction: float = opt(0.0, "fraction of train held out as test when `test` is null")
    split_seed: int = opt(0, "seed of the dev/test split (fixed by default so every run is judged on the same examples)")
    max_examples: int | None = opt(None, "label budget: a stratified subsample of train (after splitting); nested "
                                         "and identical across arms for a given subset_seed")
    subset_seed: int | None = opt(None, "seed of the max_examples subsample (default: train.seed)")
    on_error: Literal["raise", "skip"] = opt("raise", "bad record (malformed line, missing field, empty text): stop with "
                                                      "file:line, or skip and count")
    allow_truncation: bool = opt(False, "cut examples longer than model.max_length (counted) instead of stopping")
    class_weights: Literal["none", "balanced"] = opt("none", "balanced: weight the loss by inverse class frequency")
    balanced_sampling: bool = opt(False, "draw training batches with equal class probability (with replacement)")

    def __post_init__(self):
        if not 0 <= self.dev_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError("dev_fraction, test_fraction: must be in [0, 1)")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ConfigError(f"dev_fraction + test_fraction ({self.dev_fraction} + {self.test_fraction}) leave no training data")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1, got {self.max_examples}")
        if self.class_weights == "balanced" and self.balanced_sampling:
            raise ConfigError("class_weights: balanced together with balanced_sampling corrects the imbalance twice; choose one")


@dataclass
class TaskConfig:
    """Which task, and for classification what kind of label."""

    type: Literal["classification", "extraction", "qa", "instruction"] = opt("classification", "the task")
    problem: Literal["single_label", "multi_label", "regression"] = opt(
        "single_label", "classification: one label per text, any number of labels per text, or a number")
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
    instruction: InstructionConfig = opt(doc="task type instruction: prompt/response fine-tuning", factory=InstructionConfig)

    def validate(self) -> None:
        m, d, t = self.model, self.data, self.task
        for key in ("train", "dev", "test"):
            p = getattr(d, key)
            if is_hub_spec(p):   # loaded (and its split checked) when read: the hub may need the network
                try:
                    spec = parse_hub_spec(p)
                except ValueError as exc:
                    raise ConfigError(f"data.{key}: {exc}") from None
                if not is_dataset_repo(spec.repo):
                    raise ConfigError(f"data.{key}: {spec.repo!r} is neither a hub dataset id (owner/name) nor a local dataset folder")
            elif p is not None and not (Path(p).is_file() or _is_datasets_folder(Path(p))):
                raise ConfigError(f"data.{key}: file not found: {p}" + (
                    " (a folder, but not a save_to_disk split folder)" if Path(p).is_dir() else ""))
        if m.init != "pretrained":
            raise ConfigError("model.init: fine-tuning starts from a model folder; build a scratch model with "
                              "`lmadapt pretrain` first")
        if m.objective != "auto":
            raise ConfigError("model.objective: not used by fine-tuning (the task decides the head); leave it 'auto'")
        _check_model_path(m.path, "model.path")
        if m.adapter is not None:
            if not (Path(m.adapter) / ADAPTER_FILE).is_file():
                raise ConfigError(f"model.adapter: {m.adapter} is not a LoRA adapter folder (no {ADAPTER_FILE})")
        continuing = m.adapter_mode == "continue" and (m.adapter or (Path(m.path) / ADAPTER_FILE).is_file())
        if self.lora.quantize != "none" and (m.adapter or (Path(m.path) / ADAPTER_FILE).is_file()):
            raise ConfigError(f"lora.quantize: {self.lora.quantize} quantises a plain base model; model.path/adapter name a "
                              "LoRA adapter (merge it first: `lmadapt merge`, or finetune with quantize: none)")
        if self.lora.quantize != "none" and self.train.sharding != "none":
            raise ConfigError(f"lora.quantize: {self.lora.quantize} is not supported with train.sharding: {self.train.sharding}")
        if self.lora.merge and not self.lora.enabled and not continuing:
            raise ConfigError("lora.merge: only meaningful with lora.enabled: true (or a continued adapter)")
        if m.adapter is not None and (Path(m.path) / ADAPTER_FILE).is_file():
            raise ConfigError(f"model.adapter: model.path {m.path} is itself an adapter folder; give its base as "
                              "model.path, or drop model.adapter")
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
            raise ConfigError(f"data.label_separator: only meaningful with task.problem: multi_label, not {t.problem!r}")
        if t.type == "classification":
            allowed = PROBLEM_METRICS[t.problem]
            if self.train.metric not in ("auto",) + allowed:
                raise ConfigError(f"train.metric: {self.train.metric!r} is not a {t.problem} metric "
                                  f"(choose from: auto, {', '.join(allowed)})")
        if self.train.early_stopping_patience and d.dev is None and d.dev_fraction == 0:
            raise ConfigError("train.early_stopping_patience: needs a dev set (data.dev or data.dev_fraction > 0)")
        if self.train.max_tokens is not None:
            raise ConfigError("train.max_tokens: fine-tuning counts examples, not tokens; use train.epochs or train.max_steps")


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
