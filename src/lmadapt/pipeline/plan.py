"""The plan of a pipeline run: every (arm, seed) as a chain of stage instances.

Each instance's folder is named by the hash of its kind, resolved recipe, parent and input files
(cache.py), so identical prefixes of different arms are one object, one folder, run once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.pipeline import PipelineConfig, StageSpec
from . import cache

STAGES_DIR = "stages"


@dataclass
class StageInstance:
    kind: str
    name: str
    recipe: dict  # fully resolved, train.output_dir = folder
    hash: str
    key: dict  # what went into the hash
    folder: Path
    model_out: str  # model folder the next stage starts from
    parent: "StageInstance | None"  # the stage whose output this one starts from
    input_model: str | None  # an arm's starting model (not produced by a stage), if any
    seeded: bool

    @property
    def id(self) -> str:
        return self.folder.name


@dataclass
class ArmRun:
    arm: str
    seed: int
    stages: list[StageInstance]
    input_model: str | None = None  # the model the arm starts from, when it is not trained from scratch


def _starting_model(spec: StageSpec, recipe: dict) -> str | None:
    if spec.kind == "evaluate":
        return recipe.get("model")
    model = recipe.get("model") or {}
    return model.get("path") if model.get("init", "pretrained") == "pretrained" else None


def plan(cfg: PipelineConfig) -> list[ArmRun]:
    """Every (arm, seed) as a chain of stage instances; identical instances are one object."""
    out = Path(cfg.output_dir).resolve()
    instances: dict[str, StageInstance] = {}
    runs = []
    for seed in cfg.seeds:
        for arm in cfg.arms:
            chain: list[StageInstance] = []
            parent: StageInstance | None = None
            model: str | None = None  # what the next stage starts from
            arm_input: str | None = None
            for i in range(len(cfg.arms[arm])):
                name, spec = cfg.stage_of(arm, i)
                seeded = spec.kind in cfg.seeded_kinds and spec.kind != "evaluate"
                recipe = cfg.stage_recipe(spec, parent_model=model, seed=seed if seeded else None, output_dir="")
                if i == 0:
                    arm_input = _starting_model(spec, recipe)
                key = cache.stage_key(
                    spec.kind,
                    recipe,
                    parent_hash=parent.hash if parent else None,
                    parent_model=model if parent else None,
                )
                digest = cache.digest(key)
                inst = instances.get(digest)
                if inst is None:
                    folder = out / STAGES_DIR / cache.stage_folder_name(spec.kind, name, digest)
                    recipe = cfg.stage_recipe(
                        spec, parent_model=model, seed=seed if seeded else None, output_dir=str(folder)
                    )
                    if spec.kind == "evaluate":
                        model_out = recipe.get("model")
                    else:
                        model_out = str(folder)
                    inst = StageInstance(
                        kind=spec.kind,
                        name=name,
                        recipe=recipe,
                        hash=digest,
                        key=key,
                        folder=folder,
                        model_out=model_out,
                        parent=parent,
                        input_model=arm_input if parent is None else None,
                        seeded=seeded,
                    )
                    instances[digest] = inst
                chain.append(inst)
                if spec.kind != "evaluate":
                    parent, model = inst, inst.model_out
                elif parent is None:
                    model = inst.model_out  # an arm that starts by scoring its input model
            runs.append(ArmRun(arm=arm, seed=seed, stages=chain, input_model=arm_input))
    return runs


def unique_instances(runs: list[ArmRun]) -> list[StageInstance]:
    seen, out = set(), []
    for run in runs:
        for inst in run.stages:
            if inst.hash not in seen:
                seen.add(inst.hash)
                out.append(inst)
    return out


def unplanned_folders(out: Path, instances: list[StageInstance]) -> list[Path]:
    """Stage folders under ``out/stages`` that this plan does not use: left by an earlier version of
    the pipeline (another recipe, seed or input), or by another pipeline writing to the same folder.
    Nothing removes them by itself; the dry run and the run's first lines list them with their size."""
    planned = {inst.folder.name for inst in instances}
    root = Path(out) / STAGES_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in planned)


def stage_names(runs: list[ArmRun]) -> list[str]:
    return sorted({inst.name for run in runs for inst in run.stages})


def reusable(instances: list[StageInstance], rerun: set[str] = frozenset()) -> tuple[set[str], dict[str, str]]:
    """Which finished stages this run reuses, and which folders (finished or interrupted) are out
    of date, with why.

    A stage's folder is out of date when it is named in ``rerun``, or it starts from a stage that
    runs again (not reused itself), or from another training of its parent than the one it
    recorded (``parent_run``; see cache.py): resuming it would continue from the old parent. Other
    finished stages are reused; other interrupted ones resume. ``instances`` lists parents before
    their children, as unique_instances does. Returns (reused ids, {out-of-date id: reason})."""
    reused: set[str] = set()
    stale: dict[str, str] = {}
    for inst in instances:
        if not inst.folder.is_dir():
            continue
        parent = inst.parent
        if inst.name in rerun:
            stale[inst.id] = "it is named in --rerun"
        elif parent is not None and parent.id not in reused:
            stale[inst.id] = f"it starts from {parent.name}, which runs again"
        elif parent is not None and not _same_parent_run(inst, parent):
            stale[inst.id] = f"{parent.name} was trained again after it started"
        elif cache.is_done(inst.folder):
            reused.add(inst.id)
    return reused, stale


def _same_parent_run(inst: StageInstance, parent: StageInstance) -> bool:
    current = cache.read_done(parent.folder).get("run_id")
    # A parent finished before run ids existed has none: trust its child. A child with none whose
    # parent has one started before the parent's latest training, so it is out of date.
    return current is None or cache.recorded_parent_run(inst.folder) == current
