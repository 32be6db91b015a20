"""Embedding rows for new tokens: resize the model to the extended tokenizer and initialise them.

    stats = init_new_rows(model, {new_id: [old piece ids], ...}, method="mean", old_size=49152)

* ``mean`` (default): a new token's row is the mean of the rows of the pieces it replaces, in the
  input embeddings and in the output head (each from its own matrix, so an untied head gets the
  mean of its own rows; a tied one is the same tensor). At the start the model then reads the new
  token roughly as it read its pieces, and training starts from there (Gee et al. 2022, "Fast
  vocabulary transfer").
* ``overall_mean``: the mean of all old rows (Hewitt 2021): neutral, knows nothing of the word.

An output bias (BERT's MLM decoder) is initialised the same way. transformers' own
``resize_token_embeddings`` draws new rows around the overall mean; both of ours overwrite them.
"""

from __future__ import annotations

import logging

import torch

from lmadapt.config.base import ConfigError

log = logging.getLogger(__name__)

INIT_METHODS = ("mean", "overall_mean")


def _matrices(model) -> list[torch.Tensor]:
    """The input embedding weight, plus the output head's weight (and bias) when it is a separate tensor."""
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = [inp.weight]
    if out is not None and out.weight is not inp.weight:
        found.append(out.weight)
    bias = getattr(out, "bias", None) if out is not None else None
    if isinstance(bias, torch.Tensor) and bias.dim() == 1:
        found.append(bias)
    return found


@torch.no_grad()
def init_new_rows(model, pieces: dict[int, list[int]], *, method: str = "mean", old_size: int) -> dict:
    """Resize ``model`` to hold every id in ``pieces`` and initialise those rows (see the module doc).

    ``old_size``: the number of rows of the old vocabulary (the overall mean is taken over them).
    Returns what was done, for the stage's metrics."""
    if method not in INIT_METHODS:
        raise ConfigError(f"vocab.init: {method!r} is not one of {', '.join(map(repr, INIT_METHODS))}")
    if not pieces:
        return {"added": 0, "init": method}
    need = max(pieces) + 1
    rows = model.get_input_embeddings().num_embeddings
    if need > rows:
        # mean_resizing=False: skip transformers' covariance estimate (seconds on a big vocabulary); we overwrite the rows.
        model.resize_token_embeddings(need, mean_resizing=False)
    for ids in pieces.values():
        if not ids or max(ids) >= old_size:
            raise ConfigError(f"vocabulary extension: piece ids {ids} are not ids of the old vocabulary (< {old_size})")
    new_ids = torch.tensor(sorted(pieces), dtype=torch.long)
    for w in _matrices(model):
        if method == "overall_mean":
            w[new_ids] = w[:old_size].float().mean(0).to(w.dtype)
            continue
        for new_id, ids in pieces.items():
            w[new_id] = w[torch.tensor(ids, dtype=torch.long)].float().mean(0).to(w.dtype)
    tied = len(_matrices(model)) == 1 or (
        model.get_output_embeddings() is not None
        and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    log.info(
        "initialised %d new embedding rows (%s; output head %s)", len(pieces), method, "tied" if tied else "separate"
    )
    return {
        "added": len(pieces),
        "init": method,
        "rows": model.get_input_embeddings().num_embeddings,
        "tied_head": bool(tied),
    }
