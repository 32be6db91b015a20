"""Datasets on the Hugging Face Hub, for corpora (``format: hub``) and labeled data (``hub:`` paths).

    spec = config.hub.parse_hub_spec("hub:nyu-mll/glue[sst2]:validation")   # labeled data: one string per split
    ds = load_hub_dataset(spec, DataError)                         # datasets.Dataset (or IterableDataset)

A spec names a dataset repo (a hub id, or a local folder laid out like one), an optional
configuration (``[subset]``, load_dataset's ``name``), a split (default ``train``) and an optional
revision (``@commit``): ``hub:owner/name@revision[subset]:split``. Origins of its rows read
``hub:owner/name[subset]:split#row``. Everything that can go wrong while loading (no network, an
unknown dataset, split or subset, a gated repo) becomes one error naming the spec, of the caller's
error class, so corpus and labeled-data errors keep their own types.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..config.hub import HubSpec


def load_hub_dataset(spec: HubSpec, error: type[Exception]):
    """The split ``spec`` names, loaded by ``datasets.load_dataset``; failures raise ``error``."""
    import datasets

    # A local folder is streamed with a cache of its own: datasets keys the cache of a local repo whose
    # README declares configurations by the folder's name and config, not by its path or file times
    # (seen: another folder's stale rows, with datasets 5.2), and streaming copies nothing.
    local = Path(spec.repo).expanduser().is_dir()
    cache = tempfile.mkdtemp(prefix="lmadapt-hub-") if local else None
    try:
        ds = datasets.load_dataset(
            spec.repo,
            spec.subset,
            split=spec.split or "train",
            revision=spec.revision,
            streaming=spec.streaming or local,
            cache_dir=cache,
        )
    except Exception as exc:  # noqa: BLE001 - connection, not found, gated, bad split/config: all "cannot load"
        hint = (
            " (no network, or HF_HUB_OFFLINE=1 and the dataset is not in the local cache: download it "
            "once where the hub is reachable, or point path at a local copy)"
            if isinstance(exc, (ConnectionError, OSError))
            else ""
        )
        raise error(
            f"{spec.label}: cannot load the dataset ({type(exc).__name__}: {str(exc).strip()[:300]}){hint}"
        ) from None
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)  # streaming reads the folder's files, not the cache
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise error(f"{spec.label}: loaded several splits ({', '.join(ds)}); name one")
    return ds


def class_names(features) -> dict[str, object]:
    """{column: ClassLabel} for label columns stored as class ids (single or a list of them), so
    records can carry the label names a user reads, not the ids."""
    import datasets

    found = {}
    for name, feat in (features or {}).items():
        inner = getattr(feat, "feature", None)  # a list of class ids (multi-label)
        if isinstance(feat, datasets.ClassLabel) or isinstance(inner, datasets.ClassLabel):
            found[name] = feat
    return found


def named_labels(record: dict, classes: dict) -> dict:
    """``record`` with class ids replaced by names; -1 (no label, as in GLUE's test splits) -> None."""
    import datasets

    for name, feat in classes.items():
        value = record.get(name)
        if isinstance(feat, datasets.ClassLabel):
            record[name] = feat.int2str(value) if isinstance(value, int) and value >= 0 else None
        elif isinstance(value, list):
            record[name] = [feat.feature.int2str(v) for v in value if isinstance(v, int) and v >= 0]
    return record
