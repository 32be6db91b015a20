"""Tokenize documents once, cached on disk, as flat arrays: the input of packing (:mod:`.packing`).

:func:`tokenize_documents` (a ``datasets.Dataset``, one row per document) and :func:`tokenize_arrays`
(a :class:`TokenizedDocs`: flat numpy arrays, no copy) encode every document *without* the
tokenizer's own special tokens and append a separator: EOS for causal models, SEP for masked (encoder)
models, which also get a CLS token prepended (``[CLS] text [SEP]``). Results are cached under
``cache_dir/<sha256 key>/`` (numpy arrays, written to a temp folder then renamed; read back
memory-mapped, so the processes of a node share one copy), keyed by the tokenizer (serialized
backend + special tokens), the texts and the settings. Writing and reading a cache entry:
:mod:`.token_store`; the flat arrays and turning other tokenized forms into them: :mod:`.tokenized_docs`.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from .token_store import TokenSink, default_cache_dir, in_memory, load_entry, publish, work_folder
from .tokenized_docs import FORMAT_VERSION

logger = logging.getLogger(__name__)

# One encode_batch call takes at most _CHUNK documents and about _CHUNK_CHARS characters: the
# Encoding objects it returns hold ~100 bytes a token, so a batch of long documents stays ~50 MB.
_CHUNK = 1000
_CHUNK_CHARS = 2_000_000


class _TextList:
    """Texts in a list, read the way a spooled source is read (``texts(start, stop)``,
    ``char_lengths()``), so tokenizing has one way to read either."""

    def __init__(self, texts: list[str]):
        self._texts = texts

    def __len__(self) -> int:
        return len(self._texts)

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self._texts[start:stop]

    def char_lengths(self) -> np.ndarray:
        return np.fromiter((len(t) for t in self._texts), dtype=np.int64, count=len(self._texts))


def _texts(texts: Iterable[Any]):
    """The documents' texts, read a batch at a time: a spooled source as it is, else a :class:`_TextList`
    of strings (or of the documents' ``.text``)."""
    from .spool import SpooledDocuments

    if isinstance(texts, (SpooledDocuments, _TextList)):
        return texts
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            t = getattr(t, "text", t)
        if not isinstance(t, str):
            raise TypeError(f"document {i}: expected a string or an object with .text, got {type(t).__name__}")
        out.append(t)
    return _TextList(out)


def _backend(tokenizer):
    """The Rust tokenizer, without truncation/padding (which would silently cut documents)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; packing needs a "
            "PreTrainedTokenizerFast (load it with use_fast=True or convert it)"
        )
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


_SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the serialized backend tokenizer plus the special tokens and their ids."""
    h = hashlib.sha256(_backend(tokenizer).to_str().encode("utf-8"))
    special = {
        n: [
            getattr(tokenizer, f"{n}_token", None) and str(getattr(tokenizer, f"{n}_token")),
            getattr(tokenizer, f"{n}_token_id", None),
        ]
        for n in _SPECIAL_NAMES
    }
    h.update(json.dumps({"special": special, "len": len(tokenizer)}, sort_keys=True).encode())
    return h.hexdigest()


def special_id(tokenizer, name: str, why: str) -> int:
    tid = getattr(tokenizer, f"{name}_token_id", None)
    if tid is None:
        raise ValueError(
            f"the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has no "
            f"{name.upper()} token, needed {why}; set tokenizer.{name}_token before packing"
        )
    return int(tid)


def _affixes(tokenizer, separator: str) -> tuple[list[int], list[int]]:
    if separator == "eos":
        return [], [special_id(tokenizer, "eos", "to separate documents for causal LM (separator='eos')")]
    if separator == "sep":
        sep = special_id(tokenizer, "sep", "to separate documents for masked LM (separator='sep')")
        cls = getattr(tokenizer, "cls_token_id", None)
        return ([int(cls)] if cls is not None else []), [sep]
    raise ValueError(f"separator must be 'eos' or 'sep', got {separator!r}")


def cache_key(texts: Sequence[str], tokenizer, *, separator: str, with_word_starts: bool) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "separator": separator,
                "affixes": _affixes(tokenizer, separator),
                "word_starts": bool(with_word_starts),
                "documents": len(texts),
            }
        ).encode()
    )
    for t in _each_text(_texts(texts)):
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _encode_batches(backend, texts, prefix: list[int], suffix: list[int], with_word_starts: bool):
    """Encode ``texts`` a batch at a time: yields (ids int32, lengths int64, word_starts uint8|None)
    per batch, affixes included, so the Encoding objects and index temporaries stay batch-sized."""
    # encode_batch_fast skips character offsets (~1/3 faster) but also loses word ids
    encode = (
        backend.encode_batch
        if with_word_starts or not hasattr(backend, "encode_batch_fast")
        else backend.encode_batch_fast
    )
    for s, e in _batches(texts.char_lengths()):
        encs = encode(texts.texts(s, e), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        n = int(lengths.sum())
        raw_ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int32, count=n)
        wid = None
        if with_word_starts:
            wids = itertools.chain.from_iterable(e.word_ids for e in encs)
            wid = np.fromiter((-1 if w is None else w for w in wids), dtype=np.int64, count=n)
        del encs
        yield _with_affixes(raw_ids, lengths, wid, prefix, suffix)


def _batches(lengths: Sequence[int], scale: int = 1):
    """(start, end) of consecutive batches of documents with these character ``lengths``: at most
    ``scale`` x _CHUNK documents and about ``scale`` x _CHUNK_CHARS characters each."""
    docs, chars = scale * _CHUNK, scale * _CHUNK_CHARS
    s, n = 0, len(lengths)
    while s < n:
        e, total = s, 0
        while e < n and e - s < docs and (total < chars or e == s):
            total += int(lengths[e])
            e += 1
        yield s, e
        s = e


def _each_text(texts):
    """Every text in order, read a batch at a time."""
    for s in range(0, len(texts), _CHUNK):
        yield from texts.texts(s, min(s + _CHUNK, len(texts)))


def _concat_parts(parts: list, with_word_starts: bool):
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), (np.zeros(0, np.uint8) if with_word_starts else None)
    ids = np.concatenate([p[0] for p in parts])
    lengths = np.concatenate([p[1] for p in parts])
    ws = np.concatenate([p[2] for p in parts]) if with_word_starts else None
    return ids, lengths, ws


def _with_affixes(raw_ids, lengths, wid, prefix: list[int], suffix: list[int]):
    """One batch's tokens with the prefix/suffix ids put around every document (and word starts
    from the word ids ``wid``, when given)."""
    ndocs, extra = len(lengths), len(prefix) + len(suffix)
    raw_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc = np.repeat(np.arange(ndocs), lengths)
    new_len = lengths + extra
    new_off = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
    dest = np.arange(len(raw_ids), dtype=np.int64) + doc * extra + len(prefix)
    ids = np.empty(int(new_off[-1]), dtype=np.int32)
    ids[dest] = raw_ids
    for k, tid in enumerate(prefix):
        ids[new_off[:-1] + k] = tid
    for k, tid in enumerate(suffix):
        ids[new_off[1:] - len(suffix) + k] = tid
    ws = None
    if wid is not None:
        raw_ws = np.ones(len(wid), dtype=np.uint8)
        if len(wid) > 1:
            raw_ws[1:] = (wid[1:] != wid[:-1]) | (wid[1:] < 0)  # tokens outside any word stand alone
        raw_ws[raw_off[:-1][lengths > 0]] = 1  # a document's first token starts a word
        ws = np.ones(len(ids), dtype=np.uint8)  # separator / CLS tokens are words of their own
        ws[dest] = raw_ws
    return ids, new_len, ws


_WORKER_BACKEND = None


def _worker_init(tokenizer_json: str):
    global _WORKER_BACKEND
    from tokenizers import Tokenizer

    _WORKER_BACKEND = Tokenizer.from_str(tokenizer_json)


def _worker_encode(args):
    texts, prefix, suffix, with_word_starts = args
    return _concat_parts(
        list(_encode_batches(_WORKER_BACKEND, _TextList(texts), prefix, suffix, with_word_starts)), with_word_starts
    )


def tokenize_documents(
    texts: Iterable[Any],
    tokenizer,
    *,
    separator: Literal["eos", "sep"] = "eos",
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    with_word_starts: bool = False,
    cache: bool = True,
):
    """Tokenize every document (strings or objects with ``.text``) and append the separator.

    ``separator="eos"`` (causal LM) appends ``tokenizer.eos_token_id``; ``"sep"`` (masked LM) appends
    ``sep_token_id`` and prepends ``cls_token_id`` when the tokenizer has a CLS token. A missing token
    raises ValueError. The tokenizer's own special tokens (BOS, ``[CLS] .. [SEP]`` templates) are not
    added. ``with_word_starts`` also records where words begin (from the fast tokenizer's
    ``word_ids``; separator/CLS tokens are words of their own).

    Returns a ``datasets.Dataset``, one row per document in input order, with ``input_ids`` (and
    ``word_starts``). Cached under ``cache_dir`` (default :func:`default_cache_dir`) unless
    ``cache=False``; the returned object carries ``cache_hit`` (bool) and ``cache_path`` attributes
    (not kept by ``select``/``map``). ``num_proc`` None/1: one process, the Rust tokenizer's own
    threads encode each batch in parallel; > 1: that many worker processes.
    """
    docs = tokenize_arrays(
        texts,
        tokenizer,
        separator=separator,
        cache_dir=cache_dir,
        num_proc=num_proc,
        with_word_starts=with_word_starts,
        cache=cache,
    )
    ds = docs.to_dataset(fingerprint=docs.key[:32])
    ds.cache_hit, ds.cache_path = docs.cache_hit, docs.cache_path
    return ds


def tokenize_arrays(
    texts: Iterable[Any],
    tokenizer,
    *,
    separator: Literal["eos", "sep"] = "eos",
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    with_word_starts: bool = False,
    cache: bool = True,
):
    """:func:`tokenize_documents` as a :class:`TokenizedDocs`: flat arrays, memory-mapped from the
    cache on a hit (no copy, shared by the processes of a node), with ``key`` and ``cache_hit`` set."""
    texts = _texts(texts)
    prefix, suffix = _affixes(tokenizer, separator)
    backend = _backend(tokenizer)
    t0 = time.perf_counter()
    key = cache_key(texts, tokenizer, separator=separator, with_word_starts=with_word_starts)
    final = None
    if cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = root / key
        loaded = load_entry(final, with_word_starts)
        if loaded is not None:
            logger.info("tokenization cache hit: %s (%d documents, %d tokens)", final, len(loaded), loaded.num_tokens)
            loaded.key, loaded.cache_hit, loaded.cache_path = key, True, str(final)
            return loaded

    meta = {
        "format": FORMAT_VERSION,
        "documents": len(texts),
        "separator": separator,
        "with_word_starts": with_word_starts,
        "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
    }
    work = work_folder(final)
    try:
        sink = TokenSink(work, with_word_starts)
        try:
            for part in _encoded_parts(backend, texts, prefix, suffix, with_word_starts, num_proc):
                sink.add(part)
        finally:
            sink.close()
        sink.finish(meta)
        # The cache entry, memory-mapped: the node's other processes share its pages. Without a
        # cache (or where it cannot be written), the arrays are read into memory and the folder goes.
        out = publish(work, final, with_word_starts) if final is not None else None
        if out is None:
            out = in_memory(work, with_word_starts)
            final = None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.key, out.cache_path = key, str(final) if final is not None else None
    logger.info(
        "tokenized %d documents -> %d tokens in %.1fs%s",
        len(out),
        out.num_tokens,
        time.perf_counter() - t0,
        f" (cached at {final})" if final else "",
    )
    return out


def _encoded_parts(backend, texts, prefix, suffix, with_word_starts: bool, num_proc: int | None):
    """Encoded parts in document order: batches in this process, or larger slices from ``num_proc`` workers."""
    if num_proc is not None and num_proc > 1 and len(texts) > _CHUNK:
        import concurrent.futures as cf
        import multiprocessing as mp

        # Jobs of ~4 batches, at most 2 per worker in flight: the texts waiting in the pool's queue
        # stay ~16M characters a worker, not the whole corpus pickled at once.
        jobs = _batches(texts.char_lengths(), scale=4)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with cf.ProcessPoolExecutor(
            num_proc, mp_context=ctx, initializer=_worker_init, initargs=(backend.to_str(),)
        ) as pool:
            pending = collections.deque()
            for s, e in jobs:
                pending.append(pool.submit(_worker_encode, (texts.texts(s, e), prefix, suffix, with_word_starts)))
                if len(pending) >= 2 * num_proc:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    else:
        yield from _encode_batches(backend, texts, prefix, suffix, with_word_starts)
