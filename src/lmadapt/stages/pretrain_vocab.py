"""A pretrain stage's vocabulary extension (recipe section ``vocab``), between loading and packing.

    ext = extend_vocabulary(cfg, corpus, loaded, out)   # None without vocab.extend / vocab.tokenizer
    ... loaded.tokenizer is the extended tokenizer, loaded.model has the new rows initialised ...
    metrics["vocab"] = ext.summary

The candidates are mined on each node's first process (the one holding the corpus) from the first
``vocab.mine_chars`` characters of the training sources and the extended tokenizer is written to
``out/.lmadapt-blocks/vocab-HOST`` (removed with the blocks when the stage ends); the node's other
processes read it from there. Fragmentation (tokens per word) before and after is measured on the
held-out sources (else on the mined text) where the corpus is.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..config.base import ConfigError
from ..config.pretrain import PretrainConfig
from ..data.sources import Corpus
from ..models.embed_init import init_new_rows
from ..models.load import fix_pad_token
from ..models.vocab import (
    candidate_table,
    extend_tokenizer,
    mine_candidates,
    pretoken_counts,
    read_extension,
    tokenizer_kind,
    tokens_per_word,
    vocab_digest,
)
from ..runtime.dist import log, main_first
from .pretrain_data import BLOCKS_DIR

VOCAB_DIR = "vocab"
_FRAGMENTATION_CHARS = 2_000_000  # held-out text measured for tokens per word (enough for 3 digits)


@dataclass
class VocabExtension:
    old_size: int
    pieces: dict[int, list[int]]  # new id -> old ids it replaces
    summary: dict = field(default_factory=dict)


def _texts(docs_by_source: dict, max_chars: int) -> list[str]:
    """Leading documents of each source, in order, up to ``max_chars`` characters in all."""
    out, total = [], 0
    for docs in docs_by_source.values():
        start = 0
        while total < max_chars and start < len(docs):
            batch = (
                docs.texts(start, start + 256)
                if hasattr(docs, "texts")
                else [d.text for d in docs[start : start + 256]]
            )
            start += 256
            for t in batch:
                if total >= max_chars:
                    break
                out.append(t)
                total += len(t)
    return out


def _mine(cfg: PretrainConfig, corpus: Corpus, tokenizer, folder: Path) -> None:
    texts = _texts(corpus.train, cfg.vocab.mine_chars)
    counts = pretoken_counts(tokenizer, texts)
    cands = mine_candidates(
        tokenizer, texts, add=cfg.vocab.extend, min_frequency=cfg.vocab.min_frequency, counts=counts
    )
    if not cands:
        raise ConfigError(
            f"vocab.extend: no word of the training text is cut into 2+ pieces and seen "
            f">= {cfg.vocab.min_frequency} times (vocab.min_frequency); nothing to add"
        )
    if len(cands) < cfg.vocab.extend:
        log(f"vocab.extend: only {len(cands)} words qualify (of {cfg.vocab.extend} asked)")
    extend_tokenizer(tokenizer, cands, folder, counts=counts)
    log(
        f"vocabulary: added {len(cands)} tokens mined from {sum(map(len, texts)):,} characters:\n"
        + candidate_table(cands, tokenizer_kind(tokenizer), limit=20)
    )


def extend_vocabulary(cfg: PretrainConfig, corpus: Corpus | None, loaded, out: Path) -> VocabExtension | None:
    """Extend ``loaded.tokenizer`` and ``loaded.model`` in place as ``cfg.vocab`` says (module doc)."""
    vc = cfg.vocab
    if not vc.active:
        return None
    from transformers import AutoTokenizer

    old = loaded.tokenizer
    if vc.tokenizer:
        folder = Path(vc.tokenizer)
    else:
        # per host: nodes sharing the output folder each mine (the same tokens) into their own copy
        folder = out / BLOCKS_DIR / f"{VOCAB_DIR}-{socket.gethostname()}"
        main_first(lambda: _mine(cfg, corpus, old, folder), "mining the vocabulary", per_node=True, others=lambda: None)
    record = read_extension(folder)
    if record is None:
        raise ConfigError(
            f"vocab.tokenizer: {folder} has no lmadapt_vocab.json; make the folder with "
            "`lmadapt tokenizer extend MODEL --data CORPUS --add N --output DIR`"
        )
    if record["old_size"] != len(old) or record.get("old_vocab_sha256", vocab_digest(old)) != vocab_digest(old):
        raise ConfigError(
            f"vocab.tokenizer: {folder} extends another tokenizer ({record['old_size']:,} tokens) than "
            f"the model's ({len(old):,} tokens); extend this model's tokenizer"
        )
    new = AutoTokenizer.from_pretrained(str(folder))
    fix_pad_token(new)
    pieces = {int(t["id"]): list(t["piece_ids"]) for t in record["tokens"]}
    init = init_new_rows(loaded.model, pieces, method=vc.init, old_size=len(old))
    loaded.tokenizer = new
    summary = {
        **init,
        "source": str(vc.tokenizer) if vc.tokenizer else "mined",
        "old_size": len(old),
        "new_size": len(new),
        "embedding_lr": vc.embedding_lr,
        "warmup_steps": vc.warmup_steps,
        "tokens": [{k: t[k] for k in ("word", "frequency", "pieces")} for t in record["tokens"][:50]],
    }
    if corpus is not None:
        held = _texts(corpus.eval, _FRAGMENTATION_CHARS) if corpus.eval else None
        texts = held or _texts(corpus.train, min(vc.mine_chars, _FRAGMENTATION_CHARS))
        before, after = tokens_per_word(old, texts), tokens_per_word(new, texts)
        summary["fragmentation"] = {
            "text": "held-out" if held else "training (no held-out source)",
            "words": before["words"],
            "tokens_per_word_before": before["tokens_per_word"],
            "tokens_per_word_after": after["tokens_per_word"],
        }
        log(
            f"vocabulary: {len(pieces)} new tokens ({vc.init} init); tokens per word on {summary['fragmentation']['text']} "
            f"text {before['tokens_per_word']} -> {after['tokens_per_word']}"
        )
    return VocabExtension(old_size=len(old), pieces=pieces, summary=summary)


def _embedding_rows(model) -> int:
    emb = model.get_input_embeddings()
    return int(emb.weight.shape[0])


def training_options(cfg: PretrainConfig, ext: VocabExtension | None, model, tokenizer) -> dict:
    """run_training keywords for ``vocab.embedding_lr`` and ``vocab.warmup_steps`` ({} without them)."""
    from ..train.embedding_groups import EmbeddingLRTrainer, NewRowsOnly, embedding_params

    from ..train.fsdp import wants_sharding

    vc = cfg.vocab
    if vc.embedding_lr is None and not vc.warmup_steps:
        return {}
    if wants_sharding(cfg.train):
        raise ConfigError(
            "vocab.embedding_lr / vocab.warmup_steps: not supported with train.sharding (the embedding "
            "rows are split across processes); train the new rows without sharding"
        )
    params = embedding_params(model, _embedding_rows(model))
    if not params:
        raise ConfigError(
            "vocab.embedding_lr / vocab.warmup_steps: the model has no trainable embedding matrix "
            "(with LoRA, set lora.train_embeddings: true)"
        )
    opts: dict = {}
    if vc.embedding_lr is not None:
        opts["trainer_cls"] = EmbeddingLRTrainer
        opts["trainer_kwargs"] = {"embedding_lr": vc.embedding_lr, "embedding_params": params}
    if vc.warmup_steps and ext is not None:
        opts["callbacks"] = [NewRowsOnly(params, first_new=ext.old_size, steps=vc.warmup_steps, model=model)]
        log(f"vocabulary: the first {vc.warmup_steps} steps train only the {len(ext.pieces)} new rows")
    return opts


def word_perplexities(results: dict, words: dict | None) -> dict:
    """Adds per-word perplexity to each held-out set's causal metrics (see train.lm_eval.add_word_perplexity)."""
    from ..train.lm_eval import add_word_perplexity

    for name, m in results.items():
        add_word_perplexity(m, (words or {}).get(name))
    return results
