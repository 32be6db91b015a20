"""Readers of text held in a named column: parquet files, ``datasets.save_to_disk`` folders and
hub datasets (``datasets.load_dataset``, optionally streamed). Each yields ``(text, "label#row")``
pairs, a batch of rows at a time, and reports bad rows through a :class:`~.records.Ctx`.
The column's type is checked once, up front, where the format declares it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..config.data import SourceConfig
from .hub import HubSpec, load_hub_dataset
from .records import BadRecord, CorpusError, Ctx, check_text, keys_hint


def _string_column(path, names: list[str], fld: str, type_str: str, ok: bool) -> None:
    if fld not in names:
        raise CorpusError(f"{path}: no column {fld!r} {keys_hint(fld, names)}")
    if not ok:
        raise CorpusError(f"{path}: column {fld!r} holds {type_str}, expected strings")


def _rows(label: str, values, fld: str, ctx: Ctx, first_row: int) -> Iterator[tuple[str, str]]:
    for k, value in enumerate(values):
        where = f"{label}#{first_row + k}"
        try:
            yield check_text(value, fld), where
        except BadRecord as exc:
            ctx.problem(where, exc)


def read_parquet(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.name.lower().endswith(".gz"):
        raise CorpusError(
            f"{path}: gzip-compressed parquet is not supported (parquet compresses internally); gunzip it"
        )
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from None
    schema, fld = pf.schema_arrow, src.text_field
    typ = schema.field(fld).type if fld in schema.names else None
    if typ is not None and pa.types.is_dictionary(typ):
        typ = typ.value_type
    is_str = typ is not None and (
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    )
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
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def load_saved(path: Path, error: type[Exception]):
    """A ``save_to_disk`` folder (Dataset or DatasetDict); a folder that is not one, or does not load,
    raises ``error`` (the caller's: corpus and labeled-data errors keep their own types)."""
    if not is_hf_dir(path):
        raise error(
            f"{path}: not a datasets folder (save_to_disk writes dataset_info.json + state.json, or dataset_dict.json)"
        )
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure here is "this folder cannot be loaded"
        raise error(f"{path}: cannot load datasets folder ({type(exc).__name__}: {exc})") from None


def read_hf(path: Path, src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    import datasets  # slow to import: only when a datasets folder is actually read

    ds = load_saved(path, CorpusError)
    label = str(path)
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        split = src.split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
        if split is None:
            raise CorpusError(
                f"{path}: DatasetDict with splits {splits} and no 'train'; set split: (one of "
                f"{', '.join(splits)}) or point path at one split folder, e.g. {path / splits[0]}"
            )
        if split not in ds:
            raise CorpusError(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
        ds, label = ds[split], str(path / split)
    elif src.split is not None:
        raise CorpusError(
            f"{path}: split: {src.split!r} given, but this datasets folder holds one Dataset, not a DatasetDict"
        )
    yield from _dataset_rows(ds, label, src.text_field, ctx)


def _dataset_rows(ds, label: str, fld: str, ctx: Ctx) -> Iterator[tuple[str, str]]:
    """(text, "label#row") of a ``datasets`` Dataset or IterableDataset, 1,024 rows at a time."""
    features = ds.features  # None for a streamed dataset whose files do not declare them
    if features is not None:
        feat = features.get(fld)
        dtype = getattr(feat, "dtype", type(feat).__name__)
        _string_column(label, list(features), fld, str(dtype), dtype in ("string", "large_string"))
        ds = ds.select_columns([fld])
    row = 0
    for batch in ds.iter(batch_size=1024):
        if fld not in batch:  # streamed without declared features: the first batch tells
            raise CorpusError(f"{label}: no column {fld!r} {keys_hint(fld, list(batch))}")
        values = batch[fld]
        yield from _rows(label, values, fld, ctx, row)
        row += len(values)


def read_hub(src: SourceConfig, ctx: Ctx) -> Iterator[tuple[str, str]]:
    """A dataset on the Hugging Face Hub (or a local dataset repo folder), through ``datasets.load_dataset``;
    a failure while loading or streaming names the source (and the row reached)."""
    spec = HubSpec(repo=src.path, subset=src.subset, split=src.split, revision=src.revision, streaming=src.streaming)
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
        raise CorpusError(
            f"{label}: reading failed after {n:,} rows ({type(exc).__name__}: {str(exc).strip()[:300]})"
        ) from None
