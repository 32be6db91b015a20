"""One entry of the tokenization cache on disk: written a batch at a time, published by a rename,
read back memory-mapped. (:mod:`.token_cache` lists and clears entries; :mod:`.tokenize` decides
what goes in them.)

An entry is a folder ``cache_dir/<sha256 key>/`` of numpy arrays (``ids.npy``, ``offsets.npy``,
``word_starts.npy`` for masked models) and ``meta.json``, written last, which marks it complete.
It is built in a temp folder beside its final place and renamed there, so a reader never sees half
an entry and two processes tokenizing the same corpus cannot spoil each other's copy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .tokenized_docs import FORMAT_VERSION, TokenizedDocs

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    env = os.environ.get("LMADAPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lmadapt" / "tokenized"


class TokenSink:
    """Encoded batches appended to raw files as they come, then saved as the cache entry's .npy
    arrays: a corpus's token ids pass through memory a batch at a time, instead of being held as
    all the batches plus their concatenation (twice the ids) before the cache is written."""

    _DTYPES = {"ids": np.int32, "word_starts": np.uint8}

    def __init__(self, folder: Path, with_word_starts: bool):
        self.folder, self.lengths = folder, []
        names = ["ids"] + (["word_starts"] if with_word_starts else [])
        self.files = {name: open(folder / f"{name}.raw", "wb") for name in names}

    def add(self, part) -> None:
        ids, lengths, ws = part
        self.files["ids"].write(np.ascontiguousarray(ids, dtype=np.int32).data)
        if "word_starts" in self.files:
            self.files["word_starts"].write(np.ascontiguousarray(ws, dtype=np.uint8).data)
        self.lengths.append(lengths)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def finish(self, meta: dict) -> None:
        """The .npy arrays and, last, meta.json (which marks the folder complete)."""
        self.close()
        for name in self.files:
            raw, dtype = self.folder / f"{name}.raw", self._DTYPES[name]
            n = raw.stat().st_size // np.dtype(dtype).itemsize
            # copied from the page cache, not from this process's memory
            np.save(
                self.folder / f"{name}.npy",
                np.memmap(raw, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype),
            )
            raw.unlink()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        np.save(self.folder / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        (self.folder / "meta.json").write_text(json.dumps({**meta, "tokens": int(lengths.sum())}, indent=1))


def work_folder(final: Path | None) -> Path:
    """A fresh temp folder beside the cache entry (so publishing it is a rename), else in the system's temp."""
    if final is not None:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}-", dir=final.parent))
        except OSError as exc:
            logger.warning("tokenization cache not written (%s): %s", final.parent, exc)
    return Path(tempfile.mkdtemp(prefix="lmadapt-tokens-"))


def publish(work: Path, final: Path, with_word_starts: bool) -> TokenizedDocs | None:
    """``work`` renamed to the cache entry ``final`` and read back memory-mapped; None when it cannot be."""
    if work.parent != final.parent:
        return None  # the cache folder could not be written: see work_folder
    try:
        os.replace(work, final)  # atomic; fails if another process already renamed a complete copy
    except OSError as exc:
        if not (final / "meta.json").exists():
            logger.warning("tokenization cache not written (%s): %s", final, exc)
            return None
    return load_entry(final, with_word_starts)


def in_memory(folder: Path, with_word_starts: bool) -> TokenizedDocs:
    mapped = load_entry(folder, with_word_starts)
    if mapped is None:
        raise RuntimeError(f"{folder}: tokenized arrays just written cannot be read back")
    return TokenizedDocs(
        np.array(mapped.ids),
        np.array(mapped.offsets),
        None if mapped.word_starts is None else np.array(mapped.word_starts),
    )


def load_entry(folder: Path, with_word_starts: bool) -> TokenizedDocs | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            return None
        # Memory-mapped: pages are read as packing touches them, and the processes of a node share them.
        ids = np.load(folder / "ids.npy", mmap_mode="r")
        offsets = np.load(folder / "offsets.npy")
        ws = np.load(folder / "word_starts.npy", mmap_mode="r") if with_word_starts else None
    except (OSError, ValueError):
        return None
    if offsets[-1] != len(ids) or (ws is not None and len(ws) != len(ids)):
        logger.warning("ignoring inconsistent tokenization cache %s", folder)
        return None
    try:
        os.utime(folder / "meta.json")  # marks the entry used (`lmadapt cache clear --older-than`)
    except OSError:
        pass  # a read-only cache still serves hits
    return TokenizedDocs(ids, offsets, ws)
