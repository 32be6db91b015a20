"""Training the embedding matrices apart: their own learning rate, and a first phase on new rows only.

    params = embedding_params(model, rows=len(tokenizer))         # input embeddings, LM head (+ bias)
    run_training(..., trainer_cls=EmbeddingLRTrainer,
                 trainer_kwargs={"embedding_lr": 1e-3, "embedding_params": params},
                 callbacks=[NewRowsOnly(params, first_new=old_size, steps=100)])

* :class:`EmbeddingLRTrainer` is a thin ``Trainer`` whose ``create_optimizer`` splits each of the
  Trainer's parameter groups (decay / no decay) into the embedding part, at ``embedding_lr``, and
  the rest; the scheduler then scales every group from its own peak, so warmup and decay apply to
  both alike.
* :class:`NewRowsOnly` makes the first ``steps`` optimizer steps update only rows ``>= first_new``
  of the embedding matrices: before each of those steps every other gradient is dropped (AdamW
  skips a parameter without a gradient: no update, no weight decay) and the old rows' gradients are
  zeroed; after the step the old rows are put back exactly as they were (decoupled weight decay
  would otherwise shrink them). Backward still computes every gradient: simpler than refreezing,
  and the optimizer (created once) holds every parameter for the second phase.

Embedding matrices are found by shape (trainable, ``rows`` long in dim 0), which also finds peft's
trainable copies (``modules_to_save``) under a LoRA model.
"""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback


def embedding_params(model, rows: int) -> list[torch.nn.Parameter]:
    """Trainable parameters with ``rows`` rows: input embeddings, LM head weight and bias."""
    return [p for _, p in model.named_parameters() if p.requires_grad and p.dim() in (1, 2) and p.shape[0] == rows]


class EmbeddingLRTrainer(Trainer):
    """``Trainer`` with the embedding parameters in param groups of their own (module doc)."""

    def __init__(self, *args, embedding_lr: float | None = None, embedding_params=(), **kwargs):
        self.embedding_lr = embedding_lr
        self._embedding_ids = {id(p) for p in embedding_params}
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        had = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        if had or self.embedding_lr is None or not self._embedding_ids:
            return optimizer
        groups = []
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            rest = [p for p in group["params"] if id(p) not in self._embedding_ids]
            emb = [p for p in group["params"] if id(p) in self._embedding_ids]
            if rest:
                groups.append({**settings, "params": rest})
            if emb:
                groups.append({**settings, "params": emb, "lr": self.embedding_lr})
        # Before the first step the optimizer holds no state: regrouping its parameters is free.
        optimizer.param_groups.clear()
        for g in groups:
            optimizer.add_param_group(g)
        return optimizer


class NewRowsOnly(TrainerCallback):
    """The first ``steps`` optimizer steps update only embedding rows ``>= first_new`` (module doc)."""

    def __init__(self, params: list[torch.nn.Parameter], *, first_new: int, steps: int, model=None):
        self.params, self.first_new, self.steps = list(params), first_new, steps
        self.model = model
        self._kept: list[torch.Tensor] | None = None

    def _active(self, state) -> bool:
        return state.global_step < self.steps  # global_step counts the steps already taken

    def on_train_begin(self, args, state, control, **kw):
        if self._active(state):
            self._kept = [p.detach()[: self.first_new].clone() for p in self.params]

    def on_pre_optimizer_step(self, args, state, control, **kw):
        if not self._active(state):
            return
        ours = {id(p) for p in self.params}
        model = kw.get("model") or self.model
        for p in model.parameters():
            if id(p) not in ours:
                p.grad = None
        for p in self.params:
            if p.grad is not None:
                p.grad[: self.first_new] = 0

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kw):
        if not self._active(state) or self._kept is None:
            return
        for p, kept in zip(self.params, self._kept):
            p[: self.first_new] = kept
        if state.global_step + 1 >= self.steps:
            self._kept = None  # phase one is over: free the copy
