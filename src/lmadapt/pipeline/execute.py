"""Running one stage instance of a pipeline into its folder: the stage runners, resume or start
over, DONE, peak memory. The sequential walk (run.py) and the --jobs workers (jobs.py) both call
execute_stage, so a stage runs the same way in either.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from ..config.base import load_recipe
from ..stages import STAGES
from ..stages.pretrain_data import BLOCKS_DIR
from ..runtime.dist import barrier, broadcast, gather, is_main_process, world_size
from ..runtime.dist import log as dist_log
from ..runtime.outputs import METRICS_FILE, write_json
from . import cache
from .plan import StageInstance


def log(msg: str) -> None:
    dist_log(msg, "lmadapt run")


class PeakMemory:
    """Peak resident memory of this process while a stage runs (sampled; /proc on Linux), and the
    peak GPU memory allocated by torch when CUDA is in use."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def rss_kb() -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        try:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        except Exception:  # noqa: BLE001 - informative only
            return 0

    def _loop(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.rss_kb())
            self._stop.wait(self.interval)

    def __enter__(self):
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:  # noqa: BLE001
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self.rss_kb())

    def result(self) -> dict:
        """This process's peaks; under several processes, the largest of any process (one GPU's
        memory is what a reader sizes against) and how many processes ran."""
        out = {"peak_rss_mb": round(self.peak_kb / 1024, 1)}
        try:
            import torch

            if torch.cuda.is_available():
                out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except Exception:  # noqa: BLE001
            pass
        if world_size() > 1:
            every = gather(out)
            out = {k: max(p[k] for p in every if k in p) for k in out}
            out["processes"] = len(every)
        return out


def _recipe_stage(kind: str) -> Callable[[dict, Path], dict]:
    """The pipeline's runner of a recipe-driven stage (stages.STAGES): its recipe loaded and checked, then run."""

    def run(recipe: dict, folder: Path) -> dict:
        stage = STAGES[kind]
        return stage.runner()(load_recipe(stage.config_class(), data=recipe))

    run.__name__ = f"_run_{kind}"
    return run


def load_for_eval(model: str):
    from ..config.model import ModelConfig
    from ..models.load import load_model

    return load_model(ModelConfig(path=str(model)))


def _run_evaluate(recipe: dict, folder: Path) -> dict:
    from ..config.pipeline import EvaluateStageConfig
    from ..stages.evaluate import evaluate_model

    cfg: EvaluateStageConfig = load_recipe(EvaluateStageConfig, data=recipe)
    loaded = load_for_eval(cfg.model)
    sets = {}
    for name, path in cfg.sets().items():
        res = evaluate_model(
            cfg.model,
            [path],
            text_field=cfg.text_field,
            split_docs=cfg.split_docs,
            block_size=cfg.block_size,
            batch_size=cfg.batch_size,
            max_tokens=cfg.max_tokens,
            packing=cfg.packing,
            loaded=loaded,
        )
        sets[name] = next(iter(res["sets"].values()))
        log(f"  {name}: perplexity {sets[name]['perplexity']:.2f}")
    metrics = {"stage": "evaluate", "model": cfg.model, "sets": sets}
    if is_main_process():
        write_json(folder / METRICS_FILE, metrics)
    return metrics


# Looked up at call time, so tests (and embedders) can wrap a stage.
STAGE_RUNNERS: dict[str, Callable[[dict, Path], dict]] = {
    **{kind: _recipe_stage(kind) for kind in STAGES},
    "evaluate": _run_evaluate,  # the pipeline's own: held-out perplexity of a model, no recipe stage of its own
}


def _has_checkpoint(folder: Path) -> bool:
    from ..train.loop import latest_checkpoint

    try:
        return latest_checkpoint(folder) is not None
    except Exception:  # noqa: BLE001 - an unreadable checkpoint folder means: start over
        return False


def _interrupted(inst: StageInstance) -> str | None:
    """How to pick up a folder an earlier run left without DONE: None (fresh), "checkpoint" or "restart"."""
    folder = inst.folder
    if not (folder.exists() and any(p.name != cache.STAGE_FILE for p in folder.iterdir())):
        return None
    return "checkpoint" if inst.kind != "evaluate" and _has_checkpoint(folder) else "restart"


def clear_for_restart(folder: Path) -> None:
    """Empty an interrupted stage's folder for a fresh start, but for its stage file and its packed
    blocks: their file names key their content, so the new start reads them instead of packing again."""
    for p in folder.iterdir():
        if p.name not in (cache.STAGE_FILE, BLOCKS_DIR):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def execute_stage(inst: StageInstance, keep_checkpoints: bool = False) -> dict:
    """Run one stage instance into its folder (resuming an interrupted one); returns DONE's content.

    Every process calls this; the main process inspects and prepares the folder, the others wait
    for it and then run the stage with the same recipe. Once DONE is written, the stage's training
    checkpoints are deleted unless ``keep_checkpoints``: a finished stage is reused, or trained again
    from the start (plan.reusable), never resumed, and in full training each checkpoint holds Adam's two moments besides the
    weights (about three times the model)."""
    folder = inst.folder
    recipe = json.loads(json.dumps(inst.recipe))
    main = is_main_process()
    parent_run = cache.read_done(inst.parent.folder).get("run_id") if inst.parent else None
    resumed = broadcast(_interrupted(inst) if main else None)
    if resumed == "checkpoint":
        recipe["train"]["resume"] = True
        log(f"{inst.id}: interrupted earlier; resuming from its last checkpoint")
    elif resumed == "restart":
        log(f"{inst.id}: interrupted earlier without a checkpoint; starting it over")
    if main:
        if resumed == "restart":
            clear_for_restart(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cache.write_stage_file(folder, inst.key, inst.hash, parent_run=parent_run)
    barrier()
    if inst.kind != "evaluate" and resumed != "checkpoint":
        recipe["train"]["overwrite"] = True  # the folder holds only lmadapt_stage.json
    t0 = time.time()
    from ..runtime.run_folder import release_folder

    try:
        with PeakMemory() as mem:
            STAGE_RUNNERS[inst.kind](recipe, folder)
    finally:
        release_folder(folder)  # the stage took its folder's lock (runtime/run_folder.py)
    info = {
        "hash": inst.hash,
        "kind": inst.kind,
        "name": inst.name,
        "wall_seconds": round(time.time() - t0, 2),
        "resumed": resumed,
        **mem.result(),
        # which training of the parent this one started from (plan.reusable), and which code ran it
        "run_id": cache.new_run_id(),
        "code": cache.code_fingerprint(),
        "parent_run": parent_run,
    }
    gc.collect()
    from ..data.token_cache import folder_bytes
    from ..train.loop import CHECKPOINT_DIR  # here, not at the top: `lmadapt --help` needs no torch

    checkpoints = folder / CHECKPOINT_DIR
    if not keep_checkpoints and checkpoints.is_dir():
        info["checkpoints_deleted_mb"] = round(folder_bytes(checkpoints) / 2**20, 1)
    if main:
        cache.mark_done(folder, info)
        if "checkpoints_deleted_mb" in info:  # after DONE: a crash in between leaves them, not a gap
            shutil.rmtree(checkpoints, ignore_errors=True)
    barrier()
    return info
