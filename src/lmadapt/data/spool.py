"""Documents spooled to disk: a large corpus's texts in Arrow files, memory-mapped, not in memory.

    writer = SpoolWriter(folder / "train-0.arrow", source="computing")
    for text, origin in ...: writer.add(text, origin)
    docs = writer.close()                    # SpooledDocuments: a Sequence[Document]
    docs.texts(0, 1000)                      # a batch of texts, read from the mapped file

``read_corpus(cfg, spool_dir=...)`` writes every source's surviving documents here as it reads
them, so the reading process keeps a few numbers per document (a hash for deduplication and the
held-out split, the length), not the text, however large the corpus. The tokenizer then reads the
texts back a batch at a time with plain file reads (the file's pages stay in the kernel's page
cache, which it drops under pressure, not in the process's memory).
"""

from __future__ import annotations

import array
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..runtime.outputs import AtomicFile
from .documents import Document

# Rows per record batch: small enough that a batch of long documents stays a few MB in memory.
_BATCH_ROWS = 1000
_BATCH_CHARS = 4_000_000


def _schema():
    import pyarrow as pa

    return pa.schema([("text", pa.large_string()), ("origin", pa.string())])


class SpoolWriter:
    """Appends documents to an Arrow file (a temp file, renamed into place by :meth:`close`)."""

    def __init__(self, path: str | os.PathLike, source: str):
        import pyarrow as pa

        self.path, self.source = Path(path), source
        self._out = AtomicFile(self.path)
        self._sink = pa.OSFile(str(self._out.tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, _schema())
        self._texts: list[str] = []
        self._origins: list[str] = []
        self._chars = 0
        self._lengths = array.array("q")  # characters per document: 8 bytes each, not a Python int
        self._batch_rows = [0]

    def add(self, text: str, origin: str) -> None:
        self._texts.append(text)
        self._origins.append(origin)
        self._lengths.append(len(text))
        self._chars += len(text)
        if len(self._texts) >= _BATCH_ROWS or self._chars >= _BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._texts:
            self._writer.write_batch(
                pa.record_batch(
                    [pa.array(self._texts, pa.large_string()), pa.array(self._origins, pa.string())], schema=_schema()
                )
            )
            self._batch_rows.append(self._batch_rows[-1] + len(self._texts))
        self._texts, self._origins, self._chars = [], [], 0

    def close(self) -> "SpooledDocuments":
        self._flush()
        self._writer.close()
        self._sink.close()
        self._out.commit()
        lengths = np.frombuffer(self._lengths, dtype=np.int64) if len(self._lengths) else np.zeros(0, np.int64)
        return SpooledDocuments(
            _Spool(self.path, np.array(self._batch_rows, dtype=np.int64), lengths.copy()),
            self.source,
            np.arange(len(lengths), dtype=np.int64),
        )

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self._out.discard()


class _Spool:
    """One spool file, read a record batch at a time with plain file reads: nothing is memory-mapped,
    so the texts never count in the process's memory beyond the batch being read."""

    def __init__(self, path: Path, batch_rows: np.ndarray, lengths: np.ndarray):
        self.path, self.batch_rows, self.lengths = path, batch_rows, lengths
        self._reader = None

    def batch(self, i: int):
        import pyarrow as pa

        if self._reader is None:
            self._reader = pa.ipc.open_file(pa.OSFile(str(self.path)))
        return self._reader.get_batch(i)

    def rows(self, rows: np.ndarray, *columns: str) -> list[list]:
        """Values of each of ``columns`` at file rows ``rows`` (any order), reading each batch they
        touch once."""
        import pyarrow as pa

        which = np.searchsorted(self.batch_rows, rows, side="right") - 1
        out: list[list] = [[None] * len(rows) for _ in columns]
        for b in np.unique(which):
            mine = np.flatnonzero(which == b)
            picked = self.batch(int(b)).take(pa.array(rows[mine] - self.batch_rows[b]))
            for values, column in zip(out, columns):
                for k, v in zip(mine, picked.column(column).to_pylist()):
                    values[k] = v
        return out


class SpooledDocuments(Sequence):
    """A source's documents in a spool file, as a read-only ``Sequence[Document]``; a selection
    (``select``: the held-out split) picks and orders a subset without copying texts."""

    def __init__(self, spool: _Spool, source: str, rows: np.ndarray):
        self._spool, self.source, self._rows = spool, source, rows

    def select(self, rows) -> "SpooledDocuments":
        return SpooledDocuments(self._spool, self.source, self._rows[np.asarray(rows, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self._rows)

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Texts of documents ``start:stop`` (in this selection's order), read from the file."""
        return self._spool.rows(self._rows[start : len(self) if stop is None else stop], "text")[0]

    def char_lengths(self) -> np.ndarray:
        return self._spool.lengths[self._rows]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        (text,), (origin,) = self._spool.rows(self._rows[i : i + 1], "text", "origin")
        return Document(text, self.source, origin)

    def __iter__(self) -> Iterator[Document]:
        for s in range(0, len(self), _BATCH_ROWS):
            for text, origin in zip(*self._spool.rows(self._rows[s : s + _BATCH_ROWS], "text", "origin")):
                yield Document(text, self.source, origin)
