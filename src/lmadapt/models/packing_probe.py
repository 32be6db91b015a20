"""Does a model keep packed documents apart? Answered by running it, not from a table.

    supports_document_packing(model, "causal")       # True: pack with restarting position ids
    block_diagonal_mask(segments, additive=True)     # the 4D mask packed encoder batches get

Its own file (out of models/load.py): the probe runs a loaded model, it does not load one.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _probe_ids(vocab: int, n: int, gen, low: int = 5):
    import torch

    low = min(low, max(vocab - 2, 0))
    return torch.randint(low, vocab, (n,), generator=gen)


def block_diagonal_mask(segments, *, additive: bool = False, dtype=None):
    """4D block-diagonal attention mask ``[B, 1, L, L]`` from per-token document ids ``[B, L]``.

    Boolean (True = attend) by default. ``additive`` gives 0 / finfo.min in ``dtype`` instead:
    the only form BERT's *eager* attention handles (it adds the mask to the scores, so a boolean
    mask is silently wrong there); sdpa accepts both.
    """
    import torch

    mask = (segments[:, :, None] == segments[:, None, :])[:, None]
    if not additive:
        return mask
    dtype = dtype or torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def supports_document_packing(
    model, objective: str, *, additive_mask: bool = True, len_a: int = 7, len_b: int = 9
) -> bool:
    """Does ``model`` keep packed documents apart? Answered empirically, not from a table.

    Two documents A and B are packed into one row the way the collators pass them: causal ->
    ``position_ids`` restarting at 0 per document and ``attention_mask=None`` (transformers then
    builds a block-diagonal causal mask); masked -> ``position_ids`` restarting and a 4D
    block-diagonal mask ``[B, 1, L, L]``. It is True iff B's logits equal those of
    B alone and do not change when A changes, while a control run without document boundaries
    *does* see A (otherwise the probe cannot tell and answers False).

    The 4D mask is probed in the form ``data.collators`` sends by default: additive float (0 /
    finfo.min, in the model's dtype). ``additive_mask=False`` probes the boolean form (True =
    attend) instead, which BERT's *eager* attention gets wrong (it adds the mask to the scores);
    see :func:`block_diagonal_mask`. ~16 tokens, no_grad, eval
    mode (the train/eval mode is restored). The forward passes ``use_cache=False``, as training
    must: with a KV cache transformers ignores packed ``position_ids``.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        device, low_precision = param.device, param.dtype in (torch.float16, torch.bfloat16)
        vocab = model.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(1234)
        a, a2, b = _probe_ids(vocab, len_a, gen), _probe_ids(vocab, len_a, gen), _probe_ids(vocab, len_b, gen)

        def run(docs, packed: bool):
            ids = torch.cat(docs)[None].to(device)
            kw: dict[str, Any] = {}
            if packed:
                kw["position_ids"] = torch.cat([torch.arange(len(d)) for d in docs])[None].to(device)
                if objective == "masked":
                    seg = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None].to(device)
                    kw["attention_mask"] = block_diagonal_mask(seg, additive=additive_mask, dtype=param.dtype)
            with torch.no_grad():
                try:  # a KV cache disables packed-sequence detection in transformers: train without one
                    out = model(input_ids=ids, use_cache=False, **kw)
                except TypeError:
                    out = model(input_ids=ids, **kw)
            return out.logits[0, -len(docs[-1]) :].float()

        alone = run([b], packed=True)
        with_a, with_a2 = run([a, b], packed=True), run([a2, b], packed=True)
        control, control2 = run([a, b], packed=False), run([a2, b], packed=False)
        scale = alone.abs().max().item() + 1e-6
        tol = (2e-2 if low_precision else 1e-4) * scale

        def same(x, y):
            return (x - y).abs().max().item() <= tol

        if same(control, control2):
            log.warning(
                "document-packing probe inconclusive for %s: B's logits ignore A even without document boundaries",
                type(model).__name__,
            )
            return False
        return same(alone, with_a) and same(with_a, with_a2)
    except (TypeError, ValueError, RuntimeError) as exc:
        log.info("document-packing probe failed for %s: %s", type(model).__name__, exc)
        return False
    finally:
        model.train(was_training)


__all__ = ["block_diagonal_mask", "supports_document_packing"]
