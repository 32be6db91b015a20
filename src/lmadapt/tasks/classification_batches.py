"""Classification batches: dynamic padding (:class:`PaddingCollator`) and the class-weighted loss
(:class:`WeightedLoss`) the Trainer computes on them."""

from __future__ import annotations

import torch

from ..data.collators import pad_right


class PaddingCollator:
    """Dynamic padding to the longest row of the batch (right side); labels stacked as they are
    (int class ids, float multi-hot rows, float regression targets). Other columns (``length``) are dropped."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = pad_right(rows, {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0})
        if "labels" in rows[0]:
            labels = [r["labels"] for r in rows]
            dtype = torch.long if isinstance(labels[0], int) else torch.float32
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


class WeightedLoss:
    """Class-weighted loss: cross-entropy (single label) or BCE with ``pos_weight`` (multi label).

    Summed and divided by ``num_items_in_batch`` when the Trainer passes it (so gradient
    accumulation averages over the whole accumulated batch), else averaged."""

    def __init__(self, problem: str, weights: torch.Tensor):
        self.problem, self.weights = problem, weights

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        w = self.weights.to(logits.device, logits.dtype)
        if self.problem == "multi_label":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), pos_weight=w, reduction="sum"
            )
            count = labels.numel()
        else:
            loss = torch.nn.functional.cross_entropy(
                logits.view(-1, logits.shape[-1]), labels.view(-1), weight=w, reduction="sum"
            )
            count = labels.numel()
        denom = num_items_in_batch if num_items_in_batch is not None else count
        if torch.is_tensor(denom):
            denom = denom.to(loss.device)
        return loss / denom
