"""Unlabeled corpus reading for continued pretraining.

    docs, stats = read_source(SourceConfig(path="notes/"))      # one source
    corpus = read_corpus(cfg.data)                             # train/eval dicts + stats

Conventions later stages rely on:

- ``Document.text`` is stripped of leading/trailing whitespace; dedup compares these texts exactly.
- ``Document.origin``: ``"path:line"`` (1-based; the first line of a paragraph, CSV row or JSON array
  element), ``"path"`` for a whole-file document, ``"path#row"`` (0-based row index, as in
  ``ds[row]``) for parquet files and datasets folders (``"folder/split#row"`` for a DatasetDict).
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

import csv
import difflib
import glob as globlib
import gzip
import hashlib
import json
import logging
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ..config.data import CorpusConfig, SourceConfig

log = logging.getLogger(__name__)

_SUFFIX_FORMAT = {
    ".txt": "txt", ".md": "txt", ".markdown": "txt", ".text": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
_FILE_FORMATS = ("txt", "jsonl", "json", "csv", "parquet")
_MAGIC = re.compile(r"[*?[]")
_GZ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
_WS = re.compile(r"[ \t\n\r]*")
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # undecodable bytes after decode(errors="surrogateescape")
_JSON = json.JSONDecoder()
_MAX_EXAMPLES = 10


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and, where it applies, the line (and field)."""


@dataclass
class Document:
    text: str
    source: str
    origin: str


@dataclass
class SourceStats:
    name: str
    files: int = 0
    documents: int = 0
    chars: int = 0
    duplicates_removed: int = 0
    too_short: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_skips: list[str] = field(default_factory=list)


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
                entry.update(role="train", train_documents=len(self.train[name]),
                             heldout_documents=len(self.eval.get(name, [])))
            else:
                entry.update(role="eval", leaked_into_eval_removed=self.leaked_into_eval_removed.get(
                    name[len(EVAL_STATS_PREFIX):], 0))
            sources[name] = entry
        eval_sets = {n: {"documents": len(d), "chars": sum(len(x.text) for x in d)} for n, d in self.eval.items()}
        totals = {
            "train_documents": sum(len(d) for d in self.train.values()),
            "train_chars": sum(len(x.text) for d in self.train.values() for x in d),
            "eval_documents": sum(v["documents"] for v in eval_sets.values()),
            "eval_chars": sum(v["chars"] for v in eval_sets.values()),
            "files": sum(s.files for s in self.stats.values()),
            "duplicates_removed": sum(s.duplicates_removed for s in self.stats.values()),
            "too_short": sum(s.too_short for s in self.stats.values()),
            "skipped": sum(s.skipped for s in self.stats.values()),
            "leaked_into_eval_removed": sum(self.leaked_into_eval_removed.values()),
        }
        return {"sources": sources, "eval_sets": eval_sets, "totals": totals}


EVAL_STATS_PREFIX = "heldout:"  # Corpus.stats key of a held-out source: "heldout:<name>"


class _Bad(Exception):
    """A record-level problem; the caller adds where it happened and applies on_error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _Ctx:
    def __init__(self, stats: SourceStats, on_error: str):
        self.stats, self.on_error = stats, on_error

    def problem(self, where: str, bad: _Bad, note: str = "") -> None:
        text = f"{where}: {bad.message}{note}"
        if self.on_error == "raise":
            raise CorpusError(text + " (on_error: skip skips and counts such records)")
        st = self.stats
        st.skipped += 1
        st.skip_reasons[bad.reason] = st.skip_reasons.get(bad.reason, 0) + 1
        if len(st.first_skips) < _MAX_EXAMPLES:
            st.first_skips.append(text)


# ---------------------------------------------------------------- bytes, lines, text fields

def _split_suffix(path: Path) -> tuple[str, str]:
    """("computing", ".jsonl") for computing.jsonl.gz; only known suffixes are split off."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and "." + ext.lower() in _SUFFIX_FORMAT:
        return stem, "." + ext.lower()
    return name, ""


def _open(path: Path):
    # Gzip is recognised by its magic bytes, so a compressed file without .gz still reads; a .gz
    # without them is reported rather than parsed as (binary) text.
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        if gz:
            return gzip.open(path, "rb")
        if path.name.lower().endswith(".gz"):
            raise CorpusError(f"{path}: corrupt gzip file (no gzip header)")
        return open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _read_failed(path: Path, exc: Exception, after: str) -> CorpusError:
    what = "corrupt gzip file" if path.name.lower().endswith(".gz") or isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) else "read error"
    return CorpusError(f"{path}: {what} ({exc}){after}")


def _sniff(path: Path) -> bytes:
    """File-level checks on the first 8 KiB of (decompressed) content; returns those bytes."""
    with _open(path) as fh:
        try:
            head = fh.read(8192)
        except _GZ_ERRORS as exc:
            raise _read_failed(path, exc, "") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"{path}: UTF-16 text; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\x00" in head or head.decode("utf-8", "replace").count("\ufffd") > len(head) // 10 + 2:
        raise CorpusError(f"{path}: binary file (NUL or mostly undecodable bytes), not UTF-8 text; "
                          "exclude it (e.g. with `glob`) or set the right format")
    return head


def _read_all(path: Path) -> bytes:
    with _open(path) as fh:
        try:
            return fh.read()
        except _GZ_ERRORS as exc:
            raise _read_failed(path, exc, "") from None


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Stream (line number, byte offset, raw line) of a plain or gzip file."""
    lineno = offset = 0
    with _open(path) as fh:
        it = iter(fh)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except _GZ_ERRORS as exc:
                raise _read_failed(path, exc, f" after line {lineno}") from None
            lineno += 1
            yield lineno, offset, raw
            offset += len(raw)


def _bad_utf8(byte: int, offset: int, column: int) -> _Bad:
    return _Bad("invalid UTF-8", f"invalid UTF-8: byte 0x{byte:02x} at byte offset {offset} (byte {column} of the line)")


def _decode(raw: bytes, lineno: int, offset: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_utf8(raw[exc.start], offset + exc.start, exc.start + 1) from None
    return text.removeprefix("\ufeff") if lineno == 1 else text


def _check_text(value, fld: str) -> str:
    if value is None:
        raise _Bad("null text", f"field {fld!r} is null")
    if not isinstance(value, str):
        raise _Bad("text not a string", f"field {fld!r} is {type(value).__name__}, expected a string")
    text = value.strip()
    if not text:
        raise _Bad("empty text", f"field {fld!r} is empty")
    try:  # JSON "\ud800" escapes give lone surrogates that tokenizers cannot encode later
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Bad("invalid unicode", f"field {fld!r} has an unpaired surrogate at character {exc.start}") from None
    return text


def _keys_hint(fld: str, keys: list) -> str:
    names = [str(k) for k in keys]
    near = difflib.get_close_matches(fld, names, n=1, cutoff=0.5)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"(has: {shown or 'nothing'})" + (f"; did you mean text_field: {near[0]}?" if near else "")


def _text_of(record, fld: str) -> str:
    if not isinstance(record, dict):
        raise _Bad("not an object", f"expected a JSON object with field {fld!r}, got {type(record).__name__}")
    if fld not in record:
        raise _Bad(f"missing field {fld!r}", f"field {fld!r} missing {_keys_hint(fld, list(record))}")
    return _check_text(record[fld], fld)


# ---------------------------------------------------------------- readers: yield (text, origin)

def _read_txt(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    if src.split_docs == "file":
        data = _read_all(path)
        try:
            yield data.decode("utf-8").removeprefix("\ufeff").strip(), str(path)  # "" -> too_short
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            start = data.rfind(b"\n", 0, exc.start) + 1
            ctx.problem(f"{path}:{line}", _bad_utf8(data[exc.start], exc.start, exc.start - start + 1),
                        " (whole-file document skipped)")
        return
    para: list[str] = []
    start, bad = 0, None  # start: first line of the current paragraph (0: none open)
    for lineno, offset, raw in _lines(path):
        try:
            line, err = _decode(raw, lineno, offset).rstrip("\r\n"), None
        except _Bad as exc:
            line, err = None, exc
        if src.split_docs == "line":
            if err:
                ctx.problem(f"{path}:{lineno}", err)
            elif line.strip():
                yield line.strip(), f"{path}:{lineno}"
            continue
        if line is not None and not line.strip():  # a blank line closes the paragraph
            if start:
                yield from _paragraph(path, start, para, bad, ctx)
            para, start, bad = [], 0, None
            continue
        start = start or lineno
        bad = bad or (err and (lineno, err))
        if line is not None:
            para.append(line)
    if start:
        yield from _paragraph(path, start, para, bad, ctx)


def _paragraph(path, start, para, bad, ctx):
    if bad:  # one bad line spoils the paragraph it belongs to, not the whole file
        ctx.problem(f"{path}:{bad[0]}", bad[1], f" (paragraph starting at line {start} skipped)")
    else:
        yield "\n".join(para).strip(), f"{path}:{start}"


def _read_jsonl(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    for lineno, offset, raw in _lines(path):
        where = f"{path}:{lineno}"
        try:
            line = _decode(raw, lineno, offset)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _Bad("malformed JSON", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
            yield _text_of(record, src.text_field), where
        except _Bad as exc:
            ctx.problem(where, exc)


def _array_items(s: str, i: int) -> Iterator[tuple[int, int, object]]:
    """(start, end, value) of each element of the JSON array starting at s[i] == '['."""
    i = _WS.match(s, i + 1).end()
    if s.startswith("]", i):
        return
    while True:
        value, end = _JSON.raw_decode(s, i)
        yield i, end, value
        i = _WS.match(s, end).end()
        if s.startswith("]", i):
            return
        if not s.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _WS.match(s, i + 1).end()


def _member_start(s: str, i: int, key: str) -> int:
    """Position of the value of ``key`` in the (already validated) JSON object at s[i]."""
    i = _WS.match(s, i + 1).end()
    while True:
        name, i = _JSON.raw_decode(s, i)
        i = _WS.match(s, _WS.match(s, i).end() + 1).end()  # skip ':'
        if name == key:
            return i
        _, i = _JSON.raw_decode(s, i)
        i = _WS.match(s, _WS.match(s, i).end() + 1).end()  # skip ','


def _read_json(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    # A JSON document is parsed whole; surrogateescape keeps undecodable bytes so that only the
    # record holding them is reported (with its line and byte offset), not the whole file.
    s = _read_all(path).decode("utf-8", "surrogateescape")
    i = _WS.match(s, 1 if s.startswith("\ufeff") else 0).end()
    fld = src.text_field
    try:
        if s.startswith("{", i):
            try:
                obj, end = _JSON.raw_decode(s, i)
            except json.JSONDecodeError:
                end = -1
            if end == -1 or s[end:].strip():  # several objects: JSON Lines under a .json name
                yield from _read_jsonl(path, src, ctx)
                return
            if fld in obj:  # a single record
                items = iter([(i, end, obj)])
            else:
                lists = [k for k, v in obj.items() if isinstance(v, list)]
                if len(lists) != 1:
                    raise CorpusError(f"{path}: expected a list of objects with field {fld!r}, or an object "
                                      f"holding one such list (like {{\"data\": [...]}}); got an object {_keys_hint(fld, list(obj))}")
                items = _array_items(s, _member_start(s, i, lists[0]))
        elif s.startswith("[", i):
            items = _array_items(s, i)
        else:
            yield from _read_jsonl(path, src, ctx)
            return
        line, pos = 1, 0
        for start, end, value in items:
            line, pos = line + s.count("\n", pos, start), start
            where = f"{path}:{line}"
            try:
                m = _BAD_BYTE.search(s, start, end)
                if m:
                    off = len(s[:m.start()].encode("utf-8", "surrogateescape"))
                    col = off - len(s[:s.rfind("\n", 0, m.start()) + 1].encode("utf-8", "surrogateescape")) + 1
                    raise _bad_utf8(ord(s[m.start()]) - 0xDC00, off, col)
                yield _text_of(value, fld), where
            except _Bad as exc:
                ctx.problem(where, exc)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} at column {exc.colno}") from None


def _read_csv(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    # Whole documents easily exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    bad: dict[int, _Bad] = {}

    def text_lines():  # keeps line endings: quoted fields may span lines
        for lineno, offset, raw in _lines(path):
            try:
                yield _decode(raw, lineno, offset)
            except _Bad as exc:
                bad[lineno] = exc
                yield raw.decode("utf-8", "replace")

    reader = csv.reader(text_lines(), delimiter="\t" if _split_suffix(path)[1] == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise CorpusError(f"{path}:1: malformed CSV header: {exc}") from None
    if bad:
        raise CorpusError(f"{path}:{min(bad)}: CSV header: {bad[min(bad)].message}")
    header = [h.strip() for h in header]
    fld = src.text_field
    if fld not in header:
        raise CorpusError(f"{path}:1: CSV header has no column {fld!r} {_keys_hint(fld, header)}")
    col, done = header.index(fld), reader.line_num
    while True:
        start = done + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row = _Bad("malformed CSV", f"malformed CSV row: {exc}")
        where, lines, done = f"{path}:{start}", range(start, reader.line_num + 1), reader.line_num
        try:
            for n in lines:
                if n in bad:
                    raise bad.pop(n)
            if isinstance(row, _Bad):
                raise row
            if not row:  # blank line
                continue
            if len(row) != len(header):
                raise _Bad("wrong field count", f"CSV row has {len(row)} fields, the header has {len(header)}")
            yield _check_text(row[col], fld), where
        except _Bad as exc:
            ctx.problem(where, exc)


def _string_column(path, names: list[str], fld: str, type_str: str, ok: bool) -> None:
    if fld not in names:
        raise CorpusError(f"{path}: no column {fld!r} {_keys_hint(fld, names)}")
    if not ok:
        raise CorpusError(f"{path}: column {fld!r} holds {type_str}, expected strings")


def _rows(label: str, values, fld: str, ctx: _Ctx, first_row: int) -> Iterator[tuple[str, str]]:
    for k, value in enumerate(values):
        where = f"{label}#{first_row + k}"
        try:
            yield _check_text(value, fld), where
        except _Bad as exc:
            ctx.problem(where, exc)


def _read_parquet(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.name.lower().endswith(".gz"):
        raise CorpusError(f"{path}: gzip-compressed parquet is not supported (parquet compresses internally); gunzip it")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from None
    schema, fld = pf.schema_arrow, src.text_field
    typ = schema.field(fld).type if fld in schema.names else None
    if typ is not None and pa.types.is_dictionary(typ):
        typ = typ.value_type
    is_str = typ is not None and (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ))
    _string_column(path, schema.names, fld, str(typ), is_str)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[fld]):
            values = batch.column(0).to_pylist()
            yield from _rows(str(path), values, fld, ctx, row)
            row += len(values)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: parquet read failed near row {row} ({exc})") from None


def _is_hf_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _read_hf(path: Path, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    if not _is_hf_dir(path):
        raise CorpusError(f"{path}: not a datasets folder (save_to_disk writes dataset_info.json + state.json, "
                          "or dataset_dict.json)")
    import datasets  # slow to import: only when a datasets folder is actually read

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here is "this folder cannot be loaded"
        raise CorpusError(f"{path}: cannot load datasets folder ({type(exc).__name__}: {exc})") from None
    label = str(path)
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        split = "train" if "train" in ds else splits[0] if len(splits) == 1 else None
        if split is None:
            raise CorpusError(f"{path}: DatasetDict with splits {splits} and no 'train'; point path at one "
                              f"split folder, e.g. {path / splits[0]}")
        ds, label = ds[split], str(path / split)
    fld = src.text_field
    feat = ds.features.get(fld)
    dtype = getattr(feat, "dtype", type(feat).__name__)
    _string_column(label, ds.column_names, fld, str(dtype), dtype in ("string", "large_string"))
    row = 0
    for batch in ds.select_columns([fld]).iter(batch_size=1024):
        values = batch[fld]
        yield from _rows(label, values, fld, ctx, row)
        row += len(values)


_READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
            "parquet": _read_parquet, "hf": _read_hf}


def _read_unit(path: Path, fmt: str, src: SourceConfig, ctx: _Ctx) -> Iterator[tuple[str, str]]:
    if fmt in ("txt", "jsonl", "json", "csv"):
        head = _sniff(path)
        if fmt == "jsonl" and head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"[":
            fmt = "json"  # a JSON array saved as .jsonl: never valid JSON Lines of objects anyway
    return _READERS[fmt](path, src, ctx)


# ---------------------------------------------------------------- sources: path -> files

def _file_format(path: Path, fmt: str) -> str | None:
    return fmt if fmt in _FILE_FORMATS else _SUFFIX_FORMAT.get(_split_suffix(path)[1])


def _hf_roots(root: Path) -> set[Path]:
    found = {p.parent for n in ("state.json", "dataset_dict.json") for p in root.rglob(n) if _is_hf_dir(p.parent)}
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
        log.warning("%s: ignored %d file(s) with unsupported suffixes, e.g. %s", root, len(ignored), ", ".join(ignored[:5]))
    if not units:
        raise CorpusError(f"{root}: no readable files match glob {src.glob!r} (.txt/.md/.jsonl/.json/.csv/.parquet, "
                          f"optionally .gz){'; ignored: ' + ', '.join(ignored[:5]) if ignored else ''}")
    return units


def _missing(path: Path) -> CorpusError:
    parent = path.parent
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1) if parent.is_dir() else []
    hint = f"; did you mean {parent / near[0]}?" if near else ""
    return CorpusError(f"{path}: no such file or directory{hint}")


def _units(src: SourceConfig) -> list[tuple[Path, str]]:
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
        if src.format == "hf" or (src.format in ("auto", "dir") and _is_hf_dir(path)):
            return [(path, "hf")]
        return _dir_units(path, src)
    if src.format in ("dir", "hf"):
        raise CorpusError(f"{path}: format {src.format!r} needs a folder, this is a file")
    fmt = _file_format(path, src.format)
    if fmt is None:
        raise CorpusError(f"{path}: cannot tell the format from the file name; set format: "
                          f"({', '.join(_FILE_FORMATS)})")
    return [(path, fmt)]


def source_name(src: SourceConfig) -> str:
    """The name a source reports under: ``src.name``, else the file stem / folder / glob base folder."""
    if src.name:
        return src.name
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

def read_source(src: SourceConfig, *, on_error: str = "raise", min_chars: int = 1) -> tuple[list[Document], SourceStats]:
    """Read every document of one source (no dedup; ``read_corpus`` does that across sources)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    name = source_name(src)
    stats = SourceStats(name=name)
    ctx = _Ctx(stats, on_error)
    docs: list[Document] = []
    for path, fmt in _units(src):
        stats.files += 1
        for text, origin in _read_unit(path, fmt, src, ctx):
            if len(text) < min_chars:
                stats.too_short += 1
                continue
            docs.append(Document(text, name, origin))
    if not docs:
        example = f"; first: {stats.first_skips[0]}" if stats.first_skips else ""
        raise CorpusError(f"{src.path}: source {name!r} has no documents ({stats.files} file(s) read, "
                          f"{stats.skipped} record(s) skipped, {stats.too_short} shorter than min_chars={min_chars}){example}")
    stats.documents, stats.chars = len(docs), sum(len(d.text) for d in docs)
    return docs, stats


def _dedup(docs: list[Document], seen: set[str], stats: SourceStats) -> list[Document]:
    kept = []
    for d in docs:
        if d.text in seen:
            stats.duplicates_removed += 1
        else:
            seen.add(d.text)
            kept.append(d)
    stats.documents, stats.chars = len(kept), sum(len(d.text) for d in kept)
    return kept


def _heldout_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _split_heldout(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    # A document is held out when its text hash falls below `fraction`: stable across runs and
    # independent of order. A source with >= 2 documents keeps at least one on each side (the
    # lowest / highest hashes), so a small corpus still gets an eval set and still trains.
    keys = [_heldout_key(d.text) for d in docs]
    n_eval = sum(k < fraction * 2**64 for k in keys)
    n_eval = min(max(n_eval, 1 if len(docs) >= 2 else 0), len(docs) - 1)
    if n_eval == 0:
        return docs, []
    cut = sorted(keys)[n_eval - 1]
    train = [d for d, k in zip(docs, keys) if k > cut]
    held = [d for d, k in zip(docs, keys) if k <= cut]
    return train, held


def read_corpus(cfg: CorpusConfig) -> Corpus:
    """Read training and held-out sources; dedup, split off held-out text, collect stats."""
    if not cfg.sources:
        raise CorpusError("corpus: no training sources (set sources: [{path: ...}])")
    # Names are checked before anything is read. Training sources and held-out sets are separate
    # namespaces: a domain corpus and its held-out set naturally share a name ("computing").
    for group in (cfg.sources, cfg.eval_sources):
        owners: dict[str, str] = {}
        for src in group:
            name = source_name(src)
            if name in owners:
                raise CorpusError(f"source name {name!r} is used by both {owners[name]} and {src.path}; "
                                  "set a distinct `name:` on one of them")
            owners[name] = src.path
    if cfg.eval_sources and cfg.eval_fraction:
        log.warning("eval_sources are given, so eval_fraction=%s is ignored", cfg.eval_fraction)

    train: dict[str, list[Document]] = {}
    evals: dict[str, list[Document]] = {}
    stats: dict[str, SourceStats] = {}
    leaked: dict[str, int] = {}
    seen: set[str] = set()  # texts of all training documents so far (first occurrence wins)
    for src in cfg.sources:
        docs, st = read_source(src, on_error=cfg.on_error, min_chars=cfg.min_chars)
        if cfg.dedup:
            docs = _dedup(docs, seen, st)
            if not docs:
                raise CorpusError(f"{src.path}: all {st.duplicates_removed} documents of {st.name!r} duplicate earlier sources")
        train[st.name], stats[st.name] = docs, st
    for src in cfg.eval_sources:
        docs, st = read_source(src, on_error=cfg.on_error, min_chars=cfg.min_chars)
        if cfg.dedup:
            docs = _dedup(docs, set(), st)
            kept = [d for d in docs if d.text not in seen]  # eval text seen in training is no test
            leaked[st.name] = len(docs) - len(kept)
            if not kept:
                raise CorpusError(f"{src.path}: every document of eval source {st.name!r} also appears in the training data")
            docs = kept
            st.documents, st.chars = len(docs), sum(len(d.text) for d in docs)
        evals[st.name], stats[EVAL_STATS_PREFIX + st.name] = docs, st
    if not cfg.eval_sources and cfg.eval_fraction > 0:
        for name in train:
            train[name], held = _split_heldout(train[name], cfg.eval_fraction)
            if held:
                evals[name] = held
    return Corpus(train=train, eval=evals, stats=stats, leaked_into_eval_removed=leaked)
