"""Checkpoints that are either complete or absent, and resume from the newest complete one.

transformers (5.x) writes ``checkpoint-N`` in place: a kill or a full disk part-way leaves a folder
with, say, only ``config.json``, which ``get_last_checkpoint`` still returns, and every later resume
fails with a traceback. :class:`AtomicCheckpoints` (a mixin over any ``Trainer``) lets the Trainer
write the checkpoint exactly as it would, but into ``checkpoints/.saving/checkpoint-N``, and renames
it to ``checkpoints/checkpoint-N`` once every file (weights, optimizer, scheduler, RNG of every
process, trainer state) is there. A rename within a filesystem is atomic, so a ``checkpoint-N``
folder is always a whole one.

:func:`newest_complete_checkpoint` still checks what it resumes from (folders written by older
versions, or damaged later): the files a resume loads must be present and readable (JSON parses,
safetensors headers and the torch zip archives' directories read), and the incomplete ones newer
than it are named and moved aside to ``incomplete-checkpoint-N`` so checkpoint rotation never counts them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from ..config.base import ConfigError

STAGING_DIR = ".saving"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class AtomicCheckpoints:
    """Mixin (put before ``Trainer`` in the bases): checkpoints appear whole or not at all."""

    _staging: Path | None = None

    def _get_output_dir(self, trial):
        # Trainer._save_checkpoint asks this for the folder that holds checkpoint-N; during a save
        # it gets the staging folder, so every writer (each process's RNG file too) writes there.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        staging, name = run_dir / STAGING_DIR, f"checkpoint-{self.state.global_step}"
        if self.args.should_save and (staging / name).exists():
            shutil.rmtree(staging / name)  # the leftover of a save killed part-way
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its files
        if self.args.should_save:
            self._publish(staging / name, run_dir / name)
        elif self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint) == staging / name:
            # the other processes load the best checkpoint at the end too (a sharded model from its own shards)
            self.state.best_model_checkpoint = str(run_dir / name)
        self.accelerator.wait_for_everyone()

    def _publish(self, tmp: Path, final: Path) -> None:
        best = self.state.best_model_checkpoint
        if best and Path(best) == tmp:
            # The Trainer recorded the staging path as the best checkpoint; point it at the final one,
            # in memory and in the checkpoint's own trainer_state.json (read back on resume).
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(tmp / "trainer_state.json"))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)  # an incomplete folder of that step, left by older code
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        try:
            tmp.parent.rmdir()  # the staging folder, empty again
        except OSError:
            pass
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=str(final.parent),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """The checkpoint's bytes are on disk before its name says it is complete (power loss)."""
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _zip_ok(path: Path) -> bool:
    # torch.save writes a zip archive whose directory is at its end: a truncated file has none.
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _safetensors_ok(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
        return True
    except Exception:  # noqa: BLE001 - any failure to read the header means: not loadable
        return False


def _json_ok(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _engine_parts(folder: Path) -> tuple[str, Path, list[Path], list[Path]]:
    """A DeepSpeed engine checkpoint (ZeRO: every process's partition of the weights and of the
    optimizer state, one file each, under the folder ``latest`` names): (tag, that folder, model
    partitions, optimizer partitions). Raises OSError/UnicodeDecodeError when ``latest`` is unreadable."""
    tag = (folder / "latest").read_text(encoding="utf-8").strip()
    step = folder / tag
    return tag, step, sorted(step.glob("*model_states.pt")), sorted(step.glob("*optim_states.pt"))


def _deepspeed_problem(folder: Path) -> str | None:
    """What is missing from a DeepSpeed engine checkpoint, or None."""
    try:
        tag, step, models, states = _engine_parts(folder)
    except (OSError, UnicodeDecodeError):
        return "latest is unreadable"
    if not tag or not step.is_dir():
        return f"latest names {tag!r}, which is not in the checkpoint"
    if not models or len(models) != len(states):
        return f"{tag} holds {len(models)} model and {len(states)} optimizer partitions"
    bad = next((p.name for p in models + states if not _zip_ok(p)), None)
    return f"{tag}/{bad} is truncated or unreadable" if bad else None


def engine_partitions(folder: str | Path) -> int | None:
    """How many processes wrote ``folder`` if it is a DeepSpeed engine checkpoint, else None."""
    try:
        tag, _, models, _ = _engine_parts(Path(folder))
    except (OSError, UnicodeDecodeError):
        return None
    return len(models) if tag else None


def resumable_by(folder: str | Path, processes: int) -> None:
    """Refuse, before training starts and on every process alike, a DeepSpeed checkpoint written by
    another number of processes: DeepSpeed cannot re-partition ZeRO optimizer state to a new world
    size (it stops inside ``train()`` with ZeRORuntimeException). FSDP2's checkpoints reshard."""
    written = engine_partitions(folder)
    if written and written != processes:
        raise ConfigError(
            f"train.resume: {Path(folder).name} is a DeepSpeed checkpoint written by {written} processes and this "
            f"launch has {processes}; DeepSpeed cannot re-partition it. Resume with {written} processes, or turn "
            f"it into a plain model with the zero_to_fp32.py script in {folder} and start a new run from that"
        )


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from (the first missing or unreadable part), or None."""
    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json"
    if not _json_ok(folder / "trainer_state.json"):
        return "trainer_state.json is not valid JSON"
    weights = sorted(folder.glob("*.safetensors"))
    sharded = any(p.name.startswith("pytorch_model_fsdp") for p in folder.iterdir())  # FSDP's own layout
    engine = (folder / "latest").is_file()  # DeepSpeed's own layout: `latest` names global_stepN/
    if engine and (problem := _deepspeed_problem(folder)):
        return problem
    if not weights and not sharded and not engine:
        return "no model weights"
    bad = next((p.name for p in weights if not _safetensors_ok(p)), None)
    if bad:
        return f"{bad} is truncated or unreadable"
    optimizer = folder / "optimizer.pt"
    if not optimizer.is_file() and not engine and not any(p.name.startswith("optimizer_") for p in folder.iterdir()):
        return "no optimizer state"
    for part in ("optimizer.pt", "scheduler.pt"):
        if part == "optimizer.pt" and not optimizer.is_file():
            continue
        if not (folder / part).is_file():
            return f"no {part}"
        if not _zip_ok(folder / part):
            return f"{part} is truncated or unreadable"
    rng = sorted(folder.glob("rng_state*.pth"))
    if not rng:
        return "no RNG state"
    bad = next((p.name for p in rng if not _zip_ok(p)), None)
    return f"{bad} is truncated or unreadable" if bad else None


def newest_complete_checkpoint(ckpt_dir: str | Path, *, set_aside: bool = False, say=print) -> str | None:
    """The newest ``checkpoint-N`` in ``ckpt_dir`` that a resume can load; the incomplete ones newer
    than it are reported through ``say`` (and, with ``set_aside``, renamed ``incomplete-checkpoint-N``)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        if set_aside:
            aside = path.with_name("incomplete-" + path.name)
            if aside.exists():
                shutil.rmtree(aside)
            path.rename(aside)
            say(f"resume: skipped {path.name} ({problem}); moved it to {aside.name}")
        else:
            say(f"resume: skipped {path.name} ({problem})")
    return None
