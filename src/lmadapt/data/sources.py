"""Unlabeled corpus reading for continued pretraining.

    docs, stats = read_source(SourceConfig(path="notes/"))      # one source
    corpus = read_corpus(cfg.data)                             # train/eval dicts + stats

Conventions later stages rely on:

- ``Document.text`` is stripped of leading/trailing whitespace; dedup compares these texts exactly.
- ``Document.origin``: ``"path:line"`` (1-based; the first line of a paragraph, CSV row or JSON array
  element), ``"path"`` for a whole-file document, ``"path#row"`` (0-based row index, as in
  ``ds[row]``) for parquet files and datasets folders (``"folder/split#row"`` for a DatasetDict),
  ``"hub:owner/name[subset]:split#row"`` for a hub dataset.
- ``max_documents`` keeps a source's first N documents (after ``min_chars``, before dedup) and stops
  reading there; ``SourceStats.capped_at`` records it (whether more followed is not looked at).
- Held-out sets: each ``eval_sources`` entry is its own set, named like a source. Otherwise, with
  ``eval_fraction``, every training source gives up a hash-chosen share of its documents to an eval
  set with the *same name* as the source (so ``corpus.eval["computing"]`` is held-out computing text).
- ``SourceStats.documents``/``chars`` count what survived reading, ``min_chars`` and dedup (for a
  source split by ``eval_fraction``: train + held-out; ``Corpus.summary()`` shows the split).
- Errors: record-level problems (malformed line, missing/null/non-string/empty text field, invalid
  UTF-8 in a record, CSV row with the wrong number of fields) stop with ``file:line`` or, with
  ``on_error="skip"``, are skipped and counted. File-level problems (missing file, binary file, corrupt
  gzip/parquet, a header or schema without the text field, a source without documents) always stop.
"""

from __future__ import annotations

import difflib
import glob as globlib
import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config.data import CorpusConfig, SourceConfig
from .columnar import is_hf_dir
from .documents import Document, SourceStats
from .formats import FILE_FORMATS, SUFFIX_FORMAT, read_unit, split_suffix
from .records import CorpusError, Ctx
from .spool import SpoolWriter

__all__ = [
    "CorpusError",
    "Document",
    "SourceStats",
    "Corpus",
    "read_source",
    "read_corpus",
    "source_name",
    "EVAL_STATS_PREFIX",
]

log = logging.getLogger(__name__)

_MAGIC = re.compile(r"[*?[]")


@dataclass
class Corpus:
    train: dict[str, list[Document]]
    eval: dict[str, list[Document]]
    stats: dict[str, SourceStats]
    leaked_into_eval_removed: dict[str, int] = field(default_factory=dict)  # eval set -> docs also in train

    def summary(self) -> dict:
        sources = {}
        for name, st in self.stats.items():
            entry = asdict(st)
            if not name.startswith(EVAL_STATS_PREFIX):
                entry.update(
                    role="train", train_documents=len(self.train[name]), heldout_documents=len(self.eval.get(name, []))
                )
            else:
                entry.update(
                    role="eval",
                    leaked_into_eval_removed=self.leaked_into_eval_removed.get(name[len(EVAL_STATS_PREFIX) :], 0),
                )
            sources[name] = entry
        eval_sets = {n: {"documents": len(d), "chars": _chars(d)} for n, d in self.eval.items()}
        totals = {
            "train_documents": sum(len(d) for d in self.train.values()),
            "train_chars": sum(_chars(d) for d in self.train.values()),
            "eval_documents": sum(v["documents"] for v in eval_sets.values()),
            "eval_chars": sum(v["chars"] for v in eval_sets.values()),
            "files": sum(s.files for s in self.stats.values()),
            "duplicates_removed": sum(s.duplicates_removed for s in self.stats.values()),
            "too_short": sum(s.too_short for s in self.stats.values()),
            "skipped": sum(s.skipped for s in self.stats.values()),
            "leaked_into_eval_removed": sum(self.leaked_into_eval_removed.values()),
        }
        return {"sources": sources, "eval_sets": eval_sets, "totals": totals}


def _chars(docs) -> int:
    """Characters of a source's documents (a spooled source knows them without reading its texts)."""
    lengths = getattr(docs, "char_lengths", None)
    return int(lengths().sum()) if lengths is not None else sum(len(d.text) for d in docs)


EVAL_STATS_PREFIX = "heldout:"  # Corpus.stats key of a held-out source: "heldout:<name>"


# ---------------------------------------------------------------- sources: path -> files


def _file_format(path: Path, fmt: str) -> str | None:
    return fmt if fmt in FILE_FORMATS else SUFFIX_FORMAT.get(split_suffix(path)[1])


def _hf_roots(root: Path) -> set[Path]:
    found = {p.parent for n in ("state.json", "dataset_dict.json") for p in root.rglob(n) if is_hf_dir(p.parent)}
    return {d for d in found if not any(o in d.parents for o in found)}  # outermost only (DatasetDict)


def _dir_units(root: Path, src: SourceConfig) -> list[tuple[Path, str]]:
    # An explicit file format applies to every file the glob matches; with auto, the suffix decides
    # and unknown suffixes are ignored (logged). Datasets folders inside are read as a whole.
    hf = _hf_roots(root) if src.format in ("auto", "dir") else set()
    units, ignored, used = [], [], set()
    try:
        matches = sorted(root.glob(src.glob))
    except (ValueError, NotImplementedError) as exc:
        raise CorpusError(f"{root}: bad glob {src.glob!r} ({exc})") from None
    for p in matches:
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        owner = next((h for h in hf if h in p.parents), None)
        if owner is not None:
            if owner not in used:
                used.add(owner)
                units.append((owner, "hf"))
            continue
        fmt = _file_format(p, src.format)
        if fmt is None:
            ignored.append(str(rel))
        else:
            units.append((p, fmt))
    if ignored:
        log.warning(
            "%s: ignored %d file(s) with unsupported suffixes, e.g. %s", root, len(ignored), ", ".join(ignored[:5])
        )
    if not units:
        raise CorpusError(
            f"{root}: no readable files match glob {src.glob!r} (.txt/.md/.jsonl/.json/.csv/.parquet, "
            f"optionally .gz){'; ignored: ' + ', '.join(ignored[:5]) if ignored else ''}"
        )
    return units


def _missing(path: Path) -> CorpusError:
    parent = path.parent
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1) if parent.is_dir() else []
    hint = f"; did you mean {parent / near[0]}?" if near else ""
    return CorpusError(f"{path}: no such file or directory{hint}")


def _units(src: SourceConfig) -> list[tuple[Path, str]]:
    if src.format == "hub":
        return [(Path(src.path), "hub")]  # datasets.load_dataset resolves it (hub id or local repo folder)
    path = Path(src.path).expanduser()
    if _MAGIC.search(src.path) and not path.exists():
        matches = sorted(Path(m) for m in globlib.glob(str(path), recursive=True))
        units = []
        for m in matches:
            if m.is_dir():
                units += _units(SourceConfig(**{**asdict(src), "path": str(m)}))
            elif (fmt := _file_format(m, src.format)) is not None and not m.name.startswith("."):
                units.append((m, fmt))
        if not units:
            raise CorpusError(f"{src.path}: no readable files match this pattern")
        return units
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        if src.format == "hf" or (src.format in ("auto", "dir") and is_hf_dir(path)):
            return [(path, "hf")]
        return _dir_units(path, src)
    if src.format in ("dir", "hf"):
        raise CorpusError(f"{path}: format {src.format!r} needs a folder, this is a file")
    fmt = _file_format(path, src.format)
    if fmt is None:
        raise CorpusError(f"{path}: cannot tell the format from the file name; set format: ({', '.join(FILE_FORMATS)})")
    return [(path, fmt)]


def source_name(src: SourceConfig) -> str:
    """The name a source reports under: ``src.name``, else the file stem / folder / glob base folder."""
    if src.name:
        return src.name
    if src.format == "hub":  # allenai/c4 + subset en -> "c4-en"
        return Path(src.path.rstrip("/")).name + (f"-{src.subset}" if src.subset else "")
    path = Path(src.path).expanduser()
    if _MAGIC.search(src.path) and not path.exists():
        fixed = [part for part in _takewhile_fixed(path.parts)]
        return Path(*fixed).name if fixed and Path(*fixed).name else "corpus"
    if path.is_dir():
        return path.name or path.resolve().name
    return Path(path.name[:-3] if path.name.lower().endswith(".gz") else path.name).stem or path.name


def _takewhile_fixed(parts):
    for part in parts:
        if _MAGIC.search(part):
            return
        yield part


# ---------------------------------------------------------------- public entry points


def _documents(src: SourceConfig, stats: SourceStats, on_error: str, min_chars: int) -> Iterator[tuple[str, str]]:
    """(text, origin) of every document of one source, in file order; counts files and short ones."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    ctx = Ctx(stats, on_error)
    units = _units(src)
    files = [fmt for _, fmt in units if fmt not in ("hf", "hub")]
    if src.split is not None and files:
        raise CorpusError(
            f"{src.path}: split: {src.split!r} applies to datasets folders and hub datasets; "
            f"this source has {files[0]} files"
        )
    n = 0
    for path, fmt in units:
        stats.files += 1
        for text, origin in read_unit(path, fmt, src, ctx):
            if len(text) < min_chars:
                stats.too_short += 1
                continue
            n += 1
            yield text, origin
            if n == src.max_documents:  # stop at once: the rest of the source is never read
                stats.capped_at = n
                return


def _no_documents(src: SourceConfig, stats: SourceStats, min_chars: int) -> CorpusError:
    example = f"; first: {stats.first_skips[0]}" if stats.first_skips else ""
    return CorpusError(
        f"{src.path}: source {stats.name!r} has no documents ({stats.files} file(s) read, "
        f"{stats.skipped} record(s) skipped, {stats.too_short} shorter than min_chars={min_chars}){example}"
    )


def read_source(
    src: SourceConfig, *, on_error: str = "raise", min_chars: int = 1, spool: str | os.PathLike | None = None
) -> tuple[list[Document], SourceStats]:
    """Read every document of one source (no dedup; ``read_corpus`` does that across sources).

    With ``spool`` (a file path), the documents go to that Arrow file as they are read and come back
    as a :class:`~.spool.SpooledDocuments`, so a large source is never all in memory."""
    stats = SourceStats(name=source_name(src))
    out = _Collector(stats.name, Path(spool) if spool is not None else None)
    try:
        for text, origin in _documents(src, stats, on_error, min_chars):
            out.add(text, origin)
    except BaseException:
        out.abort()
        raise
    docs = out.close()
    if not len(docs):
        raise _no_documents(src, stats, min_chars)
    stats.documents, stats.chars = len(docs), out.chars
    return docs, stats


def _digest(text: str) -> bytes:
    """sha256 of the text: its first 16 bytes identify it for deduplication (held, not the text), its
    first 8 are the held-out key."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class _Collector:
    """One source's surviving documents, into a list or (``spool``) a file on disk, with the few
    numbers per document that deduplication and the held-out split need."""

    def __init__(self, name: str, spool: Path | None):
        self.name, self.keys, self.chars = name, [], 0
        if spool is None:
            self.docs, self.writer = [], None
        else:
            self.writer = SpoolWriter(spool, name)

    def add(self, text: str, origin: str, digest: bytes | None = None) -> None:
        if self.writer is None:
            self.docs.append(Document(text, self.name, origin))
        else:
            self.writer.add(text, origin)
        if digest is not None:  # only read_corpus splits held-out text by it
            self.keys.append(int.from_bytes(digest[:8], "big"))
        self.chars += len(text)

    def close(self):
        """The documents: a list, or a SpooledDocuments over the closed file."""
        return self.docs if self.writer is None else self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _collect(
    src: SourceConfig, cfg: CorpusConfig, spool: Path | None, seen: set | None, exclude: set | None = None
) -> tuple[object, SourceStats, np.ndarray, int]:
    """Read one source, dropping exact duplicates (``seen``: digests of texts kept so far, updated) and
    texts in ``exclude`` (held-out text that also appears in training: counted, returned last)."""
    stats = SourceStats(name=source_name(src))
    out = _Collector(stats.name, spool)
    excluded = 0
    try:
        for text, origin in _documents(src, stats, cfg.on_error, cfg.min_chars):
            digest = _digest(text)
            if seen is not None:
                if digest[:16] in seen:
                    stats.duplicates_removed += 1
                    continue
                seen.add(digest[:16])
            if exclude is not None and digest[:16] in exclude:
                excluded += 1
                continue
            out.add(text, origin, digest)
    except BaseException:
        out.abort()
        raise
    docs = out.close()
    stats.documents, stats.chars = len(out.keys), out.chars
    return docs, stats, np.array(out.keys, dtype=np.uint64), excluded


def _split_heldout(docs, keys: np.ndarray, fraction: float) -> tuple[object, object]:
    # A document is held out when its text hash falls below `fraction`: stable across runs and
    # independent of order. A source with >= 2 documents keeps at least one on each side (the
    # lowest / highest hashes), so a small corpus still gets an eval set and still trains.
    threshold = fraction * 2**64
    n_eval = sum(k < threshold for k in keys.tolist())  # exact: Python compares int and float exactly
    n_eval = min(max(n_eval, 1 if len(docs) >= 2 else 0), len(docs) - 1)
    if n_eval == 0:
        return docs, []
    cut = np.sort(keys)[n_eval - 1]
    train, held = np.flatnonzero(keys > cut), np.flatnonzero(keys <= cut)
    if isinstance(docs, list):
        return [docs[i] for i in train], [docs[i] for i in held]
    return docs.select(train), docs.select(held)


def read_corpus(cfg: CorpusConfig, spool_dir: str | os.PathLike | None = None) -> Corpus:
    """Read training and held-out sources; dedup, split off held-out text, collect stats.

    With ``spool_dir``, documents are written there as they are read (:mod:`.spool`) and the corpus
    holds :class:`~.spool.SpooledDocuments` instead of lists: memory stays flat however large the
    text. The caller removes the folder when done with the corpus."""
    if not cfg.sources:
        raise CorpusError("corpus: no training sources (set sources: [{path: ...}])")
    # Names are checked before anything is read. Training sources and held-out sets are separate
    # namespaces: a domain corpus and its held-out set naturally share a name ("computing").
    for group in (cfg.sources, cfg.eval_sources):
        owners: dict[str, str] = {}
        for src in group:
            name = source_name(src)
            if name in owners:
                raise CorpusError(
                    f"source name {name!r} is used by both {owners[name]} and {src.path}; "
                    "set a distinct `name:` on one of them"
                )
            owners[name] = src.path
    if cfg.eval_sources and cfg.eval_fraction:
        log.warning("eval_sources are given, so eval_fraction=%s is ignored", cfg.eval_fraction)

    spool = (lambda kind, i: Path(spool_dir) / f"{kind}-{i}.arrow") if spool_dir is not None else (lambda kind, i: None)
    train, evals, stats, leaked, keys = {}, {}, {}, {}, {}
    seen: set[bytes] = set()  # digests of all training documents so far (first occurrence wins)
    for i, src in enumerate(cfg.sources):
        docs, st, source_keys, _ = _collect(src, cfg, spool("train", i), seen if cfg.dedup else None)
        if not len(docs):
            if st.duplicates_removed:
                raise CorpusError(
                    f"{src.path}: all {st.duplicates_removed} documents of {st.name!r} duplicate earlier sources"
                )
            raise _no_documents(src, st, cfg.min_chars)
        train[st.name], stats[st.name] = docs, st
        keys[st.name] = source_keys
    for i, src in enumerate(cfg.eval_sources):
        # eval text seen in training is no test: dropped and counted
        docs, st, _, leaked_n = _collect(
            src, cfg, spool("eval", i), set() if cfg.dedup else None, exclude=seen if cfg.dedup else None
        )
        if cfg.dedup:
            leaked[st.name] = leaked_n
        if not len(docs):
            if leaked_n:
                raise CorpusError(
                    f"{src.path}: every document of eval source {st.name!r} also appears in the training data"
                )
            raise _no_documents(src, st, cfg.min_chars)
        evals[st.name], stats[EVAL_STATS_PREFIX + st.name] = docs, st
    if not cfg.eval_sources and cfg.eval_fraction > 0:
        for name in train:
            train[name], held = _split_heldout(train[name], keys[name], cfg.eval_fraction)
            if len(held):
                evals[name] = held
    return Corpus(train=train, eval=evals, stats=stats, leaked_into_eval_removed=leaked)
