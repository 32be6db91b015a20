"""A pretrain stage's data: the corpus read, tokenized, mixed and packed, once per node.

    corpus = read_stage_corpus(cfg, out)                              # None on a node's other processes
    data = prepare_stage_data(corpus, tokenizer, objective, mode, cfg, out)
    ...train on data.train, evaluate on data.eval...
    remove_stage_data(out)

Each node's first process reads the text, spooling each source to an Arrow file as it goes
(``out/.lmadapt-blocks/spool-*``), tokenizes it a batch at a time (cached on disk), mixes the
sources and packs the training and held-out blocks into ``out/.lmadapt-blocks/``, then writes a
manifest naming the files and removes its spool. The node's other processes never read the text:
they memory-map the files the manifest names. No process holds the text in memory, and the blocks
sit once in the page cache, not once in every process of a torchrun job.

Block files are named by a key of everything that decides their content (the token caches, the
mixture picks, the seed, the block size, the pad id, the packing mode), so a resumed stage reads
them instead of packing again; a changed recipe gets new files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.pretrain import PretrainConfig
from ..data.mixing import mix_documents, plan_mixture, plan_table, plans_as_dicts
from ..data.objective import ObjectiveTokens
from ..data.packing import BLOCKS_FORMAT, TokenAccounting, open_blocks, pack_blocks
from ..data.sources import Corpus, read_corpus, source_name
from ..data.tokenize import tokenize_arrays
from ..runtime.dist import barrier, is_local_main_process, log, main_first
from ..runtime.outputs import write_json

# Where a stage keeps its packed blocks while it runs (removed when it ends; kept for a resume).
BLOCKS_DIR = ".lmadapt-blocks"
MANIFEST = "manifest.json"


@dataclass
class StageData:
    train: Any  # datasets.Dataset of blocks, memory-mapped
    accounting: TokenAccounting
    eval: dict[str, tuple[Any, TokenAccounting]]  # held-out set -> (blocks, accounting)
    mixture: list[dict]  # the source mixture plan, for token_accounting.json
    eval_words: dict[str, int] | None = None  # held-out set -> whitespace words scored (per-word perplexity)


def read_stage_corpus(cfg: PretrainConfig, out: Path) -> Corpus | None:
    """The corpus on each node's first process (None on the others), read before the model loads,
    so bad input stops every process at once, before minutes of model loading. Its documents are
    spooled to disk as they are read, so the text is never all in memory."""
    return main_first(
        lambda: read_corpus(cfg.data, spool_dir=_spool_dir(out)),
        "reading the corpus",
        per_node=True,
        others=lambda: None,
    )


def _spool_dir(out: Path) -> Path:
    # This process's own: nodes sharing the output folder each spool (and remove) their own copy.
    return out / BLOCKS_DIR / f"spool-{socket.gethostname()}-{os.getpid()}"


def prepare_stage_data(
    corpus: Corpus | None, tokenizer, objective: str, mode: str, cfg: PretrainConfig, out: Path
) -> StageData:
    """The training and held-out blocks on every process; only a node's first process needs ``corpus``."""
    folder = out / BLOCKS_DIR

    def first() -> StageData:
        manifest = _pack_all(corpus, tokenizer, objective, mode, cfg, folder)
        shutil.rmtree(_spool_dir(out), ignore_errors=True)  # the texts are tokens now
        return _open(folder, manifest)

    return main_first(
        first,
        "preparing the training data",
        per_node=True,
        others=lambda: _open(folder, json.loads((folder / MANIFEST).read_text())),
    )


def remove_stage_data(out: Path) -> None:
    """The packed blocks are a means, not an output: the finished folder is a plain model folder."""
    barrier()  # every process is done with the memory-mapped files
    if is_local_main_process():
        shutil.rmtree(out / BLOCKS_DIR, ignore_errors=True)


def _open(folder: Path, manifest: dict) -> StageData:
    def opened(name: str):
        found = open_blocks(folder / name)
        if found is None:
            raise RuntimeError(f"{folder / name}: named by {folder / MANIFEST} but missing or incomplete")
        return found

    train, accounting = opened(manifest["train"])
    return StageData(
        train=train,
        accounting=accounting,
        eval={name: opened(file) for name, file in manifest["eval"].items()},
        mixture=manifest["mixture"],
        eval_words=manifest.get("eval_words") or {},
    )


def _pack_all(corpus: Corpus, tokenizer, objective: str, mode: str, cfg: PretrainConfig, folder: Path) -> dict:
    """Packs what is not packed yet and writes the manifest (last, so the others never read a stale one)."""
    tokens = ObjectiveTokens.of(tokenizer, objective)
    pad_id = tokens.pad_id
    settings = [BLOCKS_FORMAT, cfg.data.block_size, pad_id, mode]
    manifest = {"train": None, "eval": {}, "mixture": None, "eval_words": {}}

    tokenized = _tokenize(corpus.train, tokenizer, tokens, cfg)
    counts = {n: t.lengths for n, t in tokenized.items()}
    picks, plans = plan_mixture(counts, _by_source(cfg, "weight"), _by_source(cfg, "share"), seed=cfg.train.seed)
    if len(plans) > 1 or any(p.factor != 1 for p in plans):
        log("source mixture (tokens):\n" + plan_table(plans))
    key = hashlib.sha256(json.dumps([*settings, {n: t.key for n, t in tokenized.items()}, cfg.train.seed]).encode())
    for name in tokenized:
        key.update(np.ascontiguousarray(picks[name], dtype=np.int64).tobytes())
    manifest["train"] = f"train-{key.hexdigest()[:32]}.arrow"
    manifest["mixture"] = plans_as_dicts(plans)
    path = folder / manifest["train"]
    if open_blocks(path) is None:  # a resumed stage skips mixing, not only packing
        pack_blocks(
            mix_documents(tokenized, picks, seed=cfg.train.seed),
            block_size=cfg.data.block_size,
            pad_id=pad_id,
            mode=mode,
            path=path,
        )
    del tokenized

    for name, tok in _tokenize(corpus.eval, tokenizer, tokens, cfg).items():
        docs = corpus.eval[name]
        if cfg.data.max_eval_tokens:
            within = np.cumsum(tok.lengths) - tok.lengths < cfg.data.max_eval_tokens  # documents started below the cap
            tok = tok.select(np.flatnonzero(within))
            docs = docs.select(np.flatnonzero(within))
        manifest["eval_words"][name] = _words(docs)
        key = hashlib.sha256(json.dumps([*settings, name, tok.key, cfg.data.max_eval_tokens]).encode())
        manifest["eval"][name] = f"eval-{key.hexdigest()[:32]}.arrow"
        if open_blocks(folder / manifest["eval"][name]) is None:
            pack_blocks(
                tok, block_size=cfg.data.block_size, pad_id=pad_id, mode=mode, path=folder / manifest["eval"][name]
            )
    write_json(folder / MANIFEST, manifest)  # atomic: another node sharing the folder may be reading it
    return manifest


def _words(docs) -> int:
    """Whitespace-separated words of held-out documents, a batch at a time (spooled texts)."""
    n = 0
    for start in range(0, len(docs), 512):
        texts = (
            docs.texts(start, start + 512) if hasattr(docs, "texts") else [d.text for d in docs[start : start + 512]]
        )
        n += sum(len(t.split()) for t in texts)
    return n


def _tokenize(docs_by_source: dict, tokenizer, tokens: ObjectiveTokens, cfg: PretrainConfig) -> dict:
    """Every source tokenized as flat arrays, through the on-disk cache."""
    return {
        name: tokenize_arrays(
            docs,
            tokenizer,
            separator=tokens.separator,
            cache_dir=cfg.data.cache_dir,
            num_proc=cfg.data.num_proc,
            with_word_starts=tokens.word_starts,
        )
        for name, docs in docs_by_source.items()
    }


def _by_source(cfg: PretrainConfig, attr: str) -> dict:
    """A per-source recipe setting (weight, share) keyed by the source's name."""
    return {source_name(src): getattr(src, attr) for src in cfg.data.sources}
