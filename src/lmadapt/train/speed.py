"""Speed settings of the training loop: fused loss, compiled blocks, Liger kernels, no per-step sync.

    plan = prepare_speed(model, cfg)          # applies Liger kernels and torch.compile in place
    trainer_cls = fast_trainer_class(Trainer)  # fused loss + token counting without a host sync

torch.compile runs per transformer block (the classes in ``model._no_split_modules`` that sit in a
ModuleList), as torchtitan does, not on the whole model: the block's inputs have the same shapes
for every packed batch (hidden states, cos/sin, a mask or None), so documents that start at other
positions do not trigger recompilation, while mask construction from position ids, the loss and
peft's wrappers stay eager and cannot break the graph. ``Module.compile`` works in place, so
parameter names, checkpoints and saving are unchanged.

On a GPU the Trainer syncs with the host at every micro-batch to count input tokens (``.item()``)
and to filter NaN losses out of the logged loss: :class:`AsyncTokenCountMixin` keeps the count on
the device and reads it when the Trainer logs or saves, and ``training_arguments`` turns the NaN
filter off there (a non-finite loss then shows in the log instead of being replaced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config.base import ConfigError
from ..runtime.dist import log
from .loss import FusedLossMixin, resolve_loss


def resolve_switch(value, key: str, *, available: bool = True) -> bool:
    """A bool | 'auto' recipe key: auto = on where a CUDA GPU is (and the feature is available)."""
    if value == "auto":
        return torch.cuda.is_available() and available
    if not isinstance(value, bool):
        raise ConfigError(f"train.{key}: expected true, false or auto, got {value!r}")
    return value


def transformer_blocks(model) -> list[nn.Module]:
    """The repeated blocks: modules of a class in ``_no_split_modules`` that sit in a ModuleList."""
    from .loss import unwrap_peft

    inner = unwrap_peft(model)
    names = set(getattr(inner, "_no_split_modules", None) or ())
    return [m for lst in inner.modules() if isinstance(lst, nn.ModuleList) for m in lst if type(m).__name__ in names]


def compile_blocks(model, backend: str | None = None) -> int:
    """``torch.compile`` every transformer block in place; returns how many."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**({"backend": backend} if backend else {}))
    return len(blocks)


def apply_liger_kernels(model) -> bool:
    """Liger's RMSNorm, RoPE and SwiGLU on the model's modules (in place, LoRA layers kept: the
    patched MLP still calls its projections). False where Liger does not support the architecture."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    from .loss import unwrap_peft

    try:
        _apply_liger_kernel_to_instance(
            model=unwrap_peft(model),
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as exc:  # noqa: BLE001 - an unsupported model type trains without them
        log(f"liger kernels: not applied ({type(exc).__name__}: {exc})")
        return False
    return True


@dataclass
class SpeedPlan:
    loss: str  # standard | chunked | liger
    compiled_blocks: int = 0
    liger_kernels: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"loss": self.loss, "compiled_blocks": self.compiled_blocks, "liger_kernels": self.liger_kernels}


def prepare_speed(model, cfg, *, sharded: bool = False, compile_backend: str | None = None) -> SpeedPlan:
    """Resolve train.loss / compile / liger_kernels for this model and device; apply them in place.
    ``sharded`` (FSDP2): the same losses; the fused one then runs inside the model's forward (train/loss.py)."""
    from .loss import liger_available

    requested = getattr(cfg, "loss", "standard")
    loss, why = resolve_loss(requested, model)
    if sharded and loss != "standard":
        why += ", inside the sharded forward"
    plan = SpeedPlan(loss=loss, notes=[f"loss {loss} ({why})"])
    compiling = resolve_switch(getattr(cfg, "compile", False), "compile")
    liger = getattr(cfg, "liger_kernels", False)
    # auto: Liger's RMSNorm/RoPE/SwiGLU only where the blocks stay eager. Inside compiled blocks they are
    # worse than nothing: measured on an H200 (torch 2.11, liger-kernel 0.8.5, benchmarks/results/
    # gpu_speed_gpu_llama1b.md), inductor cannot trace Liger's Triton RMSNorm (it assumes every input
    # mutated and copies them) and a 1B Llama ran at 16% MFU against 44% for the same compiled blocks
    # without them; inductor fuses those element-wise ops itself.
    if liger == "auto" and compiling:
        plan.notes.append("liger kernels: auto = off under compile (inductor fuses norm/rope/swiglu itself)")
    elif resolve_switch(liger, "liger_kernels", available=liger_available()):
        if not liger_available():
            raise ConfigError("train.liger_kernels: true needs a CUDA GPU and `pip install liger-kernel`")
        plan.liger_kernels = apply_liger_kernels(model)
    if compiling:
        plan.compiled_blocks = compile_blocks(model, compile_backend)
        if not plan.compiled_blocks:
            plan.notes.append(f"compile: no transformer blocks found in {type(model).__name__}; eager")
    plan.notes.append(f"compiled blocks {plan.compiled_blocks}, liger kernels {'on' if plan.liger_kernels else 'off'}")
    return plan


class AsyncTokenCountMixin:
    """Trainer mixin: on a GPU, count input tokens on the device and read the count only when the
    Trainer logs or saves (the stock count calls ``.item()`` on every micro-batch). Counting follows
    ``include_num_input_tokens_seen`` as the Trainer does; on CPU the stock method runs."""

    _tokens_pending = None

    @staticmethod
    def _defer_token_count(ids: torch.Tensor) -> bool:
        return ids.is_cuda  # on CPU .item() costs nothing: the stock method runs

    def _track_num_input_tokens(self, inputs):
        mode = self.args.include_num_input_tokens_seen
        ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        if mode == "no" or not (isinstance(ids, torch.Tensor) and self._defer_token_count(ids)):
            return super()._track_num_input_tokens(inputs)
        pad = getattr(self.processing_class, "pad_token_id", None)
        if mode != "non_padding":
            count = torch.tensor(ids.numel(), device=ids.device)
        elif "attention_mask" in inputs and inputs["attention_mask"].dim() == 2:
            count = inputs["attention_mask"].sum()
        elif pad is not None:
            count = (ids != pad).sum()
        else:
            count = torch.tensor(ids.numel(), device=ids.device)
        count = self.accelerator.gather(count.reshape(1).to(torch.int64)).sum()
        self._tokens_pending = count if self._tokens_pending is None else self._tokens_pending + count

    def flush_token_count(self) -> None:
        if self._tokens_pending is not None:
            self.state.num_input_tokens_seen += int(self._tokens_pending.item())
            self._tokens_pending = None

    def log(self, logs, *args, **kwargs):
        self.flush_token_count()
        return super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, *args, **kwargs):
        self.flush_token_count()
        return super()._save_checkpoint(*args, **kwargs)


def fast_trainer_class(base: type) -> type:
    """``base`` (a Trainer subclass) with the fused-loss hook and the sync-free token count."""
    if issubclass(base, FusedLossMixin):
        return base
    return type(f"Fast{base.__name__}", (AsyncTokenCountMixin, FusedLossMixin, base), {})


__all__ = [
    "AsyncTokenCountMixin",
    "SpeedPlan",
    "apply_liger_kernels",
    "compile_blocks",
    "fast_trainer_class",
    "prepare_speed",
    "resolve_switch",
    "transformer_blocks",
]
