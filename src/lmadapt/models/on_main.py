"""Load a model's weights on the main process only, for a sharded run (``train.sharding: fsdp``).

    model = model_on_main(lambda: task.load_model(base, space, cfg), "loading the model")
    loaded = load_model(cfg.model, weights_on_main=True)       # models.load, through loaded_on_main

Why: before sharding, every process of a job used to hold the whole model in host RAM (an 8B model
on an 8-GPU node: 8 x 32 GB). Here the main process alone loads the checkpoint (or initialises a
scratch model); the others get an *empty* model of the same class, config and dtype on the meta
device (no memory), built from the main process's config, so the checkpoint is never read twice
and every size change made while loading (a grown vocabulary, a task head) is already in it.
:func:`lmadapt.train.fsdp.shard_model` then shards both alike and fills every process's shards
from the main process's weights (``set_model_state_dict(..., broadcast_from_rank0=True)``).

What is done to the model between loading and sharding (LoRA adapters, ``config`` edits) runs on
the empty model too: it must change structure only, and the values come from the main process.
With one process these are plain calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from lmadapt.runtime import dist

_FLAG = "_lmadapt_weights_on_main"


def empty_model(cls, config, dtype):
    """A model of class ``cls`` built from ``config`` on the meta device: shapes, no storage."""
    import torch

    with torch.device("meta"):
        return cls._from_config(config, dtype=dtype)


def share_from_main(model):
    """``model`` on the main process; on the others an empty copy of it (:func:`empty_model`).
    A collective: every process calls it, the others with ``model=None``. Both are marked so that
    sharding fills them from the main process (:func:`weights_on_main`)."""
    if dist.world_size() == 1:
        return model
    info = dist.broadcast((type(model), model.config, model.dtype) if dist.is_main_process() else None)
    if not dist.is_main_process():
        model = empty_model(*info)
    setattr(model, _FLAG, True)
    return model


def model_on_main(build: Callable[[], Any], what: str):
    """``build()`` run by the main process alone (a failure there stops every process with a
    message); the others wait and get an empty model of the same class and config."""
    if dist.world_size() == 1:
        return build()
    model = dist.main_first(build, what, per_node=False, others=lambda: None)
    return share_from_main(model)


def loaded_on_main(load: Callable[[], Any], what: str):
    """Like :func:`model_on_main` for a result with a ``.model`` (models.load's LoadedModel): the
    rest of it (tokenizer, objective, source) is sent to the others as it is."""
    if dist.world_size() == 1:
        return load()
    loaded = dist.main_first(load, what, per_node=False, others=lambda: None)
    rest = dist.broadcast(dataclasses.replace(loaded, model=None) if dist.is_main_process() else None)
    return dataclasses.replace(rest, model=share_from_main(loaded.model if loaded is not None else None))


def weights_on_main(model) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) was loaded by :func:`share_from_main`:
    its weights are on the main process, the other processes hold an empty (meta) copy."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, _FLAG, False))


__all__ = ["empty_model", "loaded_on_main", "model_on_main", "share_from_main", "weights_on_main"]
