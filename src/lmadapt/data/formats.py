"""File formats of unlabeled text: each reader yields ``(text, origin)`` pairs from one file or
datasets folder, and reports record-level problems through a ``Ctx`` (raise, or skip and count).

    for text, origin in read_unit(Path("notes.jsonl.gz"), "jsonl", SourceConfig(path=...), ctx):

Formats: txt/md (paragraphs, lines or whole files), JSON Lines, a JSON array (streamed, so a large
file is not parsed as one object), CSV/TSV, read here from bytes and lines; parquet,
``datasets.save_to_disk`` folders and hub datasets (``datasets.load_dataset``, optionally streamed)
are read by column in :mod:`.columnar`. Any of the text formats may be gzip-compressed (recognised
by its magic bytes). ``sources.py`` maps a source's path to (file, format) units and owns dedup and
held-out splits; this module only reads. Origins and error rules are documented in ``sources.py``;
what a bad record is and how it is reported, in :mod:`.records`.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

from ..config.data import SourceConfig
from .columnar import read_hf, read_hub, read_parquet
from .records import BadRecord, CorpusError, Ctx, check_text, keys_hint

SUFFIX_FORMAT = {
    ".txt": "txt",
    ".md": "txt",
    ".markdown": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FILE_FORMATS = ("txt", "jsonl", "json", "csv", "parquet")
_GZ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
_WS = re.compile(r"[ \t\n\r]*")
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # undecodable bytes after decode(errors="surrogateescape")
_JSON = json.JSONDecoder()


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
    what = (
        "corrupt gzip file"
        if path.name.lower().endswith(".gz") or isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile))
        else "read error"
    )
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
        raise CorpusError(
            f"{path}: binary file (NUL or mostly undecodable bytes), not UTF-8 text; "
            "exclude it (e.g. with `glob`) or set the right format"
        )
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


def _bad_utf8(byte: int, offset: int, column: int) -> BadRecord:
    return BadRecord(
        "invalid UTF-8", f"invalid UTF-8: byte 0x{byte:02x} at byte offset {offset} (byte {column} of the line)"
    )


def _decode(raw: bytes, lineno: int, offset: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_utf8(raw[exc.start], offset + exc.start, exc.start + 1) from None
    return text.removeprefix("\ufeff") if lineno == 1 else text


def _text_of(record, fld: str) -> str:
    if not isinstance(record, dict):
        raise BadRecord("not an object", f"expected a JSON object with field {fld!r}, got {type(record).__name__}")
    if fld not in record:
        raise BadRecord(f"missing field {fld!r}", f"field {fld!r} missing {keys_hint(fld, list(record))}")
    return check_text(record[fld], fld)


# ---------------------------------------------------------------- readers: yield (text, origin)


def _read_txt(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    if src.split_docs == "file":
        data = _read_all(path)
        try:
            yield data.decode("utf-8").removeprefix("\ufeff").strip(), str(path)  # "" -> too_short
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            start = data.rfind(b"\n", 0, exc.start) + 1
            ctx.problem(
                f"{path}:{line}",
                _bad_utf8(data[exc.start], exc.start, exc.start - start + 1),
                " (whole-file document skipped)",
            )
        return
    para: list[str] = []
    start, bad = 0, None  # start: first line of the current paragraph (0: none open)
    for lineno, offset, raw in _lines(path):
        try:
            line, err = _decode(raw, lineno, offset).rstrip("\r\n"), None
        except BadRecord as exc:
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
                raise BadRecord("malformed JSON", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
            yield _text_of(record, src.text_field), where
        except BadRecord as exc:
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
                    raise CorpusError(
                        f"{path}: expected a list of objects with field {fld!r}, or an object "
                        f'holding one such list (like {{"data": [...]}}); got an object {keys_hint(fld, list(obj))}'
                    )
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
                    off = len(s[: m.start()].encode("utf-8", "surrogateescape"))
                    col = off - len(s[: s.rfind("\n", 0, m.start()) + 1].encode("utf-8", "surrogateescape")) + 1
                    raise _bad_utf8(ord(s[m.start()]) - 0xDC00, off, col)
                yield _text_of(value, fld), where
            except BadRecord as exc:
                ctx.problem(where, exc)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} at column {exc.colno}") from None


def _read_csv(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    # Whole documents easily exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    bad: dict[int, BadRecord] = {}

    def text_lines():  # keeps line endings: quoted fields may span lines
        for lineno, offset, raw in _lines(path):
            try:
                yield _decode(raw, lineno, offset)
            except BadRecord as exc:
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
        raise CorpusError(f"{path}:1: CSV header has no column {fld!r} {keys_hint(fld, header)}")
    col, done = header.index(fld), reader.line_num
    while True:
        start = done + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row = BadRecord("malformed CSV", f"malformed CSV row: {exc}")
        where, lines, done = f"{path}:{start}", range(start, reader.line_num + 1), reader.line_num
        try:
            for n in lines:
                if n in bad:
                    raise bad.pop(n)
            if isinstance(row, BadRecord):
                raise row
            if not row:  # blank line
                continue
            if len(row) != len(header):
                raise BadRecord("wrong field count", f"CSV row has {len(row)} fields, the header has {len(header)}")
            yield check_text(row[col], fld), where
        except BadRecord as exc:
            ctx.problem(where, exc)


_READERS = {
    "txt": _read_txt,
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": read_parquet,
    "hf": read_hf,
}


def read_unit(path: Path, fmt: str, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    if fmt == "hub":
        return read_hub(src, ctx)
    if fmt in ("txt", "jsonl", "json", "csv"):
        head = _sniff(path)
        if fmt == "jsonl" and head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"[":
            fmt = "json"  # a JSON array saved as .jsonl: never valid JSON Lines of objects anyway
    return _READERS[fmt](path, src, ctx)
