"""DeepSpeed ZeRO-3, as ``accelerate launch --use_deepspeed`` (or its ``--deepspeed_config_file``) sets it up.

The Trainer's DeepSpeed integration partitions the model's parameters over the processes when it
builds its engine; lmadapt loads the model whole before that (each process, as for data parallel)
and leaves the training step to DeepSpeed. What lmadapt does around the step must then treat the
model as partitioned, as it does an FSDP2 model (train/fsdp.py):

- a parameter is whole only inside its own module's forward (DeepSpeed gathers it in a pre-forward
  hook), so the fused LM loss runs inside the output head's forward (train/loss.py);
- every forward pass is a collective, so held-out scoring runs the same batches on every process
  (``lockstep``, train/lm_eval.py and runtime/dist.py);
- the final model is streamed to a plain transformers folder one gathered parameter at a time
  (train/fsdp_save.py), never the whole model on one process; a LoRA adapter is gathered whole.

Every stage loads its model whole (:func:`load_whole`), however many stages run in one process.
Tested on CPU (DeepSpeed's CPU accelerator with gloo; tests/train/test_zero3_training.py): every
stage, resume from DeepSpeed's own checkpoint layout (train/checkpoints.py), merge and evaluate.
"""

from __future__ import annotations

import functools
import json
import os
import weakref
from contextlib import contextmanager

# model (or peft wrapper) id -> the DeepSpeed engine partitioning it (weak: gone with the engine)
_ENGINES: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def deepspeed_launch() -> bool:
    """``accelerate launch`` with DeepSpeed (it sets ACCELERATE_USE_DEEPSPEED for the processes)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


def zero_stage() -> int | None:
    """The DeepSpeed ZeRO stage ``accelerate launch`` passes on: its config file's, else its flag's."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if path and os.path.isfile(path):
        try:
            with open(path) as fh:
                return int(json.load(fh).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return None  # DeepSpeed itself will report a config it cannot read
    raw = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip()
    return int(raw) if raw.isdigit() else None


def zero3_launch() -> bool:
    """A DeepSpeed ZeRO-3 launch: once the Trainer starts, the model's parameters are partitioned."""
    return deepspeed_launch() and zero_stage() == 3


def load_whole() -> None:
    """At the start of a stage: the models it loads are built whole, as the first stage's were.

    A Trainer's DeepSpeed config stays registered in transformers after its stage (accelerate's
    state keeps it alive), and while it is, ``from_pretrained``/``from_config`` build the model
    partitioned under ``deepspeed.zero.Init``. The next stage in the same process (``lmadapt run``)
    would then score its held-out sets before training on empty parameters, outside any engine.
    Every stage loads whole and lets its own Trainer partition; the next Trainer registers its
    config again. Outside a DeepSpeed launch there is nothing to forget."""
    if not deepspeed_launch():
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def is_partitioned(model) -> bool:
    """Whether ``model`` (or the DeepSpeed engine wrapping it) holds ZeRO-3 partitioned parameters
    (all of a ZeRO-3 model's parameters are, so the first one says)."""
    return hasattr(next(iter(model.parameters()), None), "ds_id")


def remember(trainer) -> None:
    """After a Trainer ran under ZeRO-3: note its engine, which :func:`release` asks to re-partition."""
    engine = getattr(trainer, "model_wrapped", None)
    if engine is None or not hasattr(engine, "empty_partition_cache") or not is_partitioned(engine):
        return
    for model in (trainer.model, getattr(engine, "module", None)):
        if model is not None:
            _ENGINES[id(model)] = engine


def release(model) -> None:
    """Partition again every parameter a forward pass outside the engine left whole.

    DeepSpeed frees a module's parameters after its forward only as far as its recorded training
    trace says they are not needed again soon (that trace expects a backward pass): after held-out
    scoring under ``no_grad`` the whole model would stay gathered on every process, which is just
    what ZeRO-3 is used to avoid. ``empty_partition_cache`` is DeepSpeed's call for this."""
    engine = _ENGINES.get(id(model))
    if engine is not None:
        engine.empty_partition_cache()


def releasing(fn):
    """Decorator for a scoring function ``fn(model, ...)``: :func:`release` the model afterwards."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        try:
            return fn(model, *args, **kwargs)
        finally:
            release(model)

    return wrapper


@contextmanager
def gathered(params, partitioned: bool = True):
    """The whole values of ``params`` (ZeRO-3 partitioned parameters) inside the block, on every
    process; a collective. ``partitioned=False``: nothing to gather."""
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


__all__ = [
    "deepspeed_launch",
    "gathered",
    "is_partitioned",
    "load_whole",
    "release",
    "releasing",
    "remember",
    "zero3_launch",
    "zero_stage",
]
