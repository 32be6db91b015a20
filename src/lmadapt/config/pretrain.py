"""The recipe of `lmadapt pretrain`: model + LoRA + corpus + training loop."""

from __future__ import annotations

import glob as globlib
import json
from dataclasses import dataclass
from pathlib import Path

from .base import ConfigError, opt
from .data import CorpusConfig
from .hub import is_dataset_repo
from .model import LoraConfig, ModelConfig
from .train import TrainConfig
from .vocab import VocabConfig

# Encoder-only model types: masked LM is their pretraining objective; everything else is causal.
ENCODER_MODEL_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "camembert",
    "modernbert",
    "mpnet",
    "xlm",
    "flaubert",
    "ernie",
    "megatron-bert",
    "roformer",
}


def check_source_paths(sources, section: str) -> None:
    """A missing corpus is a recipe error, reported before any model loads. A hub dataset is
    checked when it is read (the hub may need the network); here only the shape of its id."""
    for i, src in enumerate(sources):
        p = src.path
        if src.format == "hub":
            if not is_dataset_repo(p):
                raise ConfigError(
                    f"{section}[{i}].path: {p!r} is neither a hub dataset id (owner/name) nor a local dataset folder"
                )
        elif any(ch in p for ch in "*?["):
            if not globlib.glob(p, recursive=True):
                raise ConfigError(f"{section}[{i}].path: no file matches {p!r}")
        elif not Path(p).exists():
            raise ConfigError(f"{section}[{i}].path: file not found: {p}")


def _config_json(path: str | None) -> dict:
    """A local model folder's config.json ({} for hub ids, GGUF, or an unreadable file)."""
    cfg = Path(path) / "config.json" if path else None
    if cfg is None or not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_type_of(path: str | None) -> str | None:
    """model_type from a local folder's config.json (None for hub ids or GGUF)."""
    return _config_json(path).get("model_type")


def check_context(path: str | None, block_size: int, key: str) -> None:
    """Blocks longer than a local model's positions, refused with the recipe (before any folder is
    written, and for every stage of a pipeline up front); models.load.check_block_size checks the
    loaded model again (hub models, scratch presets)."""
    conf = _config_json(path)
    limit = conf.get("max_position_embeddings") or conf.get("n_positions")
    if isinstance(limit, int) and 0 < limit < block_size:
        raise ConfigError(
            f"{key}: {block_size} tokens is more than the model's context of {limit} positions "
            f"(max_position_embeddings in {Path(path) / 'config.json'}); use {key} <= {limit}"
        )


@dataclass
class PretrainConfig:
    """Continued pretraining (or pretraining from scratch) on unlabeled text."""

    model: ModelConfig = opt(doc="the model to train")
    lora: LoraConfig = opt(doc="LoRA adapters (off: full training)", factory=LoraConfig)
    data: CorpusConfig = opt(doc="training and held-out text", factory=CorpusConfig)
    train: TrainConfig = opt(doc="optimisation loop", factory=TrainConfig)
    vocab: VocabConfig = opt(
        doc="domain vocabulary extension and embedding training (off by default)", factory=VocabConfig
    )

    def validate(self) -> None:
        if not self.data.sources:
            raise ConfigError("data.sources: at least one training source is required")
        check_source_paths(self.data.sources, "data.sources")
        check_source_paths(self.data.eval_sources, "data.eval_sources")
        m = self.model
        if m.init == "pretrained" and Path(m.path).exists() and not Path(m.path).is_dir():
            raise ConfigError(f"model.path: {m.path} is a file; give the model folder (and gguf_file for a GGUF file)")
        if m.init == "scratch" and not Path(m.tokenizer).exists():
            raise ConfigError(f"model.tokenizer: tokenizer folder not found: {m.tokenizer}")
        if m.init == "pretrained" and not m.gguf_file:
            check_context(m.path, self.data.block_size, "data.block_size")
        mt = m.arch if m.init == "scratch" else model_type_of(m.path)
        if mt is not None:
            is_encoder = (mt == "bert") if m.init == "scratch" else mt in ENCODER_MODEL_TYPES
            if m.objective == "masked" and not is_encoder:
                raise ConfigError(
                    f"model.objective: masked LM needs an encoder (BERT-style) model; {mt!r} is decoder-only "
                    "and attends causally, so it cannot see the right context of a masked token. Use objective: causal."
                )
            if m.objective == "causal" and is_encoder:
                raise ConfigError(
                    f"model.objective: {mt!r} is an encoder without a causal LM head; use objective: masked (its pretraining objective)"
                )
        if self.lora.merge and not self.lora.enabled:
            raise ConfigError("lora.merge: only meaningful with lora.enabled: true")
        if self.lora.quantize != "none" and self.train.sharding != "none":
            raise ConfigError(
                f"lora.quantize: {self.lora.quantize} is not supported with train.sharding: {self.train.sharding}"
            )
        self._validate_vocab()

    def _validate_vocab(self) -> None:
        v = self.vocab
        if v.active and self.model.init == "scratch":
            raise ConfigError(
                "vocab.extend: extends a pretrained model's tokenizer; a scratch model trains its own "
                "(`lmadapt tokenizer train`)"
            )
        if v.tokenizer and not Path(v.tokenizer).is_dir():
            raise ConfigError(f"vocab.tokenizer: folder not found: {v.tokenizer}")
        if (v.active or v.embedding_lr) and self.lora.enabled and not self.lora.train_embeddings:
            # Otherwise the new rows would never train, and an adapter folder would not carry them.
            raise ConfigError(
                "lora.train_embeddings: must be true with vocab.extend / vocab.tokenizer / "
                "vocab.embedding_lr under LoRA (the embeddings and LM head train in full and are "
                "saved with the adapter)"
            )
