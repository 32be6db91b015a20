"""A guard against diverging training: a non-finite loss or gradient norm (and, opted in, a loss spike).

Without it a too-high learning rate gave NaN at step 10, the log showed ``loss 0.0`` (the Trainer's
``logging_nan_inf_filter`` hides NaN), the run saved a 100% NaN model and exited 0.

Every optimizer step is checked, on the device: the step's loss (the sum of its micro-batches'
losses, read in ``training_step``) and its gradient norm (read in ``_get_grad_norm``, before the
optimizer steps) update a device tensor holding the first bad step, with no host synchronisation.
The host reads it only where the Trainer synchronises anyway (log steps), before every checkpoint
or evaluation, and when training ends, so a bad run stops before anything of it is saved, with a
message naming the first bad step.

``train.nan_policy: skip`` (opt-in, one host sync per step) instead drops a bad step's update:
its gradients are set to None, so AdamW leaves the weights and its moments as they were (Megatron
and PaLM skip such steps too). After ``train.max_bad_steps`` skipped steps the run rolls back to its
newest complete checkpoint and skips the batches from there to the step that tripped it
(run_training drives the rollback); with no checkpoint to return to it stops.
"""

from __future__ import annotations

import math

import torch

EMA_DECAY = 0.9
SPIKE_WARMUP = 5  # good steps before the running mean is trusted for spike detection


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm went non-finite (or spiked) and the policy says stop."""


class RollBack(Exception):
    """Raised out of Trainer.train: ``max_bad_steps`` were skipped; resume from a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"roll back at step {step}")
        self.step = step


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


class StepGuard:
    """The guard's state on the device, and the policy; one per Trainer."""

    def __init__(
        self, policy: str = "stop", max_bad_steps: int = 0, spike_factor: float | None = None, lr: float | None = None
    ):
        self.policy, self.max_bad_steps, self.spike_factor, self.lr = policy, max_bad_steps, spike_factor, lr
        self.step_loss = None
        self.state: dict[str, torch.Tensor] | None = None
        self.skipped: list[int] = []  # steps whose update was dropped (skip policy)
        self.bad_since_rollback = 0
        self.skip_ranges: list[tuple[int, int]] = []  # steps replayed after a rollback, updates dropped

    def _init(self, device) -> dict[str, torch.Tensor]:
        if self.state is None or self.state["first_bad"].device != device:
            f = dict(device=device, dtype=torch.float32)
            self.state = {
                "first_bad": torch.tensor(-1, device=device, dtype=torch.long),
                "loss": torch.tensor(0.0, **f),
                "grad_norm": torch.tensor(0.0, **f),
                "spike": torch.tensor(False, device=device),
                "ema": torch.tensor(0.0, **f),
                "good": torch.tensor(0, device=device, dtype=torch.long),
            }
        return self.state

    def add_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss

    def end_step(self, step: int, grad_norm, model) -> None:
        """Called once per optimizer step, before the optimizer steps."""
        loss = self.step_loss
        self.step_loss = None
        if loss is None:
            return
        s = self._init(loss.device)
        # Only kernels on the device from here (new_full is a fill, not a host-to-device copy): no sync.
        if isinstance(grad_norm, torch.Tensor):
            gn = grad_norm.detach().float().to(loss.device)
        else:  # DeepSpeed hands back a float; None when no norm was computed
            gn = loss.new_full((), float("nan") if grad_norm is None else float(grad_norm))
        finite = torch.isfinite(loss) & (
            torch.isfinite(gn) if grad_norm is not None else loss.new_ones((), dtype=torch.bool)
        )
        spike = loss.new_zeros((), dtype=torch.bool)
        if self.spike_factor:
            spike = (s["good"] >= SPIKE_WARMUP) & (loss > self.spike_factor * s["ema"])
        bad = ~finite | spike
        new = bad & (s["first_bad"] < 0)
        s["first_bad"] = torch.where(new, s["first_bad"].new_full((), step), s["first_bad"])
        s["loss"] = torch.where(new, loss, s["loss"])
        s["grad_norm"] = torch.where(new, gn, s["grad_norm"])
        s["spike"] = torch.where(new, spike, s["spike"])
        s["ema"] = torch.where(
            bad, s["ema"], torch.where(s["good"] == 0, loss, EMA_DECAY * s["ema"] + (1 - EMA_DECAY) * loss)
        )
        s["good"] = s["good"] + (~bad).long()
        if self.policy == "skip":
            self._skip_if_bad(step, bad, model)

    def _skip_if_bad(self, step: int, bad: torch.Tensor, model) -> None:
        replayed = any(lo <= step <= hi for lo, hi in self.skip_ranges)
        if not replayed and not bool(_all_reduce(bad.int(), "MAX").item()):  # one host sync per step
            return
        for p in model.parameters():
            p.grad = None  # AdamW skips parameters without a gradient: no update, moments kept
        self.state["first_bad"].fill_(-1)
        if replayed:
            return
        self.skipped.append(step)
        self.bad_since_rollback += 1
        print(
            f"[lmadapt] train: step {step}: {self._describe()}; its update was skipped "
            f"({self.bad_since_rollback} bad step(s) so far)",
            flush=True,
        )
        if self.max_bad_steps and self.bad_since_rollback >= self.max_bad_steps:
            self.bad_since_rollback = 0
            raise RollBack(step)

    def _describe(self) -> str:
        s = self.state
        loss, gn = float(s["loss"]), float(s["grad_norm"])
        if bool(s["spike"]):
            return (
                f"loss spike: {loss:.4g} > train.spike_factor {self.spike_factor:g} x the running mean "
                f"{float(s['ema']):.4g}"
            )
        parts = [
            f"loss {loss}" if not math.isfinite(loss) else None,
            f"gradient norm {gn}" if not math.isfinite(gn) else None,
        ]
        return " and ".join(p for p in parts if p) + " (not finite)"

    def check(self) -> None:
        """Host check (at log/save/eval steps and at the end): stop on the first bad step."""
        if self.state is None or self.policy == "skip":
            return
        first = self.state["first_bad"]
        flagged = _all_reduce((first >= 0).int(), "MAX")
        if not bool(flagged.item()):
            return
        big = torch.tensor(2**62, device=first.device, dtype=torch.long)
        step = int(_all_reduce(torch.where(first >= 0, first, big), "MIN").item())
        lr = f" ({self.lr:g})" if self.lr else ""
        raise TrainingDiverged(
            f"training stopped at step {step}, the first bad step: {self._describe()}. Nothing from that step "
            f"on was saved. Lower train.lr{lr} or lengthen the warmup, or set train.nan_policy=skip "
            f"(with train.max_bad_steps) to skip such steps"
        )


class GuardedTrainer:
    """Mixin (before ``Trainer`` in the bases) wiring a :class:`StepGuard` into the training step."""

    guard: StepGuard | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.guard is not None:
            self.guard.add_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.guard is not None:
            self.guard.end_step(self.state.global_step + 1, grad_norm, model)
        return grad_norm

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        c = self.control
        if self.guard is not None and (c.should_log or c.should_save or c.should_evaluate or c.should_training_stop):
            self.guard.check()  # before anything of a bad step is logged as fine, or saved
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.guard is not None:
            self.guard.check()  # the stage saves the model right after: never a diverged one
        return result
