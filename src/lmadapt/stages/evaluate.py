"""`lmadapt evaluate`: held-out language-modelling quality of any model folder, in one command.

Causal models get loss and perplexity; encoders get masked-token loss (fixed-seed masks) and
pseudo-perplexity. Text is packed exactly as training packs it, so numbers compare with the
before/after metrics a pretrain stage writes.

    lmadapt evaluate runs/dapt --data ../shared/data/computing/valid.jsonl.gz ../shared/data/general/valid.jsonl.gz
"""
from __future__ import annotations

from pathlib import Path

from ..config.data import SourceConfig
from ..config.model import ModelConfig
from ..data.collators import CausalCollator, WholeWordMLMCollator
from ..data.packing import pack_blocks, resolve_pad_id, tokenize_arrays
from ..data.sources import read_source
from ..models.load import load_model, supports_document_packing
from ..train.dist import to_process_device
from ..train.lm_eval import lm_metrics


def evaluate_model(model_dir: str, data: list[str], *, text_field: str = "text", split_docs: str = "file",
                   block_size: int = 512, batch_size: int = 8, max_tokens: int | None = None,
                   packing: str = "auto", loaded=None) -> dict:
    """Metrics per data set: {name: {loss, perplexity, tokens, ...}}."""
    if loaded is None:
        loaded = load_model(ModelConfig(path=str(model_dir)))
    model, tokenizer, objective = to_process_device(loaded.model), loaded.tokenizer, loaded.objective
    mode = packing
    if mode == "auto":
        mode = "document" if supports_document_packing(model, objective) else "concat"
    collator = CausalCollator(mode=mode) if objective == "causal" else WholeWordMLMCollator(tokenizer, mode=mode, mask_dtype=model.dtype)
    results = {"model": str(model_dir), "objective": objective, "packing": mode, "sets": {}}
    for path in data:
        docs, stats = read_source(SourceConfig(path=path, text_field=text_field, split_docs=split_docs))
        texts = [d.text for d in docs]
        if max_tokens:
            texts = _cap_by_chars(texts, tokenizer, max_tokens)
        tokenized = tokenize_arrays(texts, tokenizer, separator="eos" if objective == "causal" else "sep",
                                    cache_dir=None, num_proc=None, with_word_starts=objective == "masked")
        blocks, accounting = pack_blocks(tokenized, block_size=block_size, pad_id=resolve_pad_id(tokenizer, objective), mode=mode)
        metrics = lm_metrics(model, blocks, collator, objective, tokenizer, batch_size=batch_size,
                             document_mode=mode == "document")
        metrics["documents"] = len(texts)
        results["sets"][stats.name if hasattr(stats, "name") else Path(path).stem] = metrics
    return results


def _cap_by_chars(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Leading documents up to about ``max_tokens`` tokens (deterministic: file order)."""
    out, total = [], 0
    for t in texts:
        if total >= max_tokens:
            break
        out.append(t)
        total += len(tokenizer(t, add_special_tokens=False)["input_ids"])
    return out
