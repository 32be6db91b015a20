"""Checks of a model against what a command feeds it: weights that cannot be read, blocks longer
than its context. Each turns what was a traceback deep inside transformers (or silent misuse) into
one line naming the folder or the recipe key.

    with reading_weights(folder):                       # around any from_pretrained
        model = AutoModelForCausalLM.from_pretrained(folder)
    check_block_size(model, cfg.data.block_size, "data.block_size")
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from lmadapt.config.base import ConfigError

from .registry import POSITION_OFFSET


class ModelLoadError(ConfigError):
    """A model or tokenizer could not be found or read; the message says where we looked."""


def _damaged_weights(exc: BaseException) -> bool:
    """A weights file that cannot be parsed (cut short, overwritten): safetensors' own error, or
    torch's for a pickled ``pytorch_model.bin``."""
    import pickle

    return (
        type(exc).__name__ == "SafetensorError"
        or isinstance(exc, (pickle.UnpicklingError, EOFError))
        or "PytorchStreamReader" in str(exc)
    )


@contextlib.contextmanager
def reading_weights(where: str | Path):
    """Around any ``from_pretrained`` that reads weights: a damaged file is one ModelLoadError naming
    the folder, not a traceback from inside safetensors (every command that loads a model)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only damaged-file errors are translated, the rest re-raised
        if not _damaged_weights(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not read the model weights in {where}: {first} (the file is damaged or "
            "incomplete, e.g. a download or copy cut short: copy it again)"
        ) from exc


def context_length(model_or_config) -> int | None:
    """Positions the model can embed (``max_position_embeddings``, GPT-2's ``n_positions``), less
    :data:`registry.POSITION_OFFSET`; None when its config states no limit."""
    config = getattr(model_or_config, "config", model_or_config)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    return limit - POSITION_OFFSET.get(getattr(config, "model_type", None) or "", 0)


def check_block_size(model, block_size: int, key: str, where: str = "in its config.json") -> None:
    """Refuse blocks longer than the model's context: GPT-2 failed with an IndexError mid-run, and
    a RoPE model (Llama) silently trained on positions it was never built for."""
    limit = context_length(model)
    if limit is not None and block_size > limit:
        raise ConfigError(
            f"{key}: {block_size} tokens is more than the model's context of {limit} positions "
            f"(max_position_embeddings {where}); use {key} <= {limit}"
        )


__all__ = ["ModelLoadError", "check_block_size", "context_length", "reading_weights"]
