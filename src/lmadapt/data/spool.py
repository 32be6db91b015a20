"""Documents spooled to disk: a large corpus's texts in Arrow files, memory-mapped, not in memory.

    writer = SpoolWriter(folder / "train-0.arrow", source="computing")
    for text, origin in ...: writer.add(text, origin)
    docs = writer.close()                    # SpooledDocuments: a Sequence[Document]
    docs.texts(0, 1000)                      # a batch of texts, read from the mapped file

``read_corpus(cfg, spool_dir=...)`` writes every source's surviving documents here as it reads
them, so the reading process keeps a few numbers per document (a hash for deduplication and the
held-out split, the length), not the text, however large the corpus. The tokenizer then reads the
texts back a batch at a time. The pages are file-backed: the kernel drops them under pressure
instead of the process running out of memory.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .sources import Document

# Rows per record batch: small enough that a batch of long documents stays a few MB in memory.
_BATCH_ROWS = 1000
_BATCH_CHARS = 4_000_000


def _schema():
    import pyarrow as pa
    return pa.schema([("text", pa.large_string()), ("origin", pa.string()), ("chars", pa.int64())])


class SpoolWriter:
    """Appends documents to an Arrow file (a temp file, renamed into place by :meth:`close`)."""

    def __init__(self, path: str | os.PathLike, source: str):
        import pyarrow as pa
        self.path, self.source = Path(path), source
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._sink = pa.OSFile(self._tmp, "wb")
        self._writer = pa.ipc.new_file(self._sink, _schema())
        self._texts: list[str] = []
        self._origins: list[str] = []
        self._chars = 0

    def add(self, text: str, origin: str) -> None:
        self._texts.append(text)
        self._origins.append(origin)
        self._chars += len(text)
        if len(self._texts) >= _BATCH_ROWS or self._chars >= _BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        if self._texts:
            self._writer.write_batch(pa.record_batch(
                [pa.array(self._texts, pa.large_string()), pa.array(self._origins, pa.string()),
                 pa.array([len(t) for t in self._texts], pa.int64())], schema=_schema()))
        self._texts, self._origins, self._chars = [], [], 0

    def close(self) -> "SpooledDocuments":
        self._flush()
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self.path)
        return SpooledDocuments.open(self.path, self.source)

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)


class SpooledDocuments(Sequence):
    """A source's documents in a spool file, as a read-only ``Sequence[Document]``; ``rows`` picks and
    orders a subset (the held-out split) without copying texts."""

    def __init__(self, table, source: str, rows: np.ndarray, path: Path):
        self._table, self.source, self._rows, self.path = table, source, rows, path

    @classmethod
    def open(cls, path: str | os.PathLike, source: str) -> "SpooledDocuments":
        import pyarrow as pa
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()   # zero-copy over the mapped file
        return cls(table, source, np.arange(table.num_rows, dtype=np.int64), Path(path))

    def select(self, rows) -> "SpooledDocuments":
        return SpooledDocuments(self._table, self.source, self._rows[np.asarray(rows, dtype=np.int64)], self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def _column(self, name: str, start: int, stop: int) -> list:
        import pyarrow as pa
        return self._table.column(name).take(pa.array(self._rows[start:stop])).to_pylist()

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Texts of documents ``start:stop`` (in this selection's order), read from the mapped file."""
        return self._column("text", start, len(self) if stop is None else stop)

    def char_lengths(self) -> np.ndarray:
        return self._table.column("chars").to_numpy()[self._rows]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Document(self.texts(i, i + 1)[0], self.source, self._column("origin", i, i + 1)[0])

    def __iter__(self) -> Iterator[Document]:
        for s in range(0, len(self), _BATCH_ROWS):
            e = min(s + _BATCH_ROWS, len(self))
            for text, origin in zip(self.texts(s, e), self._column("origin", s, e)):
                yield Document(text, self.source, origin)
