"""Output folders: the hand-off between stages.

Every stage writes a plain Hugging Face model folder plus three files of ours:
``lmadapt_recipe.yaml`` (the fully resolved recipe), ``lmadapt_meta.json`` (stage, objective,
parent folder, library versions, token accounting) and ``metrics.json``. Writes are atomic
(temp file, then rename) so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

RECIPE_FILE = "lmadapt_recipe.yaml"
META_FILE = "lmadapt_meta.json"
METRICS_FILE = "metrics.json"
ACCOUNTING_FILE = "token_accounting.json"
LIBRARIES = (
    "lmadapt",
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "accelerate",
    "peft",
    "safetensors",
    "scikit-learn",
)


class AtomicFile:
    """The one write-to-temp-then-rename of lmadapt: write ``tmp`` (a hidden sibling of ``path``, so the
    rename stays on one filesystem) any way you like (text, JSON, an Arrow stream), then :meth:`commit`
    puts it at ``path`` in one step; :meth:`discard` (or an error inside a ``with`` block) removes it.
    A reader never sees half a file, and an interrupted run leaves no half-written one behind.

    ``clobber=False`` commits with a hard link that never replaces an existing ``path``: when two
    writers (two nodes on a shared disk) produce the same file, the first one's stays (filesystems
    without hard links fall back to the rename; the contents are the same either way)."""

    def __init__(self, path: str | Path, *, clobber: bool = True):
        self.path, self.clobber = Path(path), clobber
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        try:
            if self.clobber:
                os.replace(self.tmp, self.path)
                return
            try:
                os.link(self.tmp, self.path)
            except FileExistsError:
                pass  # another process finished the same file first
            except OSError:
                os.replace(self.tmp, self.path)
        finally:
            self.discard()

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write_text(path: str | Path, text: str) -> None:
    with AtomicFile(path) as out, open(out.tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def finite_json(data: Any, found: list[str] | None = None, at: str = "") -> Any:
    """``data`` with every NaN/inf float replaced by None (JSON has no NaN: a bare ``NaN`` made
    metrics.json unreadable by strict parsers); the dotted keys replaced are appended to ``found``."""
    if isinstance(data, float) and not math.isfinite(data):
        if found is not None:
            found.append(at)
        return None
    if isinstance(data, dict):
        return {k: finite_json(v, found, f"{at}.{k}" if at else str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v, found, f"{at}[{i}]") for i, v in enumerate(data)]
    return data


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(
        path, json.dumps(finite_json(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"
    )


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def write_recipe(output_dir: str | Path, recipe: dict) -> None:
    atomic_write_text(Path(output_dir) / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_meta(output_dir: str | Path, **fields: Any) -> dict:
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions(), **fields}
    write_json(Path(output_dir) / META_FILE, meta)
    return meta


def read_meta(folder: str | Path) -> dict:
    """The lmadapt metadata of an output folder ({} for a plain model folder)."""
    return read_json(Path(folder) / META_FILE, default={}) or {}


def update_metrics(output_dir: str | Path, new: dict) -> dict:
    """Merge ``new`` into metrics.json (stages add before/after sections independently)."""
    path = Path(output_dir) / METRICS_FILE
    metrics = read_json(path, default={}) or {}
    metrics.update(new)
    bad: list[str] = [] if "non_finite" not in new else list(new["non_finite"])
    metrics = finite_json(metrics, bad)
    if bad:
        metrics["non_finite"] = sorted(set(bad))  # which values were NaN/inf (written as null)
    write_json(path, metrics)
    return metrics
