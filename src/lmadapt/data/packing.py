"""Tokenize documents once (cached on disk) and pack them into fixed-size blocks, dropping no token.

    blocks, acct = build_blocks(docs, tokenizer, block_size=512, mode="document", objective="causal")
    print(acct.table())

Steps
  1. :func:`tokenize_documents`: the fast tokenizer encodes every document *without* its own special
     tokens; a separator is appended: EOS for causal models, SEP for masked (encoder) models. For masked
     models a CLS token (when the tokenizer has one) is also *prepended* to every document, so each
     packed document looks like BERT's ``[CLS] text [SEP]``. Results are cached on disk under
     ``cache_dir/<sha256 key>/`` (numpy arrays, written to a temp folder then renamed), keyed by the
     tokenizer (serialized backend + special tokens), the texts and the settings, so a rerun skips
     tokenization. Returns a ``datasets.Dataset`` (one row per document: ``input_ids`` and, for
     whole-word masking, ``word_starts``); ``select``/``concatenate_datasets`` work on it, and
     :func:`token_arrays` gives flat numpy arrays (e.g. ``np.diff(token_arrays(ds).offsets)`` = lengths).
  2. :func:`pack_blocks`: the documents are concatenated and cut into ``block_size`` blocks. A document
     longer than a block continues in the next block; the last block is padded. Nothing is truncated:
     :class:`TokenAccounting` computes ``tokens_dropped`` from the blocks (it is 0).

Columns of the packed ``datasets.Dataset`` (numpy format, one row per block of length L):
  input_ids     [L] token ids; padding holds ``pad_id``
  position_ids  [L] ``document`` mode: restart at 0 at every document start, at every block start and
                at the first padding token; ``concat`` mode: 0..L-1
  labels        [L] causal-LM labels (HF convention, the model shifts internally): the token id, or -100
                on padding and, in ``document`` mode, on the first token of every document piece in the
                block (it cannot be predicted from the previous document). Masked-LM collators ignore it.
  is_padding    [L] 1 on padding, else 0 (``pad_id`` may equal a real token id, e.g. EOS)
  word_starts   [L] (when tokenized with word starts) 1 where a token begins a word (whole-word masking)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK = 1000  # documents per encode_batch call (bounds the memory held by Encoding objects)
Mode = Literal["document", "concat"]
Objective = Literal["causal", "masked"]


# --------------------------------------------------------------------------------------------------
# accounting
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenAccounting:
    """Where every token went; JSON-able with ``dataclasses.asdict`` (or :meth:`to_dict`)."""

    documents: int
    tokens: int  # tokens of all documents, separator (and CLS) tokens included
    blocks: int
    block_size: int
    padding_tokens: int
    tokens_dropped: int  # input tokens missing from the blocks; computed, must be 0
    non_pad_fraction: float
    mode: str  # "document" | "concat"

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("documents", f"{self.documents:,}"),
            ("tokens (incl. separators)", f"{self.tokens:,}"),
            ("blocks", f"{self.blocks:,} x {self.block_size}"),
            ("padding tokens", f"{self.padding_tokens:,}"),
            ("tokens dropped", f"{self.tokens_dropped:,}"),
            ("non-pad fraction", f"{self.non_pad_fraction:.2%}"),
            ("packing mode", self.mode),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------------------
# tokenized documents
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenizedDocs:
    """Tokenized documents as flat arrays: document ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    Every document already ends with its separator (and starts with CLS for masked models).
    :func:`pack_blocks` accepts it directly; :func:`token_arrays` turns a tokenized Dataset into one."""

    ids: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [documents + 1]
    word_starts: np.ndarray | None = None  # uint8 [total tokens]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {"input_ids": self.ids[a:b].tolist()}
        if self.word_starts is not None:
            out["word_starts"] = self.word_starts[a:b].tolist()
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, order: Sequence[int] | np.ndarray) -> "TokenizedDocs":
        """The documents in ``order`` (a permutation or subset), as new flat arrays."""
        order = np.asarray(order, dtype=np.int64)
        lengths = self.lengths[order]
        starts = self.offsets[:-1][order]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        doc = np.repeat(np.arange(len(order)), lengths)
        src = starts[doc] + (np.arange(offsets[-1]) - offsets[:-1][doc])
        ws = self.word_starts[src] if self.word_starts is not None else None
        return TokenizedDocs(self.ids[src], offsets, ws)

    def to_dataset(self, fingerprint: str | None = None):
        """A ``datasets.Dataset`` with one row per document (``input_ids`` [+ ``word_starts``])."""
        import datasets
        import pyarrow as pa

        big = self.num_tokens >= 2**31 - 1
        list_type = pa.LargeListArray if big else pa.ListArray
        offsets = pa.array(self.offsets.astype(np.int64 if big else np.int32))
        cols = {"input_ids": list_type.from_arrays(offsets, pa.array(np.ascontiguousarray(self.ids)))}
        if self.word_starts is not None:
            cols["word_starts"] = list_type.from_arrays(offsets, pa.array(np.ascontiguousarray(self.word_starts)))
        if fingerprint is None:
            fingerprint = _arrays_fingerprint(self, "docs")
        return datasets.Dataset(pa.table(cols), fingerprint=fingerprint)


def _arrays_fingerprint(docs: TokenizedDocs, *extra) -> str:
    fp = hashlib.sha256(json.dumps([FORMAT_VERSION, *extra]).encode())
    for arr in (docs.ids, docs.offsets, docs.word_starts):
        fp.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
    return fp.hexdigest()[:32]


def _texts(texts: Iterable[Any]) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            t = getattr(t, "text", t)
        if not isinstance(t, str):
            raise TypeError(f"document {i}: expected a string or an object with .text, got {type(t).__name__}")
        out.append(t)
    return out


def _backend(tokenizer):
    """The Rust tokenizer, without truncation/padding (which would silently cut documents)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; packing needs a "
                         "PreTrainedTokenizerFast (load it with use_fast=True or convert it)")
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
    special = {n: [getattr(tokenizer, f"{n}_token", None) and str(getattr(tokenizer, f"{n}_token")),
                   getattr(tokenizer, f"{n}_token_id", None)] for n in _SPECIAL_NAMES}
    h.update(json.dumps({"special": special, "len": len(tokenizer)}, sort_keys=True).encode())
    return h.hexdigest()


def _special_id(tokenizer, name: str, why: str) -> int:
    tid = getattr(tokenizer, f"{name}_token_id", None)
    if tid is None:
        raise ValueError(f"the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has no "
                         f"{name.upper()} token, needed {why}; set tokenizer.{name}_token before packing")
    return int(tid)


def _affixes(tokenizer, separator: str) -> tuple[list[int], list[int]]:
    if separator == "eos":
        return [], [_special_id(tokenizer, "eos", "to separate documents for causal LM (separator='eos')")]
    if separator == "sep":
        sep = _special_id(tokenizer, "sep", "to separate documents for masked LM (separator='sep')")
        cls = getattr(tokenizer, "cls_token_id", None)
        return ([int(cls)] if cls is not None else []), [sep]
    raise ValueError(f"separator must be 'eos' or 'sep', got {separator!r}")


def default_cache_dir() -> Path:
    env = os.environ.get("LMADAPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lmadapt" / "tokenized"


def cache_key(texts: Sequence[str], tokenizer, *, separator: str, with_word_starts: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(tokenizer),
                         "separator": separator, "affixes": _affixes(tokenizer, separator),
                         "word_starts": bool(with_word_starts), "documents": len(texts)}).encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _encode(backend, texts: list[str], prefix: list[int], suffix: list[int], with_word_starts: bool):
    """Encode ``texts`` -> (ids int32, lengths int64, word_starts uint8|None), affixes included."""
    ids_parts, len_parts, wid_parts = [], [], []
    # encode_batch_fast skips character offsets (~1/3 faster) but also loses word ids
    encode = backend.encode_batch if with_word_starts or not hasattr(backend, "encode_batch_fast") \
        else backend.encode_batch_fast
    for s in range(0, len(texts), _CHUNK):
        encs = encode(texts[s:s + _CHUNK], add_special_tokens=False)
        len_parts.append(np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs)))
        n = int(len_parts[-1].sum())
        ids_parts.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int32, count=n))
        if with_word_starts:
            wids = itertools.chain.from_iterable(e.word_ids for e in encs)
            wid_parts.append(np.fromiter((-1 if w is None else w for w in wids), dtype=np.int64, count=n))
    raw_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
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
    if with_word_starts:
        wid = np.concatenate(wid_parts) if wid_parts else np.zeros(0, np.int64)
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
    return _encode(_WORKER_BACKEND, texts, prefix, suffix, with_word_starts)


def tokenize_documents(texts: Iterable[Any], tokenizer, *, separator: Literal["eos", "sep"] = "eos",
                       cache_dir: str | os.PathLike | None = None, num_proc: int | None = None,
                       with_word_starts: bool = False, cache: bool = True):
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
    texts = _texts(texts)
    prefix, suffix = _affixes(tokenizer, separator)
    backend = _backend(tokenizer)
    t0 = time.perf_counter()
    key = cache_key(texts, tokenizer, separator=separator, with_word_starts=with_word_starts)
    final = None
    if cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = root / key
        loaded = _load(final, with_word_starts)
        if loaded is not None:
            logger.info("tokenization cache hit: %s (%d documents, %d tokens)", final, len(loaded), loaded.num_tokens)
            return _result(loaded, key, True, final)

    if num_proc is not None and num_proc > 1 and len(texts) > _CHUNK:
        import concurrent.futures as cf
        import multiprocessing as mp

        step = max(_CHUNK, -(-len(texts) // (num_proc * 4)))
        jobs = [(texts[s:s + step], prefix, suffix, with_word_starts) for s in range(0, len(texts), step)]
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with cf.ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_worker_init,
                                    initargs=(backend.to_str(),)) as pool:
            parts = list(pool.map(_worker_encode, jobs))
        ids = np.concatenate([p[0] for p in parts])
        lengths = np.concatenate([p[1] for p in parts])
        ws = np.concatenate([p[2] for p in parts]) if with_word_starts else None
    else:
        ids, lengths, ws = _encode(backend, texts, prefix, suffix, with_word_starts)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out = TokenizedDocs(ids, offsets, ws)
    if final is not None:
        _save(final, out, meta={"format": FORMAT_VERSION, "documents": len(texts), "tokens": out.num_tokens,
                                "separator": separator, "with_word_starts": with_word_starts,
                                "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__})
    logger.info("tokenized %d documents -> %d tokens in %.1fs%s", len(out), out.num_tokens,
                time.perf_counter() - t0, f" (cached at {final})" if final else "")
    return _result(out, key, False, final)


def _result(docs: TokenizedDocs, key: str, hit: bool, path: Path | None):
    ds = docs.to_dataset(fingerprint=key[:32])
    ds.cache_hit = hit
    ds.cache_path = str(path) if path is not None else None
    return ds


def _load(folder: Path, with_word_starts: bool) -> TokenizedDocs | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            return None
        ids = np.load(folder / "ids.npy")
        offsets = np.load(folder / "offsets.npy")
        ws = np.load(folder / "word_starts.npy") if with_word_starts else None
    except (OSError, ValueError):
        return None
    if offsets[-1] != len(ids) or (ws is not None and len(ws) != len(ids)):
        logger.warning("ignoring inconsistent tokenization cache %s", folder)
        return None
    return TokenizedDocs(ids, offsets, ws)


def _save(folder: Path, docs: TokenizedDocs, meta: dict) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:16]}-", dir=folder.parent))
    except OSError as exc:
        logger.warning("tokenization cache not written (%s): %s", folder.parent, exc)
        return
    try:
        np.save(tmp / "ids.npy", docs.ids)
        np.save(tmp / "offsets.npy", docs.offsets)
        if docs.word_starts is not None:
            np.save(tmp / "word_starts.npy", docs.word_starts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks completeness
        os.replace(tmp, folder)  # atomic; fails if another process already renamed a complete copy
    except OSError as exc:
        if not (folder / "meta.json").exists():
            logger.warning("tokenization cache not written (%s): %s", folder, exc)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------------------
def token_arrays(tokenized) -> TokenizedDocs:
    """Flat arrays (ids, offsets, word_starts) of tokenized documents: a Dataset from
    :func:`tokenize_documents` (also after ``select``/``concatenate_datasets``), a list of token-id
    lists, a list of dicts with ``input_ids`` (+ ``word_starts``), or a :class:`TokenizedDocs`."""
    if isinstance(tokenized, TokenizedDocs):
        return tokenized
    if hasattr(tokenized, "column_names") and hasattr(tokenized, "with_format"):  # datasets.Dataset
        return _dataset_arrays(tokenized)
    rows = tokenized
    seqs, wss = [], []
    for r in rows:
        if isinstance(r, dict):
            seqs.append(np.asarray(r["input_ids"], dtype=np.int64))
            wss.append(None if r.get("word_starts") is None else np.asarray(r["word_starts"], dtype=np.uint8))
        else:
            seqs.append(np.asarray(r, dtype=np.int64))
            wss.append(None)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
    ws = None
    if seqs and all(w is not None for w in wss):
        ws = np.concatenate(wss)
    return TokenizedDocs(ids, offsets, ws)


def _dataset_arrays(ds) -> TokenizedDocs:
    import pyarrow as pa

    if "input_ids" not in ds.column_names:
        raise ValueError(f"tokenized dataset needs an input_ids column, has {ds.column_names}")
    if len(ds) == 0:
        return TokenizedDocs(np.zeros(0, np.int32), np.zeros(1, np.int64),
                             np.zeros(0, np.uint8) if "word_starts" in ds.column_names else None)
    table = ds.with_format("arrow")[:]  # honours select()/shuffle() index mappings

    def flat(name, dtype):
        col = table.column(name).combine_chunks()
        if isinstance(col, pa.ChunkedArray):
            col = pa.concat_arrays(col.chunks)
        lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False), lengths

    ids, lengths = flat("input_ids", np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ws = None
    if "word_starts" in ds.column_names:
        ws, ws_len = flat("word_starts", np.uint8)
        if not np.array_equal(ws_len, lengths):
            raise ValueError("word_starts and input_ids have different lengths")
    return TokenizedDocs(ids, offsets, ws)


def pack_blocks(tokenized, *, block_size: int, pad_id: int, mode: Mode = "document"):
    """Concatenate tokenized documents and cut them into ``block_size`` blocks; nothing is dropped.

    ``tokenized``: the Dataset from :func:`tokenize_documents` (also after ``select`` /
    ``concatenate_datasets``), a list of token-id lists, a list of dicts with ``input_ids``
    (+ ``word_starts``) or a :class:`TokenizedDocs`. Returns
    ``(datasets.Dataset in numpy format, TokenAccounting)``; the columns are described in the module
    docstring.
    """
    import datasets
    import pyarrow as pa

    if mode not in ("document", "concat"):
        raise ValueError(f"mode must be 'document' or 'concat', got {mode!r}")
    if int(block_size) != block_size or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
    if pad_id is None:
        raise ValueError("pad_id is required (the tokenizer's pad token, or EOS for causal models without one)")
    L = int(block_size)
    docs = token_arrays(tokenized)
    n_tok, n_docs = docs.num_tokens, len(docs)
    n_blocks = -(-n_tok // L)
    total = n_blocks * L
    n_pad = total - n_tok

    input_ids = np.full(total, pad_id, dtype=np.int32)
    input_ids[:n_tok] = docs.ids
    is_padding = np.zeros(total, dtype=np.uint8)
    is_padding[n_tok:] = 1

    idx = np.arange(total, dtype=np.int64)
    if mode == "document":
        starts = np.zeros(total, dtype=bool)
        doc_starts = docs.offsets[:-1][docs.lengths > 0]
        starts[doc_starts] = True
        starts[::L] = True  # a document continued from the previous block restarts at 0
        if n_pad:
            starts[n_tok] = True  # padding is a run of its own
        last_start = np.maximum.accumulate(np.where(starts, idx, 0))
        position_ids = (idx - last_start).astype(np.int32)
    else:
        starts = None
        position_ids = (idx % L).astype(np.int32)

    labels = input_ids.astype(np.int32, copy=True)
    labels[is_padding.astype(bool)] = -100
    if mode == "document":
        labels[starts] = -100

    columns = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "is_padding": is_padding}
    if docs.word_starts is not None:
        ws = np.zeros(total, dtype=np.uint8)
        ws[:n_tok] = docs.word_starts
        ws[::L] = 1  # a word continued from the previous block starts afresh
        if n_pad:
            ws[n_tok] = 1
        columns["word_starts"] = ws

    kept = int(total - is_padding.sum())
    accounting = TokenAccounting(
        documents=n_docs, tokens=n_tok, blocks=n_blocks, block_size=L, padding_tokens=int(n_pad),
        tokens_dropped=int(n_tok - kept), non_pad_fraction=float(kept / total) if total else 0.0, mode=mode)
    if accounting.tokens_dropped:  # cannot happen by construction; guards future edits
        raise AssertionError(f"packing dropped {accounting.tokens_dropped} tokens")

    table = pa.table({k: pa.FixedSizeListArray.from_arrays(pa.array(v), L) for k, v in columns.items()})
    # An explicit fingerprint: datasets would otherwise hash the whole table (seconds for 10M tokens).
    dataset = datasets.Dataset(table, fingerprint=_arrays_fingerprint(docs, L, int(pad_id), mode))
    dataset = dataset.with_format("numpy")
    return dataset, accounting


def resolve_pad_id(tokenizer, objective: Objective) -> int:
    """``pad_token_id``; causal models without one pad with EOS (padding is masked out anyway)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    if objective == "causal":
        return _special_id(tokenizer, "eos", "as padding (the tokenizer has no pad token)")
    return _special_id(tokenizer, "pad", "to pad the last block of a masked-LM dataset")


def build_blocks(texts: Iterable[Any], tokenizer, *, block_size: int, mode: Mode = "document",
                 objective: Objective = "causal", cache_dir: str | os.PathLike | None = None,
                 num_proc: int | None = None, seed: int | None = 0, cache: bool = True):
    """Tokenize (cached) and pack: EOS-separated for ``causal``, ``[CLS] .. [SEP]`` with word starts
    for ``masked``. ``seed``: documents are packed in an order shuffled with this seed (so a block
    mixes sources); None keeps the input order. Returns ``(dataset, TokenAccounting)``."""
    if objective not in ("causal", "masked"):
        raise ValueError(f"objective must be 'causal' or 'masked', got {objective!r}")
    separator = "eos" if objective == "causal" else "sep"
    pad_id = resolve_pad_id(tokenizer, objective)
    docs = tokenize_documents(texts, tokenizer, separator=separator, cache_dir=cache_dir, num_proc=num_proc,
                              with_word_starts=objective == "masked", cache=cache)
    if seed is not None and len(docs) > 1:
        docs = token_arrays(docs).select(np.random.default_rng(seed).permutation(len(docs)))
    return pack_blocks(docs, block_size=block_size, pad_id=pad_id, mode=mode)


__all__ = ["TokenAccounting", "TokenizedDocs", "build_blocks", "cache_key", "default_cache_dir", "pack_blocks",
           "resolve_pad_id", "token_arrays", "tokenize_documents", "tokenizer_fingerprint"]
