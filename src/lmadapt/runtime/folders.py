"""Writing a whole output folder without ever deleting what lmadapt did not write.

    write_folder("runs/tok", tok.save_pretrained, overwrite=False, flag="--overwrite")

The folder is filled under a temporary sibling (``.NAME.tmp-XXXX``) and renamed into place, so an
interrupted command leaves the old folder as it was. Beside what the command writes goes
``.lmadapt-files.json``, the list of the files it wrote; that list is how a later run tells its own
output from the user's files. The rules (issue 19: `tokenizer train --output` once replaced a whole
project folder with two tokenizer files):

* no folder, or an empty one: the new folder is renamed into place;
* a folder holding only files an lmadapt command wrote there (all listed in its
  ``.lmadapt-files.json``): replaced whole, atomically (re-running a command is safe);
* any other non-empty folder: refused unless ``overwrite``; with it, only the files this command
  writes are replaced (one rename each) and the files the previous lmadapt write listed but this
  one no longer writes are removed; everything else in the folder stays untouched;
* a path that is a file: refused.

This module sits beside ``config`` at the bottom of the layers (models/ and stages/ use it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..config.base import ConfigError

MANIFEST = ".lmadapt-files.json"


def _files(folder: Path) -> set[str]:
    """Relative paths of every file under ``folder`` (the manifest itself excluded)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} - {MANIFEST}


def written_by_lmadapt(folder: str | Path) -> set[str]:
    """The files the manifest of ``folder`` lists (empty when it has none or it is unreadable)."""
    try:
        listed = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(f) for f in listed if isinstance(f, str) and ".." not in Path(f).parts}


def check_output_folder(output: str | Path, *, overwrite: bool = False, flag: str = "--overwrite") -> str:
    """How ``output`` will be written: "new" (absent or empty), "ours" (only lmadapt's files: replaced
    whole) or "merge" (other files too, ``overwrite`` given). Raises ConfigError otherwise. Call it
    before expensive work, so a refusal comes at once."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; give a folder path for the output")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    present = _files(out)
    ours = written_by_lmadapt(out)
    if ours and present <= ours:
        return "ours"
    if not overwrite:
        foreign = sorted(present - ours)
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(
            f"{out} is not empty and holds files lmadapt did not write there ({shown}); choose a new "
            f"folder, or pass {flag} to replace only the files this command writes (the rest is kept)"
        )
    return "merge"


def write_folder(
    output: str | Path, fill: Callable[[str], object], *, overwrite: bool = False, flag: str = "--overwrite"
) -> Path:
    """Call ``fill(tmp_folder)`` and put what it wrote at ``output`` by the rules of the module doc."""
    out = Path(output)
    mode = check_output_folder(out, overwrite=overwrite, flag=flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(str(tmp))
        written = sorted(_files(tmp))
        (tmp / MANIFEST).write_text(json.dumps({"files": written}, indent=1) + "\n", encoding="utf-8")
        if mode == "new":
            os.replace(tmp, out)  # rename(2) onto an absent or empty folder
        elif mode == "ours":
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _merge_into(tmp, out, written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_output_file(path: str | Path, what: str = "--output") -> None:
    """An output *file* path must not be a folder (a rename onto one was an IsADirectoryError
    traceback after all the work was done): checked before the work starts."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what}: {p} is a folder; give a file path (e.g. {p / 'out.json'})")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"{what}: {p.parent} is a file, so {p} cannot be written")


def refuse_foreign_folder(out: Path, markers: tuple[str, ...], key: str, kind: str) -> None:
    """For a command that writes fixed file names into a folder it keeps using (``lmadapt run``): a
    non-empty folder holding none of ``markers`` is someone else's, and is refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise ConfigError(f"{key}: {out} is not empty ({shown}, ...) and is not {kind}; give a new or empty folder")


def _merge_into(tmp: Path, out: Path, written: list[str]) -> None:
    """Move this write's files over the user's folder one by one; remove only our own stale files."""
    stale = written_by_lmadapt(out) - set(written)
    for rel in written + [MANIFEST]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    for rel in stale:
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "MANIFEST",
    "check_output_file",
    "check_output_folder",
    "refuse_foreign_folder",
    "write_folder",
    "written_by_lmadapt",
]
