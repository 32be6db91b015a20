"""Learning-rate schedules for long continued pretraining, on transformers' own schedulers.

- ``cosine`` with ``min_lr_ratio`` > 0: transformers' ``cosine_with_min_lr`` (decays to a floor
  instead of zero, so a later stage can re-warm from a non-zero rate; Ibrahim et al. 2024).
- ``wsd``: ``warmup_stable_decay`` (Hu et al. 2024, MiniCPM): warmup, a constant peak, then a
  cosine decay over the last ``decay_fraction`` of ``max_steps`` to ``min_lr_ratio``. Its point is
  extension: a run that needs more tokens resumes from a checkpoint of its stable phase with a larger
  ``max_steps`` and keeps the peak rate, where a cosine run would have already decayed. The
  scheduler's saved state is only its step count (a LambdaLR's lambda is rebuilt from the recipe),
  so the resumed scheduler follows the new, longer shape. A wsd run therefore always saves a
  checkpoint at its last stable step (:class:`StableEndCheckpoint`), and a resume that changes
  ``max_steps`` resumes from the newest complete checkpoint of the old run's stable phase.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from ..config.base import ConfigError


def decay_steps(cfg, max_steps: int) -> int:
    return max(1, math.ceil(cfg.decay_fraction * max_steps))


def stable_end(cfg, max_steps: int) -> int:
    """The last step of a wsd run at the peak rate (its decay starts after it)."""
    return max_steps - decay_steps(cfg, max_steps)


def scheduler_arguments(cfg, max_steps: int | None) -> dict:
    """``lr_scheduler_type`` and ``lr_scheduler_kwargs`` for TrainingArguments."""
    if cfg.scheduler == "wsd":
        if max_steps is None:
            raise ConfigError("train.scheduler: wsd needs the run's length: set train.max_steps or train.max_tokens")
        return {
            "lr_scheduler_type": "warmup_stable_decay",
            "lr_scheduler_kwargs": {
                "num_decay_steps": decay_steps(cfg, max_steps),
                "decay_type": "cosine",
                "min_lr_ratio": cfg.min_lr_ratio,
            },
        }
    if cfg.scheduler == "cosine" and cfg.min_lr_ratio > 0:
        return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": cfg.min_lr_ratio}}
    if cfg.scheduler == "constant":
        return {"lr_scheduler_type": "constant_with_warmup"}
    return {"lr_scheduler_type": cfg.scheduler}


class StableEndCheckpoint(TrainerCallback):
    """Saves a checkpoint at the last stable step of a wsd run: the point it can be extended from."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
        return control


def extension_checkpoint(cfg, ckpt_dir: Path, newest: str | None, max_steps: int | None, say=print) -> str | None:
    """A wsd run resumed with a different max_steps: the newest complete checkpoint of the old run's
    stable phase (resuming from its decay would restart the peak rate mid-decay)."""
    if cfg.scheduler != "wsd" or newest is None or max_steps is None:
        return newest
    old_max = json.loads((Path(newest) / "trainer_state.json").read_text()).get("max_steps")
    if not old_max or old_max == max_steps:
        return newest
    from .checkpoints import checkpoint_problem

    last_stable = stable_end(cfg, old_max)
    steps = sorted((int(p.name.split("-")[1]), p) for p in Path(ckpt_dir).glob("checkpoint-*") if p.is_dir())
    for step, path in reversed(steps):
        if step <= last_stable and checkpoint_problem(path) is None:
            say(
                f"resume: extending a wsd run from {old_max} to {max_steps} steps: from {path.name}, the end of "
                f"its stable phase (step {last_stable})"
            )
            return str(path)
    raise ConfigError(
        f"train.max_steps: extending a wsd run from {old_max} to {max_steps} steps needs a checkpoint "
        f"of its stable phase (step <= {last_stable}) in {ckpt_dir}; none is complete"
    )
