"""`lmadapt run PIPELINE.yaml`: arms x seeds of stages, a shared stage cache, evidence, a report.

    cfg = load_pipeline("pipeline.yaml", ["seeds=[0,1]"])
    summary = run_pipeline(cfg)          # -> output_dir/{stages/, results.jsonl, run_state.json, report.*}

Every stage instance (kind, resolved recipe, parent, input files) has one folder
``output_dir/stages/<kind>-<name>-<hash12>`` (see cache.py). Arms that share a prefix share its
folders, so the base model is trained once; a folder with ``DONE`` is reused, a folder without it
is an interrupted stage and is resumed (from its last checkpoint, else started over). ``--rerun
NAME`` trains the named stages again, and every stage after them; so does a stage whose parent was
trained again since (plan.reusable): their old folders are removed first. After each
stage: LM evidence (held-out perplexity of every pretrained model), task metrics, wall time,
tokens/s and peak memory go to ``results.jsonl``, one row per (arm, seed, stage). plan.py builds
the chains of stage instances (and decides what is reused), execute.py runs one stage into its
folder, evidence.py scores models and caches the baselines, rows.py makes the rows, walk.py walks the plan;
this module takes the lock, decides what is cached or out of date, and is the CLI.

Under ``torchrun`` / ``accelerate launch`` every process runs this same loop: the stages and the
perplexity evidence need all of them. The main process alone takes the lock, decides what is
cached or interrupted (and tells the others, see runtime/dist.py), and writes everything outside
the stage folders' model files: DONE markers, run_state.json, results.jsonl, the baseline and the
report. ``output_dir`` must be on a file system every process sees, as checkpoint resume needs.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..config.base import ConfigError, to_dict
from ..config.pipeline import PipelineConfig, load_pipeline
from ..runtime.folders import refuse_foreign_folder
from ..runtime.dist import barrier, broadcast, is_main_process, world_size
from ..runtime.run_folder import FolderLock
from ..runtime.outputs import atomic_write_text
from . import cache
from .compare import PIPELINE_FILE, RESULTS_FILE, STATE_FILE
from .evidence import lm_evidence
from .execute import STAGE_RUNNERS, execute_stage, log
from .plan import ArmRun, StageInstance, plan, reusable, stage_names, unique_instances, unplanned_folders
from .walk import RunState, Walk

# A folder holding one of these is a run folder (the demo trains its tokenizer there before the run).
RUN_MARKERS = (
    PIPELINE_FILE,
    STATE_FILE,
    RESULTS_FILE,
    "stages",
    ".lmadapt_run.lock",
    "tokenizer/lmadapt_demo_tokenizer.json",
)


# --- the run -------------------------------------------------------------------------------------

# The lock moved down to runtime/run_folder.py: standalone stages take the same one.
RunLock = FolderLock


def run_pipeline(
    cfg: PipelineConfig,
    *,
    pipeline_file: str | None = None,
    report: bool = True,
    jobs: int = 1,
    rerun: list[str] | tuple[str, ...] = (),
) -> dict:
    """Run (or reuse) every stage of every arm and seed; write results.jsonl, run_state.json, report.

    ``jobs`` > 1 runs independent stages at once, each in a process of its own (see jobs.py).
    ``rerun`` names stages (or "all") to train again, with every stage that follows them."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    if jobs > 1 and world_size() > 1:
        raise ConfigError(
            "--jobs: runs stages in processes of its own, one device each; under torchrun / "
            "accelerate launch every process already runs each stage, so leave --jobs at 1"
        )
    out = Path(cfg.output_dir).resolve()
    with contextlib.ExitStack() as stack:
        # Only the main process holds the lock; the others follow it, or its refusal.
        error = None
        if is_main_process():
            try:
                # report.md, results.jsonl, ... go into output_dir: never over a folder that is not a run's
                refuse_foreign_folder(out, RUN_MARKERS, "output_dir", "an `lmadapt run` folder")
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(RunLock(out))
            except ConfigError as exc:
                error = str(exc)
        error = broadcast(error)
        if error:
            raise ConfigError(error)
        return _run_locked(cfg, out, pipeline_file=pipeline_file, report=report, jobs=jobs, rerun=rerun)


def rerun_names(runs: list[ArmRun], rerun) -> set[str]:
    """``--rerun`` values (names, comma lists, "all") as a set of stage names of this pipeline."""
    names = {n.strip() for value in rerun for n in str(value).split(",") if n.strip()}
    known = stage_names(runs)
    if "all" in names:
        return set(known)
    unknown = sorted(names - set(known))
    if unknown:
        raise ConfigError(
            f"--rerun: no stage named {unknown[0]!r} in this pipeline; its stages: {', '.join(known)} (or 'all')"
        )
    return names


def other_code_note(instances: list[StageInstance], reused: set[str], word: str = "reused") -> str | None:
    """How many reused stages a different lmadapt source computed, or None (DONE files from before
    the fingerprint have none and are not counted)."""
    now = cache.code_fingerprint()
    changed = [i.id for i in instances if i.id in reused and cache.read_done(i.folder).get("code") not in (None, now)]
    if not changed:
        return None
    return (
        f"{len(changed)} {word} stage(s) were computed by other lmadapt code than this ({now}), e.g. "
        f"{changed[0]}; `--rerun NAME` trains a stage and the ones after it again"
    )


def unplanned_note(out: Path, instances: list[StageInstance], show: int = 20) -> str | None:
    """The stage folders this plan does not use, with their sizes (a model each: they add up)."""
    from ..data.token_cache import folder_bytes, human_bytes

    folders = unplanned_folders(out, instances)
    if not folders:
        return None
    sizes = [folder_bytes(f) for f in folders]
    lines = [
        f"{len(folders)} stage folder(s) under {folders[0].parent} are not in this plan "
        f"({human_bytes(sum(sizes))}), from earlier versions of it or from another pipeline writing "
        "here; they stay until you delete them:"
    ]
    lines += [f"  {f.name}  {human_bytes(n)}" for f, n in list(zip(folders, sizes))[:show]]
    if len(folders) > show:
        lines.append(f"  ... and {len(folders) - show} more")
    return "\n".join(lines)


def _prepare(cfg: PipelineConfig, out: Path, rerun) -> tuple[list[ArmRun], list[StageInstance], set[str]]:
    """Write pipeline.yaml, plan the run, and decide what is cached (removing the folders of stages
    out of date); returns the arm runs, the distinct stage instances and the ids of those cached."""
    import yaml

    main = is_main_process()
    if main:
        atomic_write_text(out / PIPELINE_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    runs = plan(cfg)
    instances = unique_instances(runs)
    names = rerun_names(runs, rerun)
    if cfg.evaluation.harness.enabled:
        from ..train.harness import check_tasks

        check_tasks(cfg.evaluation.harness)  # a misspelt task fails now, not after the first stage trains
    # What is cached is read once, by the main process, and told to the others (see walk.Walk).
    decided = broadcast(reusable(instances, names) if main else None)
    cached, stale = set(decided[0]), decided[1]
    if main:
        for inst in instances:
            if inst.id in stale:
                log(f"{inst.id}: out of date, {stale[inst.id]}: removing its folder to train it from the start")
                cache.discard(inst.folder)
        note = unplanned_note(out, instances)
        if note:
            log(note)
        code_note = other_code_note(instances, cached)
        if code_note:
            log(f"note: {code_note}")
    barrier()
    return runs, instances, cached


def _run_locked(
    cfg: PipelineConfig, out: Path, *, pipeline_file: str | None, report: bool, jobs: int = 1, rerun=()
) -> dict:
    runs, instances, cached = _prepare(cfg, out, rerun)
    todo = [i for i in instances if i.id not in cached]
    total = len(instances)
    log(
        f"{len(runs)} arm runs ({len(cfg.arms)} arms x {len(cfg.seeds)} seeds), {total} distinct stages: "
        f"{total - len(todo)} cached, {len(todo)} to run -> {out}"
    )
    walk = Walk(cfg, out, runs, todo, cached, RunState(out, runs, pipeline_file, cached))
    walk.run(jobs)
    state = walk.state
    summary = {
        "output_dir": str(out),
        "executed": list(state.data["executed"]),
        "reused": list(state.data["reused"]),
        "rows": walk.rows,
        "wall_seconds": state.data["wall_seconds"],
    }
    if report and is_main_process():
        from .report import write_report

        summary["report"] = write_report(out)
    barrier()
    return summary


# --- CLI -----------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("pipeline", help="pipeline YAML (arms of stages; see lmadapt/config/pipeline.py)")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1,2] output_dir=runs/x vars.corpus=data/"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan (cached / to run) and exit")
    parser.add_argument("--no-report", action="store_true", help="skip report.md / report.html")
    parser.add_argument(
        "--rerun",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="train these stages again (names from the pipeline's stages, or 'all'), and every "
        "stage that starts from them; their old folders are removed",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run up to N independent stages at once, each in a process of its own (one GPU "
        "each, round robin over the visible GPUs; on CPU the cores are shared out); "
        "logs in OUTPUT_DIR/logs/",
    )
    return parser


def describe_plan(cfg: PipelineConfig, rerun=()) -> str:
    """The dry run's answer: per arm and seed, which stages are reused, run, or run again."""
    runs = plan(cfg)
    insts = unique_instances(runs)
    reused, stale = reusable(insts, rerun_names(runs, rerun))

    def status(inst: StageInstance) -> str:
        return "cached" if inst.id in reused else "rerun" if inst.id in stale else "run"

    lines = [
        f"{run.arm:<16} seed {run.seed:<4} " + " -> ".join(f"{i.name}[{status(i)}]" for i in run.stages) for run in runs
    ]
    lines.append(f"{len(insts)} distinct stages ({len(reused)} cached, {len(stale)} to run again):")
    lines.extend(f"  {i.id}" + (f"  (run again: {stale[i.id]})" if i.id in stale else "") for i in insts)
    note = unplanned_note(Path(cfg.output_dir).resolve(), insts)
    if note:
        lines.append(note)
    code_note = other_code_note(insts, reused, word="cached")
    if code_note:
        lines.append(code_note)
    return "\n".join(lines)


def main_run(args: argparse.Namespace) -> int:
    cfg = load_pipeline(args.pipeline, list(args.overrides or []))
    if args.dry_run:
        if is_main_process():
            print(describe_plan(cfg, args.rerun))
        return 0
    summary = run_pipeline(
        cfg, pipeline_file=str(args.pipeline), report=not args.no_report, jobs=args.jobs, rerun=args.rerun
    )
    if not is_main_process():
        return 0
    from .report import summary_table

    print()
    print(summary_table(Path(cfg.output_dir)))
    if summary.get("report"):
        print(f"\nreport: {summary['report']['html']}  (and report.md)")
    log(
        f"done in {summary['wall_seconds']:.0f}s: {len(summary['executed'])} stage(s) run, "
        f"{len(summary['reused'])} reused from the cache"
    )
    return 0


# Re-exported for the tests and callers that know them from here.
__all__ = [
    "plan",
    "run_pipeline",
    "execute_stage",
    "add_run_arguments",
    "main_run",
    "STAGE_RUNNERS",
    "ConfigError",
    "lm_evidence",
    "RESULTS_FILE",
    "STATE_FILE",
    "PIPELINE_FILE",
]
