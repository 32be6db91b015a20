"""Language-model loss from the final hidden states without materialising the full logits tensor.

A 49k-vocabulary model's logits for one 32 x 1,024 micro-batch hold 1.6 G floats (6.4 GB in fp32,
and the standard loss keeps a second copy for log-softmax's backward): on SmolLM2-135M that was
most of a 52.8 GB peak. Here the head (``hidden @ W.T + b``) and the cross-entropy run chunk by
chunk over tokens; each chunk's gradient with respect to its hidden rows and to ``W`` is computed
in the same pass (the loss is a scalar, so its upstream gradient is a single number applied in
backward), so no chunk's logits outlive it. Three matmuls per chunk, like the standard loss: no
recomputation. On a GPU with ``liger-kernel`` installed its fused Triton kernel does the same.

Semantics are the model's own loss: the sum of token cross-entropies over labelled positions
(``labels != -100``; causal models predict ``labels[i + 1]`` at position ``i``) divided by
``num_items_in_batch`` when the Trainer passes it (gradient accumulation: the count over the whole
accumulated batch), else by the number of labelled positions.

The Trainer hook (:class:`FusedLossMixin`) runs the wrapped model (DDP, peft) as usual with the
output head's forward replaced by the identity for that call, so the model returns the head's
*input* where the logits would be; any head transform before it (BERT's dense + LayerNorm) runs
unchanged. LoRA layers in the body and tied embeddings keep working: the head's weight is the
same Parameter and receives its gradient from here. Under FSDP2 the head's weight is whole only
while the root unit runs its forward (it is a shard outside it), so there the head's forward itself
computes the loss, from labels handed over before the call, and the model returns it as its logits:
FSDP gathers the weight for it and reduce-scatters its gradient as for any use in the forward.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.base import ConfigError
from .fsdp import is_sharded
from .zero3 import is_partitioned

IGNORE = -100
LOSSES = ("auto", "standard", "chunked", "liger")
# Config attributes that change logits after the head (softcapping, scaling): the plain head + CE
# would then compute another loss, so those models keep the standard loss.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


MIN_CHUNK_ROWS = 256


def chunk_rows(n_rows: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk: Liger's rule, so one chunk's logits are about the size of the hidden states
    (``n_rows * hidden``): about vocab / hidden chunks, a power of two rows each; but at least 256
    rows, since every chunk adds a vocab x hidden product into W's gradient (memory traffic that
    tiny chunks of a small CPU batch would multiply)."""
    chunks = max(1, math.ceil(vocab / max(hidden, 1)))
    rule = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(n_rows / chunks)))))
    return max(rule, MIN_CHUNK_ROWS)


class _ChunkedLinearCE(torch.autograd.Function):
    """sum over rows of CE(hidden @ W.T + b, target) * scale; gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, chunk, compute_dtype):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        acc = torch.promote_types(torch.float32, compute_dtype)  # logits and sums: fp32 at least
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        w = weight.to(compute_dtype)
        b = bias.to(acc) if bias is not None else None
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            t = targets[start : start + chunk]
            logits = (h @ w.T).to(acc)
            if b is not None:
                logits += b
            valid = t != IGNORE
            safe = t.clamp_min(0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe).squeeze(1)) * valid).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            # d(sum CE)/d logits = softmax - onehot(target), zero on ignored rows; in place on logits.
            g = logits.sub_(lse.unsqueeze(1)).exp_()
            g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
            g.mul_((valid.to(g.dtype) * scale).unsqueeze(1))
            if grad_b is not None:
                grad_b += g.sum(0)
            g = g.to(compute_dtype)
            if grad_h is not None:
                grad_h[start : start + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g.T @ h).to(acc)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        grad_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        grad_w = (grad_w * grad_out).to(w_dtype) if grad_w is not None else None
        grad_b = (grad_b * grad_out).to(b_dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The head matmul's dtype as the standard path gets it: autocast's (bf16 on GPU) when on."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    shift: bool = False,
    num_items: torch.Tensor | int | None = None,
    impl: str = "chunked",
    select_labelled: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean token cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels`` (-100 = ignored).

    ``hidden`` [..., H] (the head's input), ``labels`` [...] of the same leading shape; ``shift``:
    causal LM (position i predicts labels[i + 1]); ``num_items``: the divisor (Trainer's count over
    the accumulated batch), default the number of labelled positions. ``select_labelled`` computes
    the head only on labelled rows (MLM: ~15% of them); it costs a host-device sync (nonzero).
    ``impl``: "chunked" (PyTorch, any device) or "liger" (Triton, CUDA)."""
    if shift:
        labels = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    t = labels.reshape(-1).to(h.device)
    if select_labelled:
        rows = (t != IGNORE).nonzero().squeeze(1)
        h, t = h.index_select(0, rows), t.index_select(0, rows)
    denom = num_items if num_items is not None else (t != IGNORE).sum()
    if isinstance(denom, torch.Tensor):
        denom = denom.to(h.device, torch.float32)
    dtype = _compute_dtype(h)
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        # Liger wants one dtype for input and weight: cast (the cast is differentiable, so the
        # fp32 master weight still gets its gradient).
        fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
        total = fn(weight.to(dtype), h.to(dtype).contiguous(), t, bias.to(dtype) if bias is not None else None)
        if not isinstance(total, torch.Tensor):  # versions that also return z-loss / accuracy
            total = total[0] if isinstance(total, (tuple, list)) else total.loss
        return total.float() / denom
    scale = 1.0 / denom
    with torch.autocast(h.device.type, enabled=False):  # dtypes are chosen explicitly above
        return _ChunkedLinearCE.apply(h, weight, bias, t, scale, chunk or chunk_rows(h.shape[0], *weight.shape), dtype)


# --- which loss a model gets ----------------------------------------------------------------------


def unwrap_peft(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def lm_head_of(model) -> tuple[nn.Linear | None, str]:
    """The plain ``nn.Linear`` output head the fused loss can replace, or None and why not."""
    inner = unwrap_peft(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    if head is None:
        return None, "the model has no language-model head"
    if type(head) is not nn.Linear:  # LoRA / modules_to_save / 4-bit wrappers compute more than W x
        return None, f"its output head is a {type(head).__name__}, not a plain Linear"
    if "forward" in head.__dict__:  # accelerate's device-map hooks replace forward per instance
        return None, "its output head's forward is hooked"
    cfg = getattr(inner, "config", None)
    for key in _LOGIT_POSTPROCESSING:
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return None, f"config.{key} post-processes the logits"
    return head, ""


def loss_shift(model) -> bool | None:
    """True for causal-LM losses, False for masked-LM, None for anything else (task heads)."""
    from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss

    fn = getattr(unwrap_peft(model), "loss_function", None)
    return True if fn is ForCausalLMLoss else False if fn is ForMaskedLMLoss else None


def liger_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or installed without a working Triton
        return False
    return True


def resolve_loss(requested: str, model) -> tuple[str, str]:
    """('standard' | 'chunked' | 'liger', reason). 'auto': Liger on a GPU where installed, else the
    chunked PyTorch loss; the standard loss where the model's head cannot be fused."""
    if requested not in LOSSES:
        raise ConfigError(f"train.loss: {requested!r} is not one of {', '.join(LOSSES)}")
    if requested == "standard":
        return "standard", "train.loss: standard"
    head, why = lm_head_of(model)
    shift = loss_shift(model) if head is not None else None
    if head is not None and shift is None:
        why = f"{type(unwrap_peft(model)).__name__} does not use a causal or masked LM loss"
    if head is None or shift is None:
        if requested == "auto":
            return "standard", why
        raise ConfigError(f"train.loss: {requested} needs a causal or masked LM with a plain output head; {why}")
    if requested == "liger" and not liger_available():
        raise ConfigError("train.loss: liger needs a CUDA GPU and `pip install liger-kernel` (or train.loss: chunked)")
    if requested == "auto":
        return ("liger", "auto: CUDA + liger-kernel") if liger_available() else ("chunked", "auto: chunked")
    return requested, f"train.loss: {requested}"


# --- the Trainer hook -----------------------------------------------------------------------------


class LMHeadLoss:
    """``compute_loss_func`` for the Trainer. While :meth:`hidden_out` is active the model returns
    hidden states in ``outputs.logits`` and the fused loss runs; otherwise (evaluation) it is the
    model's own loss function on real logits."""

    def __init__(self, model, impl: str):
        self.head, _ = lm_head_of(model)
        self.shift = bool(loss_shift(model))
        self.impl = impl
        self.chunk: int | None = None  # tokens per chunk; None: chunk_rows' rule
        self.active = False
        self.inside = False  # the loss runs in the head's forward (FSDP2), returned as the logits

    @contextlib.contextmanager
    def hidden_out(self, labels=None, num_items_in_batch=None, *, sharded: bool = False):
        """Bypass the head for one call. ``sharded``: the head's forward computes the loss instead,
        with ``labels`` / ``num_items_in_batch`` (FSDP2 holds the whole weight only in the forward)."""
        if sharded:
            self.head.forward = functools.partial(self._loss_in_forward, labels, num_items_in_batch)
        else:
            self.head.forward = _identity  # instance attribute: this head only, removed after the call
        self.active, self.inside = True, sharded
        try:
            yield
        finally:
            del self.head.forward
            self.active = self.inside = False

    def _loss_in_forward(self, labels, num_items_in_batch, hidden, *args, **kwargs):
        weight = self.head.weight
        if _is_dtensor(weight):  # a shard's gradient from the whole vocabulary's loss would be wrong
            raise RuntimeError(
                "fused loss under FSDP: the head's weight is still sharded (a DTensor) inside the "
                "model's forward, so its gradient cannot be computed here; use train.loss: standard"
            )
        return self._fused(hidden, labels, num_items_in_batch)

    def _fused(self, hidden, labels, num_items_in_batch):
        if hidden.shape[-1] != self.head.in_features:
            raise RuntimeError(
                f"fused loss: the model gave its head [..., {hidden.shape[-1]}], expected the "
                f"head's input width {self.head.in_features}; use train.loss: standard"
            )
        # On a GPU, picking the labelled rows syncs with the host; causal pretraining labels nearly
        # every token, so there it is skipped. MLM (15% labelled) and CPU always pick.
        select = not (self.shift and hidden.is_cuda)
        return linear_cross_entropy(
            hidden,
            self.head.weight,
            labels,
            bias=self.head.bias,
            shift=self.shift,
            num_items=num_items_in_batch,
            impl=self.impl,
            select_labelled=select,
            chunk=self.chunk,
        )

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if not self.active:
            from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss

            fn = ForCausalLMLoss if self.shift else ForMaskedLMLoss
            return fn(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)
        if self.inside:  # the head's forward computed it (above)
            if logits.dim() != 0:
                raise RuntimeError(
                    f"fused loss under FSDP: the model returned {tuple(logits.shape)} where its "
                    "head returned the scalar loss (it post-processes the logits); use train.loss: standard"
                )
            return logits
        return self._fused(logits, labels, num_items_in_batch)


def _identity(x, *args, **kwargs):
    return x


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support shards nothing
        return False
    return isinstance(t, DTensor)


class FusedLossMixin:
    """Trainer mixin: when the Trainer's ``compute_loss_func`` is an :class:`LMHeadLoss` (so the
    Trainer counts ``num_items_in_batch`` and scales for accumulation as for any loss function),
    training forward passes bypass the head and use the fused loss; evaluation keeps real logits.
    A sharded model (FSDP2) computes it inside its forward, where the head's weight is whole."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lm_loss = getattr(self, "compute_loss_func", None)
        fused = isinstance(lm_loss, LMHeadLoss) and model.training and "labels" in inputs
        # DeepSpeed ZeRO-3 partitions the head's weight too: whole only inside the head's forward
        sharded = is_sharded(model) or getattr(self, "is_fsdp_enabled", False) or is_partitioned(model)
        ctx = (
            lm_loss.hidden_out(inputs["labels"], num_items_in_batch, sharded=sharded)
            if fused
            else contextlib.nullcontext()
        )
        with ctx:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )


__all__ = ["FusedLossMixin", "LMHeadLoss", "LOSSES", "chunk_rows", "linear_cross_entropy", "lm_head_of", "resolve_loss"]
