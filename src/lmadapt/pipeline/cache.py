"""The stage cache: a stage instance's folder name is a hash of everything that decides its output.

    stages/<kind>-<name>-<hash12>/          the stage's ordinary output folder, plus
        lmadapt_stage.json                  what went into the hash (kind, recipe, parent, inputs, version)
        DONE                                written last (atomically) once the stage finished

hash = sha256 of (kind, the resolved recipe without operational keys, the parent stage's hash,
fingerprints of every input file, lmadapt version). Input files are fingerprinted by content
(sha256) up to ``SMALL_FILE_BYTES`` and by (path, size, mtime_ns) above. A folder with ``DONE``
is reused (plan.reusable says when not); a folder without it belongs to an interrupted stage and
is resumed.

The hash names what a stage computes, not one training of it: a parent trained again (its folder
deleted, ``--rerun``) keeps its hash. So ``DONE`` also carries a ``run_id`` of its own, the
``parent_run`` it started from and a ``code`` fingerprint of lmadapt's source; a child whose
``parent_run`` is not its parent's ``run_id`` is out of date. The code fingerprint stays out of the
hash on purpose: an edit anywhere in lmadapt would otherwise retrain every stage of every run, so
a changed fingerprint is reported, and ``--rerun`` recomputes what the user decides.
"""

from __future__ import annotations

import copy
import functools
import glob as globlib
import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..runtime.outputs import atomic_write_text, read_json

DONE_FILE = "DONE"
STAGE_FILE = "lmadapt_stage.json"
SMALL_FILE_BYTES = 8 * 2**20
MAX_DIR_FILES = 20000
# Recipe keys that never change what a stage computes (where to write, how to resume, how many
# worker processes/threads to use, where to cache tokenization) stay out of the hash.
OPERATIONAL_KEYS = {
    "train": ("output_dir", "resume", "overwrite", "report_to", "torch_threads", "num_workers"),
    "data": ("cache_dir", "num_proc"),
}
# Recipe keys that hold input paths (files, folders or globs), fingerprinted into the hash.
PATH_KEYS = {"path", "tokenizer", "train", "dev", "test", "adapter", "gguf_file", "data", "model"}
PARENT_TOKEN = "@parent"

_sha_cache: dict[tuple[str, int, int], str] = {}


def lmadapt_version() -> str:
    """The installed lmadapt's version string (recorded with every cached stage)."""
    from .. import __version__

    return __version__


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (12 hex digits) of lmadapt's own Python source: which code computed a stage."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def new_run_id() -> str:
    return uuid.uuid4().hex


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def _file_entry(path: Path, rel: str) -> list:
    st = path.stat()
    if st.st_size <= SMALL_FILE_BYTES:
        return [rel, st.st_size, "sha256:" + file_sha256(path)]
    return [rel, st.st_size, f"mtime_ns:{st.st_mtime_ns}", str(path.resolve())]


def fingerprint_path(value: str) -> list | None:
    """Fingerprint of a file, a folder (every file in it) or a glob; None when nothing local matches."""
    p = Path(value).expanduser()
    if p.is_file():
        return [_file_entry(p, p.name)]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        return [_file_entry(f, str(f.relative_to(p))) for f in files[:MAX_DIR_FILES]] + (
            [["truncated", len(files)]] if len(files) > MAX_DIR_FILES else []
        )
    if any(ch in value for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
        return [_file_entry(f, str(f)) for f in files] or None
    return None


def input_fingerprints(recipe: Any, skip: set[str] = frozenset()) -> dict[str, list]:
    """{dotted key: fingerprint} for every local input path in a recipe (values in ``skip`` excluded)."""
    found: dict[str, list] = {}

    def walk(node: Any, key: str, parent_key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k), str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]", parent_key)
        elif isinstance(node, str) and parent_key in PATH_KEYS and node not in skip:
            fp = fingerprint_path(node)
            if fp is not None:
                found[key] = fp

    walk(recipe, "", "")
    return found


def hashable_recipe(kind: str, recipe: dict, parent_model: str | None) -> dict:
    """The recipe minus operational keys, with the parent's folder replaced by a token."""
    r = copy.deepcopy(recipe)
    for section, keys in OPERATIONAL_KEYS.items():
        if isinstance(r.get(section), dict):
            for k in keys:
                r[section].pop(k, None)
    if parent_model is not None:
        if kind == "evaluate":
            r["model"] = PARENT_TOKEN
        elif isinstance(r.get("model"), dict):
            r["model"]["path"] = PARENT_TOKEN
    return r


def stage_key(kind: str, recipe: dict, *, parent_hash: str | None, parent_model: str | None) -> dict:
    """Everything the stage hash covers (also written to ``lmadapt_stage.json`` for inspection)."""
    return {
        "kind": kind,
        "recipe": hashable_recipe(kind, recipe, parent_model),
        "parent": parent_hash,
        "inputs": input_fingerprints(recipe, skip={parent_model} if parent_model else set()),
        "lmadapt": lmadapt_version(),
    }


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_folder_name(kind: str, name: str, full_hash: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{kind}-{safe}-{full_hash[:12]}"


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE_FILE).is_file()


def read_done(folder: Path) -> dict:
    return read_json(Path(folder) / DONE_FILE, default={}) or {}


def mark_done(folder: Path, info: dict) -> None:
    """Written last: a stage folder with DONE is complete and is reused as is."""
    atomic_write_text(
        Path(folder) / DONE_FILE,
        json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}, indent=2, default=str) + "\n",
    )


def discard(folder: Path) -> None:
    """Remove a stage folder whose output is out of date. Renamed first (atomic), so a crash
    midway leaves no half-deleted folder that a later run could take for a finished stage."""
    folder = Path(folder)
    if not folder.exists():
        return
    doomed = folder.with_name(folder.name + ".discarded")
    if doomed.exists():
        shutil.rmtree(doomed)
    folder.rename(doomed)
    shutil.rmtree(doomed)


def write_stage_file(folder: Path, key: dict, full_hash: str, parent_run: str | None = None) -> None:
    """Written when a stage starts; ``parent_run`` lets a later run tell whether an interrupted stage
    started from the parent training that is there now (plan.reusable)."""
    atomic_write_text(
        Path(folder) / STAGE_FILE,
        json.dumps({"hash": full_hash, **key, "parent_run": parent_run}, indent=2, default=str) + "\n",
    )


def recorded_parent_run(folder: Path) -> str | None:
    """The parent training a stage started from: DONE's record, else (interrupted) its stage file's."""
    folder = Path(folder)
    record = read_done(folder) if is_done(folder) else (read_json(folder / STAGE_FILE, default={}) or {})
    return record.get("parent_run")
