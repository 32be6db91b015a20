"""Held-out language-modelling metrics: perplexity (causal), masked-token loss and
pseudo-perplexity (masked).

Losses are averaged over *tokens* (sum of token losses / number of predicted tokens), not over
batches, so a padded final block does not distort the number. Under several processes each rank
takes a shard of the blocks and the sums are all-reduced; with a sharded model (FSDP) the shares
are padded so every process runs the same forward passes (each one is a collective).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .zero3 import releasing


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce(values: list[float], device) -> list[float]:
    rank, world = _dist()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _batches(dataset, collator, batch_size: int, shard: bool = True, lockstep: bool = False):
    """(batch, counted) for this process's share. ``lockstep`` (a sharded model, whose every forward
    pass is a collective): every process runs the same number of batches; a process whose share is
    a batch short runs a copy of the first block instead, and its result is not counted."""
    rank, world = _dist() if shard else (0, 1)
    n = len(dataset)
    idx = list(range(rank, n, world))
    for i in range(0, len(idx), batch_size):
        rows = [dataset[j] for j in idx[i : i + batch_size]]
        yield collator(rows), True
    if lockstep and n:
        most = math.ceil(math.ceil(n / world) / batch_size)  # batches of the largest share
        for _ in range(math.ceil(len(idx) / batch_size), most):
            yield collator([dataset[0]]), False


def _device(model):
    from .fsdp import input_device

    return input_device(model)


def _lockstep(model) -> bool:
    from .fsdp import is_sharded
    from .zero3 import is_partitioned

    return is_sharded(model) or is_partitioned(model)


@releasing
@torch.no_grad()
def causal_lm_loss(model, dataset, collator, *, batch_size: int = 8) -> dict:
    """Token-averaged next-token loss and perplexity over packed blocks."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total, count = 0.0, 0
    for batch, counted in _batches(dataset, collator, batch_size, lockstep=_lockstep(model)):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if not counted:
            continue
        shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1)
        total += F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum").item()
        count += int((shift_labels != -100).sum())
    total, count = _all_reduce([total, float(count)], device)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(count)}


@releasing
@torch.no_grad()
def masked_lm_loss(model, dataset, collator, *, batch_size: int = 8, seed: int = 1234) -> dict:
    """Masked-token loss with masks drawn from a fixed seed, so before/after numbers compare."""
    was_training = model.training
    model.eval()
    device = _device(model)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total, count = 0.0, 0
    try:
        for batch, counted in _batches(dataset, collator, batch_size, lockstep=_lockstep(model)):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            if not counted:
                continue
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    finally:
        torch.random.set_rng_state(state)
    total, count = _all_reduce([total, float(count)], device)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"masked_loss": loss, "masked_perplexity": math.exp(min(loss, 50)), "tokens": int(count)}


@releasing
@torch.no_grad()
def pseudo_perplexity(
    model, dataset, tokenizer, *, document_mode: bool, max_tokens: int = 2048, batch_size: int = 32
) -> dict:
    """Pseudo-perplexity (Salazar et al. 2020): mask each token alone, score it, exp(mean NLL).

    It costs one forward pass per scored token, so it scores the first ``max_tokens`` eligible
    tokens of the held-out blocks (deterministic), using each block's own attention layout.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    special = set(tokenizer.all_special_ids)
    mask_id = tokenizer.mask_token_id
    # The scored tokens are the first max_tokens eligible ones in row order whatever the number of
    # processes (their forward passes, a row's chunk each, are then shared out), so the score is the
    # one a single process gives. A sharded model: every process runs every pass, in lockstep.
    passes, left = [], max_tokens
    for row_i in range(len(dataset)):
        if left <= 0:
            break
        row = dataset[row_i]
        ids = torch.tensor(row["input_ids"], dtype=torch.long)
        eligible = [i for i, t in enumerate(ids.tolist()) if t not in special][:left]
        if not eligible:
            continue
        left -= len(eligible)
        pos = torch.tensor(row["position_ids"], dtype=torch.long) if "position_ids" in row else None
        attn = _block_mask(pos) if (pos is not None and document_mode) else None
        block = (ids, pos if document_mode else None, attn)  # one row's inputs, for each of its passes
        passes += [(block, eligible[k : k + batch_size]) for k in range(0, len(eligible), batch_size)]
    rank, world = (0, 1) if _lockstep(model) else _dist()
    total, count = 0.0, 0
    for (ids, pos, attn), chunk in passes[rank::world]:
        inp = ids.repeat(len(chunk), 1)
        inp[torch.arange(len(chunk)), torch.tensor(chunk)] = mask_id
        kwargs = {"input_ids": inp.to(device)}
        if pos is not None:
            kwargs["position_ids"] = pos.repeat(len(chunk), 1).to(device)
        if attn is not None:
            kwargs["attention_mask"] = attn.expand(len(chunk), 1, -1, -1).to(device)
        logits = model(**kwargs).logits.float()
        picked = logits[torch.arange(len(chunk)), torch.tensor(chunk)]
        nll = F.cross_entropy(picked, ids[torch.tensor(chunk)].to(device), reduction="sum")
        total += nll.item()
        count += len(chunk)
    if not _lockstep(model):
        total, count = _all_reduce([total, float(count)], device)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"pseudo_nll": loss, "pseudo_perplexity": math.exp(min(loss, 50)), "pll_tokens": int(count)}


def _block_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """[1, 1, L, L] bool: True where query and key are in the same document (restarting positions)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[1:] = position_ids[1:] != position_ids[:-1] + 1
    doc = torch.cumsum(starts.long(), 0)
    return (doc[:, None] == doc[None, :])[None, None]


def lm_metrics(
    model,
    dataset,
    collator,
    objective: str,
    tokenizer=None,
    *,
    batch_size: int = 8,
    pll_tokens: int = 512,
    document_mode: bool = True,
) -> dict:
    """The held-out numbers a pretrain stage reports for one eval set."""
    if len(dataset) == 0:
        return {}
    if objective == "causal":
        return causal_lm_loss(model, dataset, collator, batch_size=batch_size)
    out = masked_lm_loss(model, dataset, collator, batch_size=batch_size)
    if tokenizer is not None and pll_tokens > 0:
        out.update(pseudo_perplexity(model, dataset, tokenizer, document_mode=document_mode, max_tokens=pll_tokens))
    # "loss" and "perplexity" keys let reports treat both objectives alike.
    out["loss"] = out["masked_loss"]
    out["perplexity"] = out.get("pseudo_perplexity", out["masked_perplexity"])
    return out


def add_word_perplexity(metrics: dict, words: int | None) -> dict:
    """``word_perplexity`` = exp(total NLL / words) of causal metrics, in place: unlike per-token
    perplexity it compares models with different tokenizers (an extended vocabulary) on the same
    text. ``words``: whitespace-separated words of the scored documents. Masked metrics: unchanged."""
    if words and "perplexity" in metrics and "masked_loss" not in metrics and metrics.get("tokens"):
        metrics["words"] = int(words)
        metrics["word_perplexity"] = math.exp(min(metrics["loss"] * metrics["tokens"] / words, 50))
    return metrics


def heldout_collator(objective: str, mode: str, tokenizer, model):
    """The collator held-out blocks are scored with (causal, or masked with fixed-seed masks)."""
    from ..data.collators import CausalCollator, WholeWordMLMCollator

    if objective == "causal":
        return CausalCollator(mode=mode)
    return WholeWordMLMCollator(tokenizer, mode=mode, mask_dtype=model.dtype)


def score_sets(model, sets: dict, collator, objective: str, tokenizer, *, batch_size: int, mode: str) -> dict:
    """``{name: metrics}`` for ``{name: data.heldout.HeldoutSet}``, each with its document count."""
    out = {}
    for name, held in sets.items():
        metrics = lm_metrics(
            model, held.blocks, collator, objective, tokenizer, batch_size=batch_size, document_mode=mode == "document"
        )
        metrics["documents"] = held.documents
        add_word_perplexity(metrics, getattr(held, "words", None))
        out[name] = metrics
    return out
