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
folder, evidence.py scores models and caches the baselines, rows.py makes the rows; this module walks the plan.

Under ``torchrun`` / ``accelerate launch`` every process runs this same loop: the stages and the
perplexity evidence need all of them. The main process alone takes the lock, decides what is
cached or interrupted (and tells the others, see runtime/dist.py), and writes everything outside
the stage folders' model files: DONE markers, run_state.json, results.jsonl, the baseline and the
report. ``output_dir`` must be on a file system every process sees, as checkpoint resume needs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import traceback
from pathlib import Path

from ..config.base import ConfigError, to_dict
from ..config.pipeline import LM_KINDS, PipelineConfig, load_pipeline
from ..runtime.folders import refuse_foreign_folder
from ..runtime.dist import barrier, broadcast, is_main_process, world_size
from ..runtime.run_folder import FolderLock
from ..runtime.outputs import atomic_write_text, read_json, write_json
from . import cache
from .evidence import baseline_for, baselines_ahead, input_evidence_path, lm_evidence
from .execute import STAGE_RUNNERS, execute_stage, log
from .plan import ArmRun, StageInstance, plan, reusable, stage_names, unique_instances, unplanned_folders
from .rows import EVIDENCE_FILE, baseline_row, input_row, stage_row

RESULTS_FILE = "results.jsonl"
STATE_FILE = "run_state.json"
PIPELINE_FILE = "pipeline.yaml"
# A folder holding one of these is a run folder (the demo trains its tokenizer there before the run).
RUN_MARKERS = (PIPELINE_FILE, STATE_FILE, RESULTS_FILE, "stages", ".lmadapt_run.lock",
               "tokenizer/lmadapt_demo_tokenizer.json")


# --- the run -------------------------------------------------------------------------------------

def finished_rows(runs: list[ArmRun], out: Path, done: set[str], executed: set[str]) -> list[dict]:
    """The rows a stopped run can give without more work: each arm's finished stages, in order, and
    its input model's LM evidence where it was already scored."""
    rows: list[dict] = []
    for run in runs:
        evidence = read_json(input_evidence_path(out, run), default=None) if run.input_model else None
        if evidence:
            rows.append(input_row(run, out, evidence))
        for index, inst in enumerate(run.stages):
            if inst.id not in done:
                break
            rows.append(stage_row(run, index, inst, out, executed=inst.id in executed))
    return rows


class RunState:
    """run_state.json: what this run did so far (rewritten atomically after every step)."""

    def __init__(self, out: Path, runs: list[ArmRun], pipeline_file: str | None, cached: set[str]):
        self.path = out / STATE_FILE
        self.data = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "pipeline_file": pipeline_file, "arms": sorted({r.arm for r in runs}, key=[r.arm for r in runs].index),
                     "seeds": sorted({r.seed for r in runs}), "executed": [], "reused": [], "current": None,
                     "stages": {i.id: {"kind": i.kind, "name": i.name, "status": "done" if i.id in cached else "pending"}
                                for i in unique_instances(runs)}}
        self.save()

    def stage(self, inst: StageInstance, status: str, **extra) -> None:
        self.data["stages"][inst.id].update(status=status, **extra)
        self.data["current"] = inst.id if status == "running" else None
        self.save()

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if is_main_process():
            write_json(self.path, self.data)


def write_results(out: Path, rows: list[dict]) -> None:
    if is_main_process():
        atomic_write_text(out / RESULTS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows))


# The lock moved down to runtime/run_folder.py: standalone stages take the same one.
RunLock = FolderLock


def run_pipeline(cfg: PipelineConfig, *, pipeline_file: str | None = None, report: bool = True, jobs: int = 1,
                 rerun: list[str] | tuple[str, ...] = ()) -> dict:
    """Run (or reuse) every stage of every arm and seed; write results.jsonl, run_state.json, report.

    ``jobs`` > 1 runs independent stages at once, each in a process of its own (see jobs.py).
    ``rerun`` names stages (or "all") to train again, with every stage that follows them."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    if jobs > 1 and world_size() > 1:
        raise ConfigError("--jobs: runs stages in processes of its own, one device each; under torchrun / "
                          "accelerate launch every process already runs each stage, so leave --jobs at 1")
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
        raise ConfigError(f"--rerun: no stage named {unknown[0]!r} in this pipeline; its stages: "
                          f"{', '.join(known)} (or 'all')")
    return names


def other_code_note(instances: list[StageInstance], reused: set[str], word: str = "reused") -> str | None:
    """How many reused stages a different lmadapt source computed, or None (DONE files from before
    the fingerprint have none and are not counted)."""
    now = cache.code_fingerprint()
    changed = [i.id for i in instances if i.id in reused and cache.read_done(i.folder).get("code") not in (None, now)]
    if not changed:
        return None
    return (f"{len(changed)} {word} stage(s) were computed by other lmadapt code than this ({now}), e.g. "
            f"{changed[0]}; `--rerun NAME` trains a stage and the ones after it again")


def unplanned_note(out: Path, instances: list[StageInstance], show: int = 20) -> str | None:
    """The stage folders this plan does not use, with their sizes (a model each: they add up)."""
    from ..data.token_cache import folder_bytes, human_bytes
    folders = unplanned_folders(out, instances)
    if not folders:
        return None
    sizes = [folder_bytes(f) for f in folders]
    lines = [f"{len(folders)} stage folder(s) under {folders[0].parent} are not in this plan "
             f"({human_bytes(sum(sizes))}), from earlier versions of it or from another pipeline writing "
             "here; they stay until you delete them:"]
    lines += [f"  {f.name}  {human_bytes(n)}" for f, n in list(zip(folders, sizes))[:show]]
    if len(folders) > show:
        lines.append(f"  ... and {len(folders) - show} more")
    return "\n".join(lines)


def _run_locked(cfg: PipelineConfig, out: Path, *, pipeline_file: str | None, report: bool, jobs: int = 1,
                rerun=()) -> dict:
    import yaml
    main = is_main_process()
    if main:
        atomic_write_text(out / PIPELINE_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    runs = plan(cfg)
    instances = unique_instances(runs)
    names = rerun_names(runs, rerun)
    if cfg.evaluation.harness.enabled:
        from ..train.harness import check_tasks
        check_tasks(cfg.evaluation.harness)     # a misspelt task fails now, not after the first stage trains
    # What is cached is read once, by the main process: from here on a stage counts as done when
    # it was done at the start or this run executed it, which every process knows alike.
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
    todo = [i for i in instances if i.id not in cached]
    total = len(instances)
    log(f"{len(runs)} arm runs ({len(cfg.arms)} arms x {len(cfg.seeds)} seeds), {total} distinct stages: "
        f"{total - len(todo)} cached, {len(todo)} to run -> {out}")
    state = RunState(out, runs, pipeline_file, cached)
    rows: list[dict] = []
    executed: set[str] = set()
    evidence_done: set[str] = set()
    t_run = time.time()
    n_run = 0
    try:
        if jobs > 1 and todo:
            from .jobs import run_jobs

            def on_change(inst: StageInstance, status: str, extra: dict) -> None:
                if status == "running":
                    extra = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
                state.stage(inst, status, **extra)

            log(f"{len(todo)} stage(s) to run in up to {jobs} jobs at once")
            # The baselines need only the data: compute them while the workers train, in this
            # otherwise idle process, instead of after the last stage (30 s for FOLDOC on the H100 host).
            ahead = threading.Thread(target=baselines_ahead, args=(instances, cfg, out), daemon=True)
            ahead.start()
            try:
                for inst_id in run_jobs(out, todo, cached, jobs, on_change, log):
                    executed.add(inst_id)
                    state.data["executed"].append(inst_id)
            except BaseException:
                # A sequential run has written the rows of every stage it finished by now; do the same,
                # so results.jsonl and `lmadapt report` show what finished before the failure.
                finished = [i.id for i in todo if cache.is_done(i.folder)]
                executed.update(finished)
                state.data["executed"].extend(finished)
                rows.extend(finished_rows(runs, out, cached | executed, executed))
                raise
            ahead.join()
            state.save()
        for run in runs:
            log(f"== arm {run.arm}, seed {run.seed}: " + " -> ".join(i.name for i in run.stages))
            if run.input_model and cfg.evaluation.enabled:
                rows.append(input_row(run, out, lm_evidence(run.input_model, cfg, input_evidence_path(out, run))))
            for index, inst in enumerate(run.stages):
                if inst.id in executed or inst.id in cached:
                    if inst.id not in executed and inst.id not in state.data["reused"]:
                        state.data["reused"].append(inst.id)
                        log(f"[{index + 1}/{len(run.stages)}] {inst.name} ({inst.kind}): cached -> {inst.id}")
                else:
                    n_run += 1
                    log(f"[{index + 1}/{len(run.stages)}] {inst.name} ({inst.kind}): running "
                        f"({n_run}/{len(todo)} to run, {time.time() - t_run:.0f}s elapsed) -> {inst.id}")
                    state.stage(inst, "running")
                    try:
                        info = execute_stage(inst, keep_checkpoints=cfg.keep_checkpoints)
                    except BaseException as exc:
                        state.stage(inst, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                                    error=f"{type(exc).__name__}: {exc}")
                        raise
                    executed.add(inst.id)
                    state.data["executed"].append(inst.id)
                    state.stage(inst, "done", wall_seconds=info["wall_seconds"])
                    log(f"{inst.name} done in {info['wall_seconds']:.1f}s (peak RSS {info.get('peak_rss_mb')} MB)")
                if inst.kind in LM_KINDS and cfg.evaluation.enabled and inst.id not in evidence_done:
                    lm_evidence(inst.model_out, cfg, inst.folder / EVIDENCE_FILE)
                    evidence_done.add(inst.id)
                if not main:
                    continue
                rows.append(stage_row(run, index, inst, out, executed=inst.id in executed))
                if inst.kind == "finetune":
                    res = baseline_for(inst, cfg, out)
                    if res is not None and not any(r["kind"] == "baseline" and r["seed"] == run.seed
                                                   and r["id"] == res.get("id") for r in rows):
                        rows.append(baseline_row(run.seed, res))
                write_results(out, rows)
    except KeyboardInterrupt:
        state.data["status"] = "interrupted"
        state.save()
        write_results(out, rows)
        raise
    except BaseException as exc:
        state.data.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8))
        state.save()
        write_results(out, rows)
        raise
    state.data.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      wall_seconds=round(time.time() - t_run, 1))
    state.save()
    summary = {"output_dir": str(out), "executed": list(state.data["executed"]), "reused": list(state.data["reused"]),
               "rows": rows, "wall_seconds": state.data["wall_seconds"]}
    if report and main:
        from .report import write_report
        summary["report"] = write_report(out)
    barrier()
    return summary


# --- CLI -----------------------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("pipeline", help="pipeline YAML (arms of stages; see lmadapt/config/pipeline.py)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. seeds=[0,1,2] output_dir=runs/x vars.corpus=data/")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan (cached / to run) and exit")
    parser.add_argument("--no-report", action="store_true", help="skip report.md / report.html")
    parser.add_argument("--rerun", action="append", default=[], metavar="NAME[,NAME]",
                        help="train these stages again (names from the pipeline's stages, or 'all'), and every "
                             "stage that starts from them; their old folders are removed")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N independent stages at once, each in a process of its own (one GPU "
                             "each, round robin over the visible GPUs; on CPU the cores are shared out); "
                             "logs in OUTPUT_DIR/logs/")
    return parser


def describe_plan(cfg: PipelineConfig, rerun=()) -> str:
    """The dry run's answer: per arm and seed, which stages are reused, run, or run again."""
    runs = plan(cfg)
    insts = unique_instances(runs)
    reused, stale = reusable(insts, rerun_names(runs, rerun))

    def status(inst: StageInstance) -> str:
        return "cached" if inst.id in reused else "rerun" if inst.id in stale else "run"

    lines = [f"{run.arm:<16} seed {run.seed:<4} " + " -> ".join(f"{i.name}[{status(i)}]" for i in run.stages)
             for run in runs]
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
    summary = run_pipeline(cfg, pipeline_file=str(args.pipeline), report=not args.no_report, jobs=args.jobs,
                           rerun=args.rerun)
    if not is_main_process():
        return 0
    from .report import summary_table
    print()
    print(summary_table(Path(cfg.output_dir)))
    if summary.get("report"):
        print(f"\nreport: {summary['report']['html']}  (and report.md)")
    log(f"done in {summary['wall_seconds']:.0f}s: {len(summary['executed'])} stage(s) run, "
        f"{len(summary['reused'])} reused from the cache")
    return 0


__all__ = ["plan", "run_pipeline", "execute_stage", "add_run_arguments", "main_run", "STAGE_RUNNERS", "ConfigError"]
