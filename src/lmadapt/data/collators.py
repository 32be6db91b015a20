"""Batch collators for packed blocks (see :mod:`lmadapt.data.packing` for the columns).

CausalCollator("document")   input_ids, labels, position_ids (restarting per document), NO attention_mask,
                             use_cache=False. transformers (create_causal_mask) then detects the packed
                             sequences from the position ids and builds a block-diagonal causal mask
                             (sdpa/eager/flex) or uses varlen kernels (flash-attention). use_cache=False is
                             essential: with a KV cache (``config.use_cache`` is True by default, also in
                             training) transformers skips packed-sequence detection and documents would
                             silently attend to each other.
CausalCollator("concat")     input_ids, labels, attention_mask (0 on padding).
WholeWordMLMCollator         masks whole words afresh on every call; "document" mode adds position ids and a
                             4D block-diagonal attention mask [B, 1, L, L] (encoders have no packed-sequence
                             detection). The mask is *additive* float by default (0 = attend, dtype min =
                             blocked): transformers passes a 4D mask through unchanged, and BERT's eager
                             attention adds it to the scores, so a boolean mask would be silently wrong there
                             (True/False become +1/+0); sdpa accepts both. Its dtype must match the model's
                             for eager attention: pass ``mask_dtype=model.dtype`` (or torch.bool for sdpa only).

Both accept features whose values are lists, numpy arrays or tensors. Keep the ``is_padding`` and
``word_starts`` columns: with ``transformers.Trainer`` set ``remove_unused_columns=False``.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

Mode = Literal["document", "concat"]


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment index per token (0, 1, ...) from position ids that restart at every document.

    A new segment starts where a position is not its predecessor + 1 (the same rule as transformers'
    ``find_packed_sequence_indices``). Works on [L] or [B, L]; returns int64 of the same shape."""
    pos = torch.as_tensor(position_ids)
    squeeze = pos.dim() == 1
    if squeeze:
        pos = pos.unsqueeze(0)
    starts = torch.ones_like(pos, dtype=torch.long)
    if pos.shape[-1] > 1:
        starts[:, 1:] = (pos[:, 1:] != pos[:, :-1] + 1).long()
    seg = starts.cumsum(-1) - 1
    return seg[0] if squeeze else seg


def _stack(features: Sequence[dict], key: str, dtype=torch.long) -> torch.Tensor:
    vals = [f[key] for f in features]
    if isinstance(vals[0], torch.Tensor):
        out = torch.stack([v.to(dtype) for v in vals])
    else:
        arrs = [np.asarray(v) for v in vals]
        if len({a.shape for a in arrs}) != 1:
            raise ValueError(
                f"{key}: features of different lengths {sorted({a.shape for a in arrs})}; "
                "collate packed blocks of one block_size"
            )
        out = torch.from_numpy(np.stack(arrs)).to(dtype)
    return out


def _padding(features: Sequence[dict], shape) -> torch.Tensor:
    if "is_padding" in features[0]:
        return _stack(features, "is_padding", torch.bool)
    return torch.zeros(shape, dtype=torch.bool)


def _check_mode(mode: str) -> None:
    if mode not in ("document", "concat"):
        raise ValueError(f"mode must be 'document' or 'concat', got {mode!r}")


class CausalCollator:
    """Causal-LM batches from packed blocks (columns input_ids, position_ids, labels, is_padding).

    ``document`` mode returns ``input_ids, labels, position_ids`` and ``use_cache=False`` (see the module
    docstring; ``disable_kv_cache=False`` leaves it out, then set ``model.config.use_cache = False``);
    ``concat`` mode returns ``input_ids, labels, attention_mask``. Missing labels are derived: the
    token id, -100 on padding and (document mode) on each document's first token.
    """

    def __init__(self, mode: Mode = "document", *, disable_kv_cache: bool = True):
        _check_mode(mode)
        self.mode = mode
        self.disable_kv_cache = disable_kv_cache

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        if not features:
            raise ValueError("empty batch")
        input_ids = _stack(features, "input_ids")
        padding = _padding(features, input_ids.shape)
        has_pos = "position_ids" in features[0]
        if "labels" in features[0]:
            labels = _stack(features, "labels")
        else:
            labels = input_ids.masked_fill(padding, -100)
            if self.mode == "document" and has_pos:
                pos = _stack(features, "position_ids")
                labels = labels.masked_fill(pos == 0, -100)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
        if self.mode == "document":
            if not has_pos:
                raise ValueError("document packing needs a position_ids column (pack_blocks(mode='document'))")
            batch["position_ids"] = _stack(features, "position_ids")
            if self.disable_kv_cache:
                batch["use_cache"] = False
        else:
            batch["attention_mask"] = (~padding).long()
        return batch


class WholeWordMLMCollator:
    """Masked-LM batches with (whole-word) masking drawn afresh on every call.

    About ``mlm_probability`` of the *words* among eligible tokens (not padding, not special tokens) are
    selected, each word with all its pieces (``word_starts`` column; ``whole_word=False``: single tokens).
    Selected tokens become [MASK] (80%), a random non-special token (10%) or stay unchanged (10%);
    ``labels`` hold the original id there and -100 elsewhere. If a batch would have no selected token
    (tiny batches) one eligible word is selected so the loss is never NaN.

    ``seed``: reproducible masks (a private torch.Generator; each DataLoader worker gets its own stream
    derived from seed and worker id); None uses torch's global RNG. Features with a ``mask_seed`` (added by
    :class:`lmadapt.data.mask_seeds.MaskSeeded`) are masked from that seed alone, one generator per example.
    ``mode="document"``: adds ``position_ids`` (restarting per document) and a 4D ``attention_mask``
    [B, 1, L, L] allowing attention only within a document (bidirectionally); padding forms its own
    segment. ``mask_dtype`` float (default float32): additive mask, 0 / finfo.min - works for eager and
    sdpa; must equal the model's dtype for eager attention. ``torch.bool``: True = attend (sdpa only).
    ``mode="concat"``: an ordinary 2D attention_mask (0 on padding).
    """

    def __init__(
        self,
        tokenizer,
        *,
        mlm_probability: float = 0.15,
        whole_word: bool = True,
        mode: Mode = "document",
        seed: int | None = None,
        mask_dtype: torch.dtype = torch.float32,
    ):
        _check_mode(mode)
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; masked LM needs one (tokenizer.mask_token)")
        self.mlm_probability = float(mlm_probability)
        self.whole_word = whole_word
        self.mode = mode
        self.seed = seed
        self.mask_dtype = mask_dtype
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_ids = torch.tensor(
            sorted({int(i) for i in tokenizer.all_special_ids if i is not None}), dtype=torch.long
        )
        vocab = torch.arange(len(tokenizer))
        self.random_candidates = vocab[~torch.isin(vocab, self.special_ids)]
        if len(self.random_candidates) == 0:
            raise ValueError("the tokenizer has no non-special tokens to sample random replacements from")
        self._generator: torch.Generator | None = None
        self._generator_owner: object = None

    def _rng(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        owner = info.id if info is not None else "main"
        if self._generator is None or self._generator_owner != owner:
            offset = 0 if info is None else 1_000_003 * (info.id + 1)
            self._generator = torch.Generator().manual_seed(int(self.seed) + offset)
            self._generator_owner = owner
        return self._generator

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        g = self._rng()
        input_ids = _stack(features, "input_ids")
        B, L = input_ids.shape
        padding = _padding(features, input_ids.shape)
        position_ids = _stack(features, "position_ids") if "position_ids" in features[0] else None
        if self.mode == "document" and position_ids is None:
            raise ValueError("document packing needs a position_ids column (pack_blocks(mode='document'))")
        segments = document_ids(position_ids) if self.mode == "document" else torch.zeros_like(input_ids)

        eligible = ~padding & ~torch.isin(input_ids, self.special_ids)
        if self.whole_word:
            if "word_starts" not in features[0]:
                raise ValueError(
                    "whole-word masking needs a word_starts column (tokenize with with_word_starts=True, "
                    "as build_blocks does for objective='masked'), or pass whole_word=False"
                )
            starts = _stack(features, "word_starts", torch.bool).clone()
            starts[:, 0] = True
            starts[:, 1:] |= segments[:, 1:] != segments[:, :-1]
        else:
            starts = torch.ones_like(input_ids, dtype=torch.bool)
        if "mask_seed" in features[0]:
            # One generator per example, seeded from (seed, epoch, example index) by data/mask_seeds.py:
            # the masks are a pure function of those, so a resumed run (or another process count) draws
            # exactly the masks of the uninterrupted run.
            masked, labels = self._mask(
                input_ids,
                starts,
                eligible,
                [torch.Generator().manual_seed(int(f["mask_seed"])) for f in features],
                shared=False,
            )
        else:
            masked, labels = self._mask(input_ids, starts, eligible, [g] * B, shared=True)

        batch = {"input_ids": masked, "labels": labels}
        if self.mode == "document":
            batch["position_ids"] = position_ids
            batch["attention_mask"] = block_diagonal_mask(segments, self.mask_dtype)
        else:
            batch["attention_mask"] = (~padding).long()
        return batch

    def _mask(self, input_ids, starts, eligible, gens, *, shared: bool):
        """Select whole words (probability p each) and apply 80/10/10; ``gens`` holds one generator per row,
        or the same one (``shared``: the whole batch is drawn at once, as before row generators existed)."""
        B, L = input_ids.shape
        if shared:
            g = gens[0]
            # Global word index over the batch; each word is selected with probability p as a whole.
            word = starts.reshape(-1).long().cumsum(0).reshape(B, L) - 1
            chosen = torch.rand(int(word.max()) + 1, generator=g) < self.mlm_probability
            selected = chosen[word] & eligible
        else:
            word = starts.long().cumsum(1) - 1
            selected = (
                torch.stack(
                    [
                        (torch.rand(int(word[b].max()) + 1, generator=gens[b]) < self.mlm_probability)[word[b]]
                        for b in range(B)
                    ]
                )
                & eligible
            )
        if not selected.any() and eligible.any():
            b = int(torch.nonzero(eligible.any(1))[0]) if not shared else None
            pool = eligible.reshape(-1) if shared else eligible[b]
            pick = torch.nonzero(pool)[torch.randint(int(pool.sum()), (1,), generator=gens[b or 0])]
            if shared:
                selected = (word == word.reshape(-1)[pick]) & eligible
            else:
                selected[b] = (word[b] == word[b][pick]) & eligible[b]

        labels = input_ids.masked_fill(~selected, -100)
        r = (
            torch.rand((B, L), generator=gens[0])
            if shared
            else torch.stack([torch.rand(L, generator=gens[b]) for b in range(B)])
        )
        to_mask = selected & (r < 0.8)
        to_random = selected & (r >= 0.8) & (r < 0.9)
        masked = input_ids.masked_fill(to_mask, self.mask_token_id)
        n = len(self.random_candidates)
        if shared and int(to_random.sum()):
            masked[to_random] = self.random_candidates[torch.randint(n, (int(to_random.sum()),), generator=gens[0])]
        elif not shared:
            for b in range(B):
                k = int(to_random[b].sum())
                if k:
                    masked[b, to_random[b]] = self.random_candidates[torch.randint(n, (k,), generator=gens[b])]
        return masked, labels


def block_diagonal_mask(segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, L, L] mask letting token i attend to j only when ``segments[b, i] == segments[b, j]``.

    ``dtype`` bool: True = attend; a float dtype: additive (0 = attend, finfo(dtype).min = blocked)."""
    same = (segments[:, :, None] == segments[:, None, :]).unsqueeze(1)
    if dtype == torch.bool:
        return same
    if not dtype.is_floating_point:
        raise ValueError(f"mask_dtype must be torch.bool or a floating dtype, got {dtype}")
    out = torch.zeros(same.shape, dtype=dtype)
    return out.masked_fill_(~same, torch.finfo(dtype).min)


def pad_right(rows: Sequence[dict], fills: dict[str, int]) -> dict[str, torch.Tensor]:
    """Dynamic padding shared by the task collators: each column named in ``fills`` that the rows
    carry is right-padded with its fill value to the batch's longest ``input_ids``; an
    ``attention_mask`` (1 on real tokens) is built when the rows have none."""
    lengths = [len(r["input_ids"]) for r in rows]
    width = max(lengths)
    batch = {}
    for key, fill in fills.items():
        if key not in rows[0]:
            continue
        t = torch.full((len(rows), width), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, : len(r[key])] = torch.as_tensor(r[key], dtype=torch.long)
        batch[key] = t
    if "attention_mask" not in batch:
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return batch


__all__ = ["CausalCollator", "WholeWordMLMCollator", "block_diagonal_mask", "document_ids", "pad_right"]
