"""A tiny causal LM trained through `run_training` on random token blocks (CPU, about a second)."""

from __future__ import annotations

import torch
from transformers import default_data_collator

from helpers import tiny_llama
from lmadapt.config.train import TrainConfig
from lmadapt.train.loop import run_training

VOCAB = 64


def toy_blocks(n: int = 64, length: int = 16, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def toy_config(out, **over) -> TrainConfig:
    kw = dict(
        output_dir=str(out),
        max_steps=8,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        log_every=4,
        report_to=[],
        seed=0,
        torch_threads=1,
    )
    kw.update(over)
    return TrainConfig(**kw)


def train_toy(out, model=None, blocks=None, **over):
    """(outcome, model) of a few steps of the tiny Llama on ``blocks``, checkpoints in ``out``."""
    model = model if model is not None else tiny_llama(VOCAB)
    model.train()
    outcome = run_training(
        model, None, blocks if blocks is not None else toy_blocks(), default_data_collator, toy_config(out, **over)
    )
    return outcome, outcome.trainer.model


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
