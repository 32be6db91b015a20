"""Which attention kernel a model is loaded with (``model.attn_implementation``), and what it costs.

``auto`` (the default) picks, for a decoder (causal objective, instruction tuning) on a CUDA machine
with the ``flash-attn`` package installed, ``flash_attention_2``; everywhere else ``sdpa``. An
explicit choice is passed to transformers as given (``models.load`` falls back to sdpa, then eager,
with a warning, where the model or machine does not support it).

Packed documents (``data.packing: document``) keep to themselves under every implementation; what
differs is the work done for that isolation. For a block of S tokens holding documents of lengths
d_1..d_k (sum d_i = S):

==================  ==============================================================================
flash_attention_2   varlen kernel: the collator sends ``position_ids`` and no mask, transformers turns
                    them into cumulative sequence lengths, and each document attends within itself:
                    sum d_i^2 / 2 score pairs, nothing computed across documents (padding-free).
flex_attention      a block-sparse ``BlockMask`` built from the same position ids: tiles of 128 x 128
                    wholly outside every document are skipped, so about sum d_i^2 / 2 rounded up to
                    tiles. Compiled (torch.compile of flex_attention) on first use. GPU only: torch
                    2.13's CPU kernel has no backward pass (and compiles 20-60 s per shape; it aborted
                    the process on BERT's 4D masks), so it is refused on CPU.
sdpa                a 4D block-diagonal boolean mask: the memory-efficient kernel computes all S^2 / 2
                    causal pairs and masks the cross-document ones (flash SDPA takes no mask).
eager               the full S x S score matrix, materialised (S^2 x heads floats per layer).
==================  ==============================================================================

``train.flops`` counts the PaLM attention term (12 L H S per token, the full block) for every
implementation, so MFU is comparable across them; :func:`document_attention_fraction` gives the
share of that work a varlen kernel actually does on given position ids (sum d_i^2 / S^2).
"""

from __future__ import annotations

import importlib.util

CHOICES = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def flash_attention_available() -> bool:
    """CUDA present and a usable ``flash-attn`` 2 package (transformers' own check)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def resolve_attention(requested: str | None, *, causal: bool, cuda: bool | None = None) -> str | None:
    """The implementation to load with: ``auto`` resolved as the module docstring says; None stays None
    (transformers' own default). ``cuda`` defaults to ``torch.cuda.is_available()``."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if requested == "auto":
        # Encoders get an explicit 4D document mask, which varlen flash attention cannot take.
        return "flash_attention_2" if causal and cuda and flash_attention_available() else "sdpa"
    if requested == "flex_attention" and not cuda:
        from lmadapt.config.base import ConfigError

        raise ConfigError(
            "model.attn_implementation: flex_attention needs a GPU to train (torch's CPU flex kernel "
            "has no backward pass); use sdpa on CPU"
        )
    return requested


def document_attention_fraction(position_ids) -> float:
    """sum d_i^2 / (rows x S^2) for documents found in ``position_ids`` ([B, S], restarting at 0):
    the share of full-block attention work a padding-free (varlen) kernel does."""
    import torch

    pos = torch.as_tensor(position_ids)
    pos = pos[None] if pos.dim() == 1 else pos
    total = 0
    for row in pos:
        # a document starts where a position is not its predecessor + 1 (transformers' rule)
        starts = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), row[1:] != row[:-1] + 1])).flatten()
        lengths = torch.diff(torch.cat([starts, torch.tensor([len(row)])]))
        total += int((lengths.double() ** 2).sum())
    return total / (pos.shape[0] * pos.shape[1] ** 2)
