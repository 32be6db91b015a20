"""Reading labeled records (JSONL, CSV/TSV, parquet; ``.gz`` too; a ``save_to_disk`` split folder; a
hub dataset's split given as ``hub:owner/name[subset]:split``) and splitting them by label.

Shared by every task. Each record becomes an :class:`Example` whose ``origin`` is ``"path:line"``
(for parquet: the 1-based row; for a datasets folder ``folder#row`` and a hub split
``hub:owner/name:split#row``, 0-based as in ``ds[row]``), so a later error can point at the input. Bad input stops with a
:class:`DataError` naming file, line and field — or, with ``on_error="skip"``, is counted in the
:class:`ReadReport` and skipped.

    report = ReadReport()
    rows = read_records("train.jsonl", fields_required=["text", "label"], text_fields=["text"],
                        on_error="raise", report=report)
    train, dev = stratified_split(rows, lambda e: e.fields["label"], [0.1], seed=0)
    first_100 = stratified_subsample(train, 100, lambda e: e.fields["label"], seed=1)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

from ..data.columnar import load_saved
from ..config.hub import HubSpec, is_hub_spec, parse_hub_spec
from ..data.hub import class_names, load_hub_dataset, named_labels
from .base import DataError, Example, ReadReport

FORMATS = ("jsonl", "csv", "tsv", "parquet")


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """'auto' -> jsonl | csv | tsv | parquet from the suffix (``.gz`` ignored)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    found = {
        "jsonl": "jsonl",
        "json": "jsonl",
        "ndjson": "jsonl",
        "csv": "csv",
        "tsv": "tsv",
        "parquet": "parquet",
        "pq": "parquet",
    }.get(suffix)
    if found is None:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {'.' + suffix if suffix else '(none)'}; "
            f"use .jsonl, .csv, .tsv or .parquet (optionally .gz), or set the format explicitly"
        )
    return found


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record or None, problem or None) per non-blank line. A file holding one
    JSON array (``[{...}, ...]``) is accepted too; its "line" is then the element number."""
    with _open_binary(path) as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):
        try:
            with _open_binary(path) as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield getattr(exc, "lineno", 1), None, f"not a valid JSON file ({exc})"
            return
        for i, rec in enumerate(data, 1):
            yield i, rec, None
        return
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"malformed JSON ({exc.msg} at column {exc.colno})"


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[int, Any, str | None]]:
    with _open_binary(path) as raw:
        try:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    yield line, None, f"{len(row)} columns, the header has {len(header)}"
                    continue
                yield line, dict(zip(header, row)), None
        except UnicodeDecodeError as exc:
            yield reader.line_num + 1, None, f"not UTF-8 ({exc.reason}); the rest of the file is unreadable"
        except csv.Error as exc:
            yield reader.line_num, None, f"malformed CSV ({exc})"


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    source: Any = path
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            source = io.BytesIO(fh.read())
    table = pq.read_table(source)
    for i, rec in enumerate(table.to_pylist(), 1):
        yield i, rec, None


def _hub_spec(value: str) -> HubSpec:
    try:
        return parse_hub_spec(value)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _named_rows(ds) -> Iterator[tuple[int, Any, str | None]]:
    """(row, record, None) of a ``datasets`` split; label columns stored as class ids carry their names."""
    classes = class_names(ds.features)
    for i, rec in enumerate(ds):
        yield i, named_labels(rec, classes), None


def _iter_hub(spec: HubSpec) -> Iterator[tuple[int, Any, str | None]]:
    yield from _named_rows(load_hub_dataset(spec, DataError))


def _iter_saved(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """The rows of a ``save_to_disk`` folder holding one split (a Dataset)."""
    import datasets

    ds = load_saved(path, DataError)
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(ds)}; point at one split folder, "
            f"e.g. {path / next(iter(ds))}"
        )
    yield from _named_rows(ds)


def _check(rec: Any, fields_required: Sequence[str], text_fields: Sequence[str]) -> tuple[str, str] | None:
    """(short reason for the report, full message) for a bad record, else None."""
    if not isinstance(rec, dict):
        kind = type(rec).__name__
        return "not an object", f"expected a JSON object with fields, got {kind}"
    for name in fields_required:
        if name not in rec:
            keys = ", ".join(map(str, list(rec)[:12])) + (", ..." if len(rec) > 12 else "")
            return f"field '{name}' missing", f"field '{name}' missing (keys: {keys or 'none'})"
        if rec[name] is None:
            return f"field '{name}' null", f"field '{name}' is null"
    for name in text_fields:
        value = rec.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"field '{name}' not text", f"field '{name}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field '{name}' empty", f"field '{name}' is empty"
    return None


def read_records(
    path: str | Path,
    *,
    fields_required: Sequence[str] = (),
    text_fields: Sequence[str] = (),
    on_error: str = "raise",
    report: ReadReport | None = None,
    format: str = "auto",
) -> list[Example]:
    """Read labeled records; every returned Example has all ``fields_required`` (non-null) and
    non-empty strings in ``text_fields`` (optional text fields may be absent).

    ``on_error="raise"`` stops at the first bad record with "file:line: field 'label' missing
    (keys: ...)"; ``"skip"`` counts it in ``report`` (by reason, with the first few origins)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = report if report is not None else ReadReport()
    rows: Iterable
    if is_hub_spec(path):
        spec = _hub_spec(str(path))
        rows, where = _iter_hub(spec), spec.label + "#{}"
        path = spec.label
    elif Path(path).is_dir():
        path = Path(path)
        rows, where = _iter_saved(path), f"{path}#{{}}"
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        fmt = detect_format(path, format)
        if fmt == "jsonl":
            rows = _iter_jsonl(path)
        elif fmt in ("csv", "tsv"):
            rows = _iter_csv(path, "," if fmt == "csv" else "\t")
        else:
            rows = _iter_parquet(path)
        where = f"{path}:{{}}"
    text_fields = [f for f in text_fields if f]
    out: list[Example] = []
    for line, rec, problem in rows:
        origin = where.format(line)
        if problem is None:
            bad = _check(rec, fields_required, text_fields)
            reason, problem = bad if bad else (None, None)
        else:
            reason = problem.split(" (", 1)[0]
        if problem is not None:
            if on_error == "raise":
                raise DataError(f"{origin}: {problem}")
            report.skip(origin, reason)
            continue
        out.append(Example(fields=rec, origin=origin))
    report.examples += len(out)
    if not out:
        raise DataError(
            f"{path}: no usable records"
            + (f" ({report.skipped} skipped: {report.skip_reasons})" if report.skipped else " (empty file)")
        )
    return out


# --- splitting by label -------------------------------------------------------------------------


def _groups(examples: Sequence[Example], label_fn: Callable[[Example], Hashable]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[repr(label_fn(ex))].append(i)
    return dict(sorted(groups.items()))


def stratified_split(
    examples: Sequence[Example], label_fn: Callable[[Example], Hashable], fractions: Sequence[float], seed: int
) -> list[list[Example]]:
    """Split off parts of the given fractions, class by class: returns ``[rest, part_1, ...]``.

    Deterministic in ``seed`` (independent of file order within a class), original order kept
    inside each part. A class always keeps at least one example in ``rest`` (so rare labels
    stay learnable); tiny classes may therefore be missing from the parts."""
    if sum(fractions) >= 1 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be >= 0 and add up to less than 1, got {list(fractions)}")
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for key, idx in _groups(examples, label_fn).items():
        idx = list(idx)
        random.Random(f"split:{seed}:{key}").shuffle(idx)
        pos = 0
        for j, frac in enumerate(fractions, 1):
            k = min(int(round(frac * len(idx))), len(idx) - pos - 1)
            k = max(k, 0)
            parts[j].extend(idx[pos : pos + k])
            pos += k
        parts[0].extend(idx[pos:])
    return [[examples[i] for i in sorted(p)] for p in parts]


def stratified_order(examples: Sequence[Example], label_fn: Callable[[Example], Hashable], seed: int) -> list[int]:
    """A seeded ranking of all examples whose every prefix is stratified: one example of each class
    first, then classes interleaved in proportion to their size. Taking prefixes gives nested subsets."""
    keyed = []
    for key, idx in _groups(examples, label_fn).items():
        idx = list(idx)
        rng = random.Random(f"subsample:{seed}:{key}")
        rng.shuffle(idx)
        tie = rng.random()
        # The i-th example of a class of size n sits at i/n: each class spreads evenly over the order.
        keyed.extend(((i / len(idx), tie, j) for i, j in enumerate(idx)))
    keyed.sort()
    return [j for _, _, j in keyed]


def stratified_subsample(
    examples: Sequence[Example], n: int, label_fn: Callable[[Example], Hashable], seed: int
) -> list[Example]:
    """``n`` examples in proportion to the classes (at least one per class when n allows).

    The same ``seed`` gives the same subset in every run and arm, and subsets are nested: the
    100-example subset is contained in the 300-example one. Original order is kept."""
    if n >= len(examples):
        return list(examples)
    keep = sorted(stratified_order(examples, label_fn, seed)[:n])
    return [examples[i] for i in keep]
