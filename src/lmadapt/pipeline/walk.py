"""The walk of one locked run (run.py takes the lock and decides what is cached): every arm's stages
in order, each reused or run, its LM evidence scored, its rows written to results.jsonl as they come,
run_state.json rewritten after every step.

With ``--jobs N`` the stages to run are first run by jobs.py, in processes of their own; the walk
then finds them all done and only gathers the rows. Every process of a ``torchrun`` launch walks
alike (the stages and the perplexity evidence need all of them); only the main process writes.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

from ..config.pipeline import LM_KINDS, PipelineConfig
from ..runtime.dist import is_main_process
from ..runtime.outputs import atomic_write_text, read_json, write_json
from . import cache
from .compare import RESULTS_FILE, STATE_FILE
from .evidence import baseline_for, baselines_ahead, input_evidence_path, lm_evidence
from .execute import execute_stage, log
from .plan import ArmRun, StageInstance, unique_instances
from .rows import EVIDENCE_FILE, baseline_row, input_row, stage_row


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
        self.data = {
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pipeline_file": pipeline_file,
            "arms": sorted({r.arm for r in runs}, key=[r.arm for r in runs].index),
            "seeds": sorted({r.seed for r in runs}),
            "executed": [],
            "reused": [],
            "current": None,
            "stages": {
                i.id: {"kind": i.kind, "name": i.name, "status": "done" if i.id in cached else "pending"}
                for i in unique_instances(runs)
            },
        }
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


class Walk:
    """One run's progress: the rows so far and the stages this run executed. From here on a stage
    counts as done when it was cached at the start or this run executed it, which every process
    knows alike."""

    def __init__(
        self,
        cfg: PipelineConfig,
        out: Path,
        runs: list[ArmRun],
        todo: list[StageInstance],
        cached: set[str],
        state: RunState,
    ):
        self.cfg, self.out, self.runs, self.todo, self.cached, self.state = cfg, out, runs, todo, cached, state
        self.main = is_main_process()
        self.rows: list[dict] = []
        self.executed: set[str] = set()
        self.evidence_done: set[str] = set()
        self.t_run = time.time()
        self.n_run = 0

    def run(self, jobs: int) -> None:
        """Every arm's stages (the ones to run in ``jobs`` processes first, when jobs > 1); a stop
        leaves run_state.json saying how, and results.jsonl with the rows gathered so far."""
        state = self.state
        try:
            if jobs > 1 and self.todo:
                self._in_jobs(jobs)
            for run in self.runs:
                self._arm(run)
        except KeyboardInterrupt:
            state.data["status"] = "interrupted"
            state.save()
            write_results(self.out, self.rows)
            raise
        except BaseException as exc:
            state.data.update(
                status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8)
            )
            state.save()
            write_results(self.out, self.rows)
            raise
        state.data.update(
            status="done",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wall_seconds=round(time.time() - self.t_run, 1),
        )
        state.save()

    def _on_job_change(self, inst: StageInstance, status: str, extra: dict) -> None:
        if status == "running":
            extra = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        self.state.stage(inst, status, **extra)

    def _in_jobs(self, jobs: int) -> None:
        from .jobs import run_jobs

        cfg, out, todo, state = self.cfg, self.out, self.todo, self.state
        log(f"{len(todo)} stage(s) to run in up to {jobs} jobs at once")
        # The baselines need only the data: compute them while the workers train, in this
        # otherwise idle process, instead of after the last stage (30 s for FOLDOC on the H100 host).
        ahead = threading.Thread(target=baselines_ahead, args=(unique_instances(self.runs), cfg, out), daemon=True)
        ahead.start()
        try:
            for inst_id in run_jobs(out, todo, self.cached, jobs, self._on_job_change, log):
                self.executed.add(inst_id)
                state.data["executed"].append(inst_id)
        except BaseException:
            # A sequential run has written the rows of every stage it finished by now; do the same,
            # so results.jsonl and `lmadapt report` show what finished before the failure.
            finished = [i.id for i in todo if cache.is_done(i.folder)]
            self.executed.update(finished)
            state.data["executed"].extend(finished)
            self.rows.extend(finished_rows(self.runs, out, self.cached | self.executed, self.executed))
            raise
        ahead.join()
        state.save()

    def _arm(self, run: ArmRun) -> None:
        cfg = self.cfg
        log(f"== arm {run.arm}, seed {run.seed}: " + " -> ".join(i.name for i in run.stages))
        if run.input_model and cfg.evaluation.enabled:
            self.rows.append(
                input_row(run, self.out, lm_evidence(run.input_model, cfg, input_evidence_path(self.out, run)))
            )
        for index, inst in enumerate(run.stages):
            if inst.id in self.executed or inst.id in self.cached:
                if inst.id not in self.executed and inst.id not in self.state.data["reused"]:
                    self.state.data["reused"].append(inst.id)
                    log(f"[{index + 1}/{len(run.stages)}] {inst.name} ({inst.kind}): cached -> {inst.id}")
            else:
                self._execute(run, index, inst)
            if inst.kind in LM_KINDS and cfg.evaluation.enabled and inst.id not in self.evidence_done:
                lm_evidence(inst.model_out, cfg, inst.folder / EVIDENCE_FILE)
                self.evidence_done.add(inst.id)
            if self.main:
                self._add_rows(run, index, inst)

    def _execute(self, run: ArmRun, index: int, inst: StageInstance) -> None:
        state = self.state
        self.n_run += 1
        log(
            f"[{index + 1}/{len(run.stages)}] {inst.name} ({inst.kind}): running "
            f"({self.n_run}/{len(self.todo)} to run, {time.time() - self.t_run:.0f}s elapsed) -> {inst.id}"
        )
        state.stage(inst, "running")
        try:
            info = execute_stage(inst, keep_checkpoints=self.cfg.keep_checkpoints)
        except BaseException as exc:
            state.stage(
                inst,
                "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                error=f"{type(exc).__name__}: {exc}",
            )
            raise
        self.executed.add(inst.id)
        state.data["executed"].append(inst.id)
        state.stage(inst, "done", wall_seconds=info["wall_seconds"])
        log(f"{inst.name} done in {info['wall_seconds']:.1f}s (peak RSS {info.get('peak_rss_mb')} MB)")

    def _add_rows(self, run: ArmRun, index: int, inst: StageInstance) -> None:
        """The stage's row (and, after a fine-tune, its seed's baseline row once); results.jsonl rewritten."""
        rows = self.rows
        rows.append(stage_row(run, index, inst, self.out, executed=inst.id in self.executed))
        if inst.kind == "finetune":
            res = baseline_for(inst, self.cfg, self.out)
            if res is not None and not any(
                r["kind"] == "baseline" and r["seed"] == run.seed and r["id"] == res.get("id") for r in rows
            ):
                rows.append(baseline_row(run.seed, res))
        write_results(self.out, rows)
