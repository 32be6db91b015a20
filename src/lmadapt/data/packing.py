"""Pack tokenized documents into fixed-size blocks, dropping no token (tokenizing: :mod:`.tokenize`).

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
     :class:`TokenAccounting` computes ``tokens_dropped`` from the blocks (it is 0). Blocks are built
     a slice at a time, so packing needs the output's memory and little more; with ``path`` they are
     written to an Arrow file (temp, then renamed) and come back memory-mapped, out of the process's
     own memory and shared by every process that opens the file.

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

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from ..runtime.outputs import AtomicFile, atomic_write_text
from .objective import Objective, ObjectiveTokens
from .token_store import default_cache_dir
from .tokenize import cache_key, tokenize_arrays, tokenize_documents, tokenizer_fingerprint
from .tokenized_docs import TokenizedDocs, arrays_fingerprint, gather_documents, token_arrays

Mode = Literal["document", "concat"]
# The layout of packed blocks; part of the name a stage gives its blocks file, so a resume never
# reuses blocks an older lmadapt packed differently. Bump it whenever pack_blocks' output changes.
BLOCKS_FORMAT = 1
# Tokens per packed slice: bounds packing's temporaries (~40 bytes a token) to about 160 MB.
_SLICE_TOKENS = 1 << 22


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


def pack_blocks(
    tokenized, *, block_size: int, pad_id: int, mode: Mode = "document", path: str | os.PathLike | None = None
):
    """Concatenate tokenized documents and cut them into ``block_size`` blocks; nothing is dropped.

    ``tokenized``: the Dataset from :func:`tokenize_documents` (also after ``select`` /
    ``concatenate_datasets``), a list of token-id lists, a list of dicts with ``input_ids``
    (+ ``word_starts``) or a :class:`TokenizedDocs`. Returns
    ``(datasets.Dataset in numpy format, TokenAccounting)``; the columns are described in the module
    docstring. ``path``: write the blocks to this Arrow file (and the accounting beside it, as
    ``path.json``) and return the dataset memory-mapped from it; a complete file already there
    (from an earlier run or another process) is used as it is, never replaced.
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
    kept = [0]  # real tokens found in the blocks, counted slice by slice

    schema = _schema(L, docs.word_starts is not None)

    def batches():
        for batch, real in _block_slices(docs, L, int(pad_id), mode, schema):
            kept[0] += real
            yield batch

    if path is not None:
        done = open_blocks(path)
        if done is not None:
            return done  # written by an earlier run or by another process of this job
    if path is None:
        table = pa.Table.from_batches(list(batches()), schema=schema)
    else:
        _write_arrow(Path(path), schema, batches())
    accounting = TokenAccounting(
        documents=n_docs,
        tokens=n_tok,
        blocks=n_blocks,
        block_size=L,
        padding_tokens=int(total - n_tok),
        tokens_dropped=int(n_tok - kept[0]),
        non_pad_fraction=float(kept[0] / total) if total else 0.0,
        mode=mode,
    )
    if accounting.tokens_dropped:  # cannot happen by construction; guards future edits
        raise AssertionError(f"packing dropped {accounting.tokens_dropped} tokens")
    if path is None:
        # An explicit fingerprint: datasets would otherwise hash the whole table (seconds for 10M tokens).
        dataset = datasets.Dataset(table, fingerprint=arrays_fingerprint(docs, L, int(pad_id), mode))
        return dataset.with_format("numpy"), accounting
    atomic_write_text(_sidecar(path), json.dumps(accounting.to_dict(), indent=1))  # last: marks the file complete
    return open_blocks(path)


def open_blocks(path: str | os.PathLike):
    """``(dataset, TokenAccounting)`` of blocks that :func:`pack_blocks` wrote to ``path``, memory-mapped;
    None when there is no complete file there."""
    import datasets

    try:
        accounting = TokenAccounting(**json.loads(_sidecar(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    dataset = datasets.Dataset.from_file(str(path))
    if len(dataset) != accounting.blocks:
        raise RuntimeError(
            f"{path}: holds {len(dataset)} blocks where {_sidecar(path).name} says "
            f"{accounting.blocks}; delete both and rerun"
        )
    return dataset.with_format("numpy"), accounting


def _sidecar(path) -> Path:
    return Path(f"{path}.json")


def _schema(L: int, word_starts: bool):
    import pyarrow as pa

    cols = [
        ("input_ids", pa.int32()),
        ("position_ids", pa.int32()),
        ("labels", pa.int32()),
        ("is_padding", pa.uint8()),
    ] + ([("word_starts", pa.uint8())] if word_starts else [])
    return pa.schema([(name, pa.list_(t, L)) for name, t in cols])


def _block_slices(docs: TokenizedDocs, L: int, pad_id: int, mode: str, schema):
    """(record batch, real tokens in it) for runs of whole blocks of about ``_SLICE_TOKENS`` tokens.

    Blocks are independent (positions restart at every block), so each slice is computed alone."""
    import pyarrow as pa

    n_tok = docs.num_tokens
    n_blocks = -(-n_tok // L)
    doc_starts = docs.offsets[:-1][docs.lengths > 0]
    rows = max(1, _SLICE_TOKENS // L)
    for b0 in range(0, n_blocks, rows):
        t0, t1 = b0 * L, min(n_blocks, b0 + rows) * L
        end = min(t1, n_tok)  # real tokens are [t0, end); the rest of the slice is padding
        n, real = t1 - t0, end - t0
        input_ids = np.full(n, pad_id, dtype=np.int32)
        input_ids[:real] = docs.ids[t0:end]
        is_padding = np.zeros(n, dtype=np.uint8)
        is_padding[real:] = 1
        idx = np.arange(n, dtype=np.int64)
        if mode == "document":
            starts = np.zeros(n, dtype=bool)
            lo, hi = np.searchsorted(doc_starts, [t0, end])
            starts[doc_starts[lo:hi] - t0] = True
            starts[::L] = True  # a document continued from the previous block restarts at 0
            if real < n:
                starts[real] = True  # padding is a run of its own
            position_ids = (idx - np.maximum.accumulate(np.where(starts, idx, 0))).astype(np.int32)
        else:
            position_ids = (idx % L).astype(np.int32)
        labels = input_ids.copy()
        labels[real:] = -100
        if mode == "document":
            labels[starts] = -100
        columns = [input_ids, position_ids, labels, is_padding]
        if docs.word_starts is not None:
            ws = np.zeros(n, dtype=np.uint8)
            ws[:real] = docs.word_starts[t0:end]
            ws[::L] = 1  # a word continued from the previous block starts afresh
            if real < n:
                ws[real] = 1
            columns.append(ws)
        arrays = [pa.FixedSizeListArray.from_arrays(pa.array(c), L) for c in columns]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema), int(n - is_padding.sum())


def _write_arrow(path: Path, schema, batches) -> None:
    """Stream ``batches`` into an Arrow file at ``path`` (the stream format datasets memory-maps):
    a temp file first, then a no-clobber link, so a reader never sees half a file and two writers
    (e.g. two nodes on a shared disk) cannot replace each other's file."""
    import pyarrow as pa

    with AtomicFile(path, clobber=False) as out:
        with pa.OSFile(str(out.tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)


def build_blocks(
    texts: Iterable[Any],
    tokenizer,
    *,
    block_size: int,
    mode: Mode = "document",
    objective: Objective = "causal",
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    seed: int | None = 0,
    cache: bool = True,
):
    """Tokenize (cached) and pack: EOS-separated for ``causal``, ``[CLS] .. [SEP]`` with word starts
    for ``masked``. ``seed``: documents are packed in an order shuffled with this seed (so a block
    mixes sources); None keeps the input order. Returns ``(dataset, TokenAccounting)``."""
    tokens = ObjectiveTokens.of(tokenizer, objective)
    docs = tokenize_documents(
        texts,
        tokenizer,
        separator=tokens.separator,
        cache_dir=cache_dir,
        num_proc=num_proc,
        with_word_starts=tokens.word_starts,
        cache=cache,
    )
    if seed is not None and len(docs) > 1:
        docs = token_arrays(docs).select(np.random.default_rng(seed).permutation(len(docs)))
    return pack_blocks(docs, block_size=block_size, pad_id=tokens.pad_id, mode=mode)


__all__ = [
    "TokenAccounting",
    "TokenizedDocs",
    "build_blocks",
    "cache_key",
    "default_cache_dir",
    "gather_documents",
    "open_blocks",
    "pack_blocks",
    "token_arrays",
    "tokenize_arrays",
    "tokenize_documents",
    "tokenizer_fingerprint",
]
