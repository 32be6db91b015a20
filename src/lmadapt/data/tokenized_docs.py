"""Tokenized documents as flat arrays (:class:`TokenizedDocs`), the format the token cache stores
(``FORMAT_VERSION``), their fingerprint, gathering chosen documents from several of them (the
replay mixture) a slice at a time, and any other tokenized form (a Dataset, lists of ids) turned
into them (:func:`token_arrays`). tokenize.py produces them, mixing.py and packing.py consume them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np


FORMAT_VERSION = 1


@dataclass
class TokenizedDocs:
    """Tokenized documents as flat arrays: document ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    Every document already ends with its separator (and starts with CLS for masked models).
    :func:`pack_blocks` accepts it directly; :func:`token_arrays` turns a tokenized Dataset into one."""

    ids: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [documents + 1]
    word_starts: np.ndarray | None = None  # uint8 [total tokens]
    # Set by tokenize_arrays: the cache key (texts + tokenizer + settings), whether it was a hit,
    # and the entry's folder (None when not cached).
    key: str | None = None
    cache_hit: bool = False
    cache_path: str | None = None

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
        return gather_documents([self], np.zeros(len(order), dtype=np.int64), order)

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
            fingerprint = arrays_fingerprint(self, "docs")
        return datasets.Dataset(pa.table(cols), fingerprint=fingerprint)


# Tokens a gather step handles at once: its int64 index temporaries (~40 bytes a token) stay near
# 160 MB however large the corpus, instead of several times the corpus's own size.
_GATHER_TOKENS = 1 << 22


def gather_documents(parts: Sequence[TokenizedDocs], part_of: np.ndarray, doc_of: np.ndarray) -> TokenizedDocs:
    """New flat arrays whose document ``k`` is document ``doc_of[k]`` of ``parts[part_of[k]]``.

    The output is the only full-size allocation: the copy runs in slices of about
    ``_GATHER_TOKENS`` tokens, so mixing or shuffling a corpus needs its size once more, not five times."""
    part_of, doc_of = np.asarray(part_of, dtype=np.int64), np.asarray(doc_of, dtype=np.int64)
    n = len(doc_of)
    lengths, starts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for p, part in enumerate(parts):
        mine = part_of == p
        lengths[mine] = part.lengths[doc_of[mine]]
        starts[mine] = part.offsets[:-1][doc_of[mine]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    has_ws = bool(parts) and all(p.word_starts is not None for p in parts)
    ids = np.empty(int(offsets[-1]), dtype=np.int32)
    ws = np.empty(int(offsets[-1]), dtype=np.uint8) if has_ws else None
    k = 0
    while k < n:  # output documents [k, e): about _GATHER_TOKENS tokens, at least one document
        e = max(k + 1, int(np.searchsorted(offsets, offsets[k] + _GATHER_TOKENS, side="right")) - 1)
        e = min(e, n)
        for p, part in enumerate(parts):
            sel = np.flatnonzero(part_of[k:e] == p) + k
            if not len(sel):
                continue
            doc = np.repeat(np.arange(len(sel)), lengths[sel])
            within = np.arange(len(doc), dtype=np.int64) - np.repeat(
                np.cumsum(lengths[sel]) - lengths[sel], lengths[sel]
            )
            dest = offsets[sel][doc] + within
            src = starts[sel][doc] + within
            ids[dest] = part.ids[src]
            if ws is not None:
                ws[dest] = part.word_starts[src]
        k = e
    return TokenizedDocs(ids, offsets, ws)


def gathered_documents(parts: Sequence[TokenizedDocs], part_of: np.ndarray, doc_of: np.ndarray) -> TokenizedDocs:
    """:func:`gather_documents` without the copy: a :class:`TokenizedDocs` whose ``ids`` (and
    ``word_starts``) gather a slice of tokens when it is read. Packing reads a few million tokens at
    a time, so a mixed corpus is never built whole in memory; only its offsets are (8 bytes a document)."""
    part_of, doc_of = np.asarray(part_of, dtype=np.int64), np.asarray(doc_of, dtype=np.int64)
    lengths = np.zeros(len(doc_of), np.int64)
    for p, part in enumerate(parts):
        mine = part_of == p
        lengths[mine] = part.lengths[doc_of[mine]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    source = _Gatherer(parts, part_of, doc_of, offsets)
    has_ws = bool(parts) and all(p.word_starts is not None for p in parts)
    return TokenizedDocs(
        _GatheredColumn(source, 0, np.int32), offsets, _GatheredColumn(source, 1, np.uint8) if has_ws else None
    )


class _Gatherer:
    """The documents' tokens over a token range, gathered on demand; the last range is kept, so
    reading ids and then word starts of the same slice gathers once."""

    def __init__(self, parts, part_of, doc_of, offsets):
        self.parts, self.part_of, self.doc_of, self.offsets = parts, part_of, doc_of, offsets
        self._last = None

    def tokens(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids, word_starts) of tokens ``a:b`` of the gathered sequence."""
        k0 = int(np.searchsorted(self.offsets, a, side="right")) - 1
        k1 = max(k0 + 1, int(np.searchsorted(self.offsets, b, side="left")))
        if self._last is None or self._last[0] != (k0, k1):
            got = gather_documents(self.parts, self.part_of[k0:k1], self.doc_of[k0:k1])
            self._last = ((k0, k1), got)
        got, base = self._last[1], int(self.offsets[k0])
        ws = None if got.word_starts is None else got.word_starts[a - base : b - base]
        return got.ids[a - base : b - base], ws


class _GatheredColumn:
    """One column (ids or word starts) of :func:`gathered_documents`: slices gather on demand;
    anything else (fancy indexing, ``np.asarray``) gathers the whole column."""

    def __init__(self, source: _Gatherer, which: int, dtype):
        self.source, self.which, self.dtype = source, which, np.dtype(dtype)

    def __len__(self) -> int:
        return int(self.source.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(len(self))
            if b <= a:
                return np.zeros(0, self.dtype)
            return self.source.tokens(a, b)[self.which]
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        whole = self[0 : len(self)] if len(self) else np.zeros(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)


def arrays_fingerprint(docs: TokenizedDocs, *extra) -> str:
    fp = hashlib.sha256(json.dumps([FORMAT_VERSION, *extra]).encode())
    for arr in (docs.ids, docs.offsets, docs.word_starts):
        fp.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
    return fp.hexdigest()[:32]


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
        return TokenizedDocs(
            np.zeros(0, np.int32),
            np.zeros(1, np.int64),
            np.zeros(0, np.uint8) if "word_starts" in ds.column_names else None,
        )
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
