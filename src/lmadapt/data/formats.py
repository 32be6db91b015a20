"""File formats of unlabeled text: each reader yields ``(text, origin)`` pairs from one file or
datasets folder, and reports record-level problems through a ``Ctx`` (raise, or skip and count).

    for text, origin in read_unit(Path("notes.jsonl.gz"), "jsonl", SourceConfig(path=...), ctx):

Formats: txt/md (paragraphs, lines or whole files), JSON Lines, a JSON array (streamed, so a large
file is not parsed as one object), CSV/TSV, parquet, ``datasets.save_to_disk`` folders and hub
datasets (``datasets.load_dataset``, optionally streamed); any of the text formats may be
gzip-compressed (recognised by its magic bytes). ``sources.py`` maps a
source's path to (file, format) units and owns dedup and held-out splits; this module only reads.
Origins and error rules are documented in ``sources.py``.
"""
from __future__ import annotations

import csv
import difflib
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

from ..config.data import SourceConfig
from .documents import SourceStats
from .hub import HubSpec, load_hub_dataset

SUFFIX_FORMAT = {
    ".txt": "txt", ".md": "txt", ".markdown": "txt", ".text": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
FILE_FORMATS = ("txt", "jsonl", "json", "csv", "parquet")
_GZ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
_WS = re.compile(r"[ \t\n\r]*")
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # undecodable bytes after decode(errors="surrogateescape")
_JSON = json.JSONDecoder()
_MAX_EXAMPLES = 10


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and, where it applies, the line (and field)."""


class _Bad(Exception):
    """A record-level problem; the caller adds where it happened and applies on_error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Ctx:
    def __init__(self, stats: "SourceStats", on_error: str):
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

def split_suffix(path: Path) -> tuple[str, str]:
    """("computing", ".jsonl") for computing.jsonl.gz; only known suffixes are split off."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and "." + ext.lower() in SUFFIX_FORMAT:
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

def _read_txt(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
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


def _read_jsonl(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
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


def _read_json(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
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


def _read_csv(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
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

    reader = csv.reader(text_lines(), delimiter="\t" if split_suffix(path)[1] == ".tsv" else ",")
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


def _rows(label: str, values, fld: str, ctx: Ctx, first_row: int) -> Iterator[tuple[str, str]]:
    for k, value in enumerate(values):
        where = f"{label}#{first_row + k}"
        try:
            yield _check_text(value, fld), where
        except _Bad as exc:
            ctx.problem(where, exc)


def _read_parquet(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
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


def is_hf_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def load_saved(path: Path, error: type[Exception]):
    """A ``save_to_disk`` folder (Dataset or DatasetDict); a folder that is not one, or does not load,
    raises ``error`` (the caller's: corpus and labeled-data errors keep their own types)."""
    if not is_hf_dir(path):
        raise error(f"{path}: not a datasets folder (save_to_disk writes dataset_info.json + state.json, "
                    "or dataset_dict.json)")
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here is "this folder cannot be loaded"
        raise error(f"{path}: cannot load datasets folder ({type(exc).__name__}: {exc})") from None


def _read_hf(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    import datasets  # slow to import: only when a datasets folder is actually read

    ds = load_saved(path, CorpusError)
    label = str(path)
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        split = src.split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
        if split is None:
            raise CorpusError(f"{path}: DatasetDict with splits {splits} and no 'train'; set split: (one of "
                              f"{', '.join(splits)}) or point path at one split folder, e.g. {path / splits[0]}")
        if split not in ds:
            raise CorpusError(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
        ds, label = ds[split], str(path / split)
    elif src.split is not None:
        raise CorpusError(f"{path}: split: {src.split!r} given, but this datasets folder holds one Dataset, not a DatasetDict")
    yield from _dataset_rows(ds, label, src.text_field, ctx)


def _dataset_rows(ds, label: str, fld: str, ctx: Ctx) -> Iterator[tuple[str, str]]:
    """(text, "label#row") of a ``datasets`` Dataset or IterableDataset, 1,024 rows at a time."""
    features = ds.features   # None for a streamed dataset whose files do not declare them
    if features is not None:
        feat = features.get(fld)
        dtype = getattr(feat, "dtype", type(feat).__name__)
        _string_column(label, list(features), fld, str(dtype), dtype in ("string", "large_string"))
        ds = ds.select_columns([fld])
    row = 0
    for batch in ds.iter(batch_size=1024):
        if fld not in batch:   # streamed without declared features: the first batch tells
            raise CorpusError(f"{label}: no column {fld!r} {_keys_hint(fld, list(batch))}")
        values = batch[fld]
        yield from _rows(label, values, fld, ctx, row)
        row += len(values)


def _read_hub(src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    """A dataset on the Hugging Face Hub (or a local dataset repo folder), through ``datasets.load_dataset``;
    a failure while loading or streaming names the source (and the row reached)."""
    spec = HubSpec(repo=src.path, subset=src.subset, split=src.split, revision=src.revision,
                   streaming=src.streaming)
    label = spec.label
    ds = load_hub_dataset(spec, CorpusError)
    n = 0
    try:
        for item in _dataset_rows(ds, label, src.text_field, ctx):
            yield item
            n += 1
    except CorpusError:
        raise
    except Exception as exc:  # noqa: BLE001 - a stream that breaks midway (network, a corrupt shard)
        raise CorpusError(f"{label}: reading failed after {n:,} rows ({type(exc).__name__}: "
                          f"{str(exc).strip()[:300]})") from None


_READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
            "parquet": _read_parquet, "hf": _read_hf}


def read_unit(path: Path, fmt: str, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    if fmt == "hub":
        return _read_hub(src, ctx)
    if fmt in ("txt", "jsonl", "json", "csv"):
        head = _sniff(path)
        if fmt == "jsonl" and head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"[":
            fmt = "json"  # a JSON array saved as .jsonl: never valid JSON Lines of objects anyway
    return _READERS[fmt](path, src, ctx)
