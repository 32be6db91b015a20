"""Typed, validated recipes: one small dataclass per concern."""

from .base import ConfigError, apply_overrides, from_dict, help_text, load_recipe, opt, to_dict
from .data import CorpusConfig, SourceConfig
from .model import LoraConfig, ModelConfig
from .pretrain import PretrainConfig
from .train import TrainConfig

__all__ = [
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "help_text",
    "load_recipe",
    "opt",
    "to_dict",
    "CorpusConfig",
    "SourceConfig",
    "LoraConfig",
    "ModelConfig",
    "PretrainConfig",
    "TrainConfig",
]
