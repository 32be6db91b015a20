"""What guards an output folder against stale or concurrent state (issue 19, item 5).

- :class:`FolderLock`: one lmadapt process writes a folder at a time (``lmadapt run`` and every
  standalone stage take the same advisory lock, ``.lmadapt_run.lock``); a stage holds it until its
  process exits (or the pipeline releases it after the stage).
- :func:`recipe_fingerprint` / :func:`check_resume`: the seed, model and data a run trained with are
  recorded in ``lmadapt_run.json`` when training starts; ``train.resume`` refuses a folder whose record
  differs from the recipe, naming the difference (seen: a different seed's checkpoint resumed, "success").
- :func:`clear_previous_run`: ``train.overwrite`` removes what an earlier run wrote (old metrics
  sections and checkpoints were kept and mixed into the new run's), keeping only what the pipeline
  reuses on purpose: its stage file and the packed blocks, whose names key their content.
- :func:`prepare_output_dir`: all of the above at a training stage's start, decided on the main process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config.base import ConfigError
from .dist import barrier, broadcast, is_main_process
from .outputs import write_json

LOCK_FILE = ".lmadapt_run.lock"
RUN_FILE = "lmadapt_run.json"
KEEP_ON_OVERWRITE = {LOCK_FILE, "lmadapt_stage.json", ".lmadapt-blocks"}  # pipeline/cache.py, stages/pretrain_data.py
# A folder holding any of these was written by lmadapt; overwrite never empties a folder without one.
LMADAPT_MARKERS = (KEEP_ON_OVERWRITE - {LOCK_FILE}) | {
    RUN_FILE,
    "lmadapt_recipe.yaml",
    "lmadapt_meta.json",
    "metrics.json",
    "logs.jsonl",
    "checkpoints",
}
# What a run leaves before its first checkpoint or output (a run that failed early: bad data, a wrong
# block size): nothing in it is worth keeping, so the next run starts over there without a flag.
NOTHING_TO_LOSE = {LOCK_FILE, RUN_FILE, ".lmadapt-blocks"}
_held: dict[Path, "FolderLock"] = {}


class FolderLock:
    """An advisory lock on ``folder/.lmadapt_run.lock`` (flock: released when the process exits)."""

    def __init__(self, out: Path, what: str = "`lmadapt run`"):
        self.path, self.fh, self.what = Path(out) / LOCK_FILE, None, what

    def __enter__(self):
        self.fh = self.path.open("a+")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            self.fh.close()
            raise ConfigError(
                f"output_dir: {self.path.parent} is in use by another {self.what}; "
                "wait for it or choose another output_dir"
            ) from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


def hold_folder(out: Path) -> None:
    """Take the folder's lock for the rest of this process (a second stage of the same process on the
    same folder keeps the lock it has: flock locks belong to an open file, not to a process)."""
    key = Path(out).resolve()
    if key not in _held:
        _held[key] = FolderLock(key, "lmadapt process (a run or a training stage)").__enter__()


def release_folder(out: Path) -> None:
    lock = _held.pop(Path(out).resolve(), None)
    if lock is not None:
        lock.__exit__(None, None, None)


def _local_identity(value: str):
    """A local file or folder by what it holds, not where it is (a run folder, or its parent model,
    may be moved or copied between a run and its resume): a file's name and size; a model folder's
    weight files and their sizes. Anything else (a hub id) is compared as written."""
    if len(value) > 4096:
        return value
    path = Path(value).expanduser()
    try:
        if path.is_file():
            return {"file": path.name, "bytes": path.stat().st_size}
        if path.is_dir():
            weights = {p.name: p.stat().st_size for p in sorted(path.glob("*.safetensors"))[:200]}
            return {"folder_weights": weights} if weights else {"folder": path.name}
    except OSError:
        pass
    return value


def recipe_fingerprint(recipe: dict) -> dict:
    """The parts of a recipe a checkpoint belongs to: seed, model, data (+ task, LoRA, vocabulary),
    local paths by their content (:func:`_local_identity`)."""

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return _local_identity(node) if isinstance(node, str) else node

    fp: dict = {"train.seed": (recipe.get("train") or {}).get("seed")}
    for section in ("model", "data", "task", "lora", "vocab"):
        value = recipe.get(section)
        if isinstance(value, dict):
            fp[section] = walk({k: v for k, v in value.items() if k not in ("cache_dir", "num_proc")})
    return json.loads(json.dumps(fp, default=str))


def _flatten(node, key: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{key}.{k}" if key else str(k)))
        return out or {key: {}}
    if isinstance(node, list):
        out = {}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{key}[{i}]"))
        return out or {key: []}
    return {key: node}


def check_resume(out: Path, recipe: dict) -> None:
    """Refuse to resume a folder that another recipe (seed, model, data) trained."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return  # nothing recorded (a run of an older lmadapt): nothing to compare
    old = _flatten(json.loads(path.read_text(encoding="utf-8")))
    new = _flatten(recipe_fingerprint(recipe))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:3])
        raise ConfigError(
            f"train.resume: {out} holds a run of a different recipe ({shown}"
            f"{'; ...' if len(diff) > 3 else ''}); resume it with its own recipe, or use another "
            "train.output_dir or train.overwrite=true"
        )


def record_run(out: Path, recipe: dict) -> None:
    write_json(Path(out) / RUN_FILE, recipe_fingerprint(recipe))


def clear_previous_run(out: Path) -> None:
    """Remove what an earlier run wrote in ``out`` (train.overwrite); refuse a folder lmadapt did not write."""
    names = {p.name for p in out.iterdir()} - {LOCK_FILE}  # our own lock, taken just before
    if not names:
        return
    if not names & LMADAPT_MARKERS:
        raise ConfigError(
            f"train.overwrite: {out} holds files lmadapt did not write "
            f"({', '.join(sorted(names)[:5])}); it removes only an earlier lmadapt run's output: "
            "choose an empty or new train.output_dir"
        )
    for p in out.iterdir():
        if p.name not in KEEP_ON_OVERWRITE:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def holds_a_run(out: Path) -> bool:
    """Whether ``out`` holds anything a new run could lose or mix with (see NOTHING_TO_LOSE)."""
    return any(p.name not in NOTHING_TO_LOSE for p in Path(out).iterdir())


def prepare_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, recipe: dict | None = None) -> Path:
    """Refuse to mix a new run into an old folder unless asked to resume or overwrite.

    The main process also takes the folder's lock, refuses a resume of another recipe's run, clears
    an earlier run's files on overwrite, and records this run's fingerprint (above).

    Under several processes every rank checks before any rank writes (a barrier follows), so
    rank 1 never mistakes rank 0's fresh files for an old run. The barrier is ``dist.barrier``: a
    bare ``PartialState()`` on a machine without GPUs calls a torchrun job single-process, and its
    ``wait_for_everyone`` returns at once (seen: rank 1 refusing the folder rank 0 had started to fill).
    """
    out = Path(output_dir)
    problem = None
    if out.exists() and not out.is_dir():  # was a NotADirectoryError traceback
        problem = f"train.output_dir: {out} is a file, not a folder; give a folder path"
    elif out.exists() and holds_a_run(out) and not (resume or overwrite):
        problem = (
            f"train.output_dir: {out} is not empty ({', '.join(p.name for p in list(out.iterdir())[:5])}...); "
            "pass train.resume=true to continue it or train.overwrite=true to reuse it"
        )
    barrier()  # every process has looked before any process writes
    if problem:
        raise ConfigError(problem)
    error = None
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        try:
            hold_folder(out)
            if resume and recipe is not None:
                check_resume(out, recipe)
            elif overwrite and any(out.iterdir()):
                clear_previous_run(out)
            if recipe is not None:
                record_run(out, recipe)
        except Exception as exc:  # noqa: BLE001 - re-raised on every process below
            error = exc
    message = broadcast(str(error) if error else None)
    if error is not None:
        raise error
    if message:
        raise ConfigError(message)
    return out
