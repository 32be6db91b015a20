"""What a killed and resumed run needs to continue exactly, and to report itself as one run.

The Trainer restores weights, optimizer, schedule, RNG and the data position from a checkpoint; three
things it does not:

* :class:`DatasetEpoch`: a dataset whose examples depend on the epoch (masked-LM masks, data/mask_seeds.py)
  learns the epoch at every epoch start, also in the epoch a resume starts in, where accelerate's
  ``DataLoaderShard.set_epoch`` reaches the sampler and not the dataset.
* :class:`RunSegments`: ``metrics.json`` after a resume reported the last part of the run only (the
  Trainer's ``training_loss`` covers its own ``train()`` call; tokens/s divided every token ever seen by
  the last part's seconds). The segments of the run (steps, loss sum, tokens, seconds of each part
  between a start and a checkpoint) are saved in every checkpoint's ``trainer_state.json`` (an
  ``ExportableState`` callback), so the checkpoint a resume loads holds exactly the history that led to
  it, and :meth:`RunSegments.whole_run` adds the last part. Time spent after the last checkpoint of a
  killed part is lost work, not counted.
* :class:`ResumeExactly` (a Trainer mixin), two things:
  - the Trainer counts "non-padding" tokens as ``attention_mask.sum()``; a masked-LM batch in document
    mode carries a 4D additive mask (0 = attend, dtype-min = blocked), so the count went hugely negative
    (BERT's ``tokens_seen``). For masks that are not [batch, length] the count is the tokens that are not
    padding, from ``input_ids``.
  - resumed from a checkpoint that already reached ``max_steps`` (the run was killed in its final
    evaluation or save), the Trainer trained one step more (seen: 41 and 42 of a 40-step run, after
    two such resumes). It now gets no batch there, and ends where the run ended.
"""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..data.mask_seeds import MaskSeeded


class DatasetEpoch(TrainerCallback):
    """Tells a :class:`MaskSeeded` training set the epoch about to start (``floor(state.epoch)``: exact at an
    epoch boundary, and the resumed epoch after a checkpoint within one)."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if isinstance(dataset, MaskSeeded):
            dataset.set_epoch(math.floor(state.epoch or 0))


class RunSegments(TrainerCallback, ExportableState):
    """Per-part steps, loss sum, tokens and seconds of a run, carried from checkpoint to checkpoint."""

    def __init__(self):
        self.segments: list[dict] = []  # the parts before this one, up to the checkpoint resumed from
        self._start = self._state = None

    def state(self) -> dict:
        # Called by the Trainer when it saves a checkpoint (and once with no part running yet).
        parts = self.segments + ([self._part(self._state)] if self._start is not None else [])
        return {"args": {}, "attributes": {"segments": parts}}

    def on_train_begin(self, args, state, control, **kwargs):
        name = type(self).__name__
        saved = (state.stateful_callbacks or {}).get(name) if state.global_step > 0 else None
        if isinstance(saved, dict) and "segments" in saved.get("attributes", {}):
            self.segments = list(saved["attributes"]["segments"])
        elif state.global_step > 0:  # a checkpoint written before segments were recorded
            self.segments = [
                {
                    "start_step": 0,
                    "end_step": state.global_step,
                    "loss_sum": None,
                    "loss_steps": 0,
                    "tokens": state.num_input_tokens_seen or 0,
                    "seconds": None,
                }
            ]
        else:
            self.segments = []
        # The Trainer writes stateful_callbacks[name] on save and fails on a name the loaded state lacks.
        state.stateful_callbacks.setdefault(name, {"args": {}, "attributes": {"segments": self.segments}})
        self._state, self._start, self._t0 = state, state.global_step, time.time()
        self._tokens0 = state.num_input_tokens_seen or 0
        self._loss_sum, self._logged = 0.0, state.global_step

    def _flush_before_save(self, control) -> None:
        # A checkpoint must hold the loss of every step before it: have the Trainer log (and so hand us
        # the loss of the steps since the last log line) right before it saves.
        if control.should_save:
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self._flush_before_save(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._flush_before_save(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._start is not None and logs and "loss" in logs and state.global_step > self._logged:
            loss = logs["loss"]
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                self._loss_sum += float(loss) * (state.global_step - self._logged)
            self._logged = state.global_step

    def _part(self, state, train_loss: float | None = None) -> dict:
        steps = state.global_step - self._start
        exact = train_loss is not None and math.isfinite(train_loss)
        return {
            "start_step": self._start,
            "end_step": state.global_step,
            "loss_sum": train_loss * steps if exact else self._loss_sum,
            "loss_steps": steps if exact else self._logged - self._start,
            "tokens": (state.num_input_tokens_seen or 0) - self._tokens0,
            "seconds": round(time.time() - self._t0, 3),
        }

    def whole_run(self, state, train_loss: float | None) -> dict:
        """Totals over every part (``train_loss``: the Trainer's loss of the last part's ``train()``)."""
        parts = self.segments + [self._part(state, train_loss)]
        covered = [p for p in parts if p.get("loss_sum") is not None and p.get("loss_steps")]
        loss_steps = sum(p["loss_steps"] for p in covered)
        return {
            "parts": len(parts),
            "train_loss": sum(p["loss_sum"] for p in covered) / loss_steps if loss_steps else None,
            "loss_steps": loss_steps,
            "tokens": sum(p["tokens"] for p in parts),
            "earlier_seconds": sum(p["seconds"] or 0.0 for p in parts[:-1]),
            "segments": parts,
        }


class ResumeExactly:
    """Trainer mixin: tokens seen counted right for 4D attention masks, and no step past ``max_steps``
    on a resume (see the module docstring)."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if 0 < self.state.max_steps <= self.state.global_step:
            return [], None  # the run is done: the epoch's remaining steps run empty, the loop ends
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _track_num_input_tokens(self, inputs):
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is not None and mask.dim() != 2 and self.args.include_num_input_tokens_seen == "non_padding":
            # Without the mask the Trainer counts input ids other than the pad id; masked LM never puts the
            # (special) pad id on a real token, and packing pads with it.
            inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
        return super()._track_num_input_tokens(inputs)


def find_callback(trainer, cls):
    """The trainer's instance of ``cls`` (a resume may have replaced the one added, with its saved state)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cls)), None)


__all__ = ["DatasetEpoch", "ResumeExactly", "RunSegments", "find_callback"]
