"""Masked-LM masks as a pure function of (seed, epoch, example index).

:class:`lmadapt.data.collators.WholeWordMLMCollator` drew its masks from a random stream (torch's global
RNG, or a private generator) that a checkpoint does not hold, so a resumed masked-LM run masked other
tokens than the uninterrupted one (seen: held-out loss 7.199 uninterrupted, 7.259 after kills). This
wrapper adds a ``mask_seed`` to every example, derived from the recipe's seed, the epoch and the
example's index; the collator masks each example from its own seed. The masks then depend on nothing
a kill can lose: not on how many batches were drawn before, not on DataLoader workers, not on the
number of processes. Each epoch masks afresh (the epoch is part of the seed).

The epoch arrives through ``set_epoch``: accelerate's DataLoaderShard calls it at the start of each
epoch but not in the epoch a resume starts in (it then reaches the sampler instead), so
:class:`lmadapt.train.resume_state.DatasetEpoch` calls it at every epoch start too.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for (seed, epoch, stream); neighbouring inputs give unrelated streams."""
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)]).generate_state(1, np.uint64)[0] >> 1
    )


class MaskSeeded(torch.utils.data.Dataset):
    """``dataset[i]`` plus ``mask_seed`` = f(seed, epoch, i); everything else is passed through."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _with_seed(self, row: dict, index: int) -> dict:
        return {**row, "mask_seed": epoch_seed(self.seed, self.epoch, int(index) + 1)}

    def __getitem__(self, index):
        return self._with_seed(self.dataset[int(index)], index)

    def __getitems__(self, indices):
        # The DataLoader fetches a batch in one call where the dataset can (datasets.Dataset reads its rows
        # from Arrow together); keep that.
        if hasattr(self.dataset, "__getitems__"):
            rows = self.dataset.__getitems__(list(indices))
        else:
            rows = [self.dataset[int(i)] for i in indices]
        return [self._with_seed(row, i) for row, i in zip(rows, indices)]

    def __getattr__(self, name):
        # column_names, features, ... of the wrapped dataset (read by the Trainer's logging and by tests)
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = ["MaskSeeded", "epoch_seed"]
