"""`lmadapt run --jobs N`: stage instances that do not depend on each other run at once.

Why: a small model leaves a big GPU mostly idle (a 135M model's kernels are too small to fill an
H100), and the seeds of an arm, or the fine-tune-only arm beside continued pretraining, do not wait
for each other. Run one after another they take the sum of their times; here, about the longest
chain's.

How: the parent process schedules; each stage runs in a worker process of its own,
``python -m lmadapt.pipeline.jobs OUT STAGE_ID``, which re-plans the run from ``OUT/pipeline.yaml``
(the resolved pipeline the run wrote) and runs that one stage through ``execute_stage``, so
resuming, ``DONE`` and the peak-memory figures are exactly those of a sequential run, then scores
its LM evidence. Its output goes to ``OUT/logs/STAGE_ID.log``. A stage starts once its parent is
done; of the ready ones, the one with the longest chain of stages still to run below it starts
first (the critical path: continued pretraining before fine-tunes that do not wait for it). When
every stage is done, the ordinary sequential walk finds them all finished and only gathers the
rows, the baseline and the report.

Devices: jobs go to the visible GPUs in turn, the least busy first (``CUDA_VISIBLE_DEVICES`` of
one GPU each; several jobs share a GPU when jobs > GPUs); on CPU each job gets an equal share of the
cores among the jobs that run with it (``OMP_NUM_THREADS``; all of them when it runs alone) unless
the caller set it. Sharing can run a GPU out of memory (continued
pretraining of a 135M model with a 49k vocabulary at 32 x 1,024 tokens peaks at 52 GB, and three
fine-tunes beside it took 10 GB each): a stage that runs out of memory beside other jobs runs once
more, alone. A failed stage lets the running ones finish (their folders are kept for the cache),
starts nothing that needs it, and then stops the run with the stage's log tail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from ..config.base import ConfigError
from . import cache
from .plan import StageInstance

LOGS_DIR = "logs"
PROGRESS_EVERY = 60.0  # seconds between "still running" lines


def log_path(out: Path, inst_id: str) -> Path:
    return out / LOGS_DIR / f"{inst_id}.log"


def _last_line(path: Path, n: int = 1) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").replace("\r", "\n").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def chain_lengths(todo: list[StageInstance]) -> dict[str, int]:
    """For each stage to run: the number of stages in the longest chain of to-run stages it starts."""
    children: dict[str, list[StageInstance]] = {}
    for inst in todo:
        if inst.parent is not None:
            children.setdefault(inst.parent.id, []).append(inst)
    memo: dict[str, int] = {}

    def length(inst: StageInstance) -> int:
        if inst.id not in memo:
            memo[inst.id] = 1 + max((length(c) for c in children.get(inst.id, [])), default=0)
        return memo[inst.id]

    return {inst.id: length(inst) for inst in todo}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] on a CPU machine)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU jobs
        return []


def device_env(device: str | None, sharing: int) -> dict[str, str]:
    """Environment for a job on ``device`` (a GPU id), or on CPU (None) with cores // ``sharing`` threads.

    On CPU, ``sharing`` is how many jobs will run together as this one starts (those running and
    those ready, at most --jobs). A job started alone gets every core; nothing can start beside it
    until a running job ends, and that is then this one, so the shares never add up to more cores."""
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    elif "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, sharing)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def worker_command(out: Path, inst_id: str) -> list[str]:
    """The worker process's command line (a module-level function so tests can stand in for it)."""
    return [sys.executable, "-m", "lmadapt.pipeline.jobs", str(out), inst_id]


# What a worker's log ends with when it ran out of memory: PyTorch's CUDA error, the CUDA runtime's
# own message, or a plain MemoryError on CPU. A job killed by signal 9 (the kernel's OOM killer) counts too.
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "CUDA error: out of memory", "MemoryError")


def out_of_memory(returncode: int, log_tail: str) -> bool:
    return returncode == -9 or any(m in log_tail for m in OOM_MARKERS)


class _Job:
    def __init__(self, inst: StageInstance, proc: subprocess.Popen, device: str | None, fh, exclusive: bool):
        self.inst, self.proc, self.device, self.fh, self.exclusive = inst, proc, device, fh, exclusive
        self.t0 = time.time()
        self.shared = False  # another job ran on its device at some point while it ran


def run_jobs(
    out: Path,
    todo: list[StageInstance],
    done: set[str],
    jobs: int,
    on_change: Callable[[StageInstance, str, dict], None],
    log: Callable[[str], None],
) -> list[str]:
    """Run ``todo`` in up to ``jobs`` worker processes; returns the ids run, in finishing order.

    ``done`` holds the ids already finished (cached). ``on_change(inst, status, extra)`` is told of
    every start ("running"), finish ("done") and failure ("failed"), for run_state.json.

    Jobs go to the visible GPUs in turn (several jobs share one GPU when jobs > GPUs). A stage that
    runs out of memory while sharing its device with other jobs is not a failure of the stage: it
    runs once more, alone on a device (nothing else starts there until it finishes). Out of memory
    when alone is a failure like any other."""
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    sched = _Scheduler(out, todo, done, jobs, on_change, log)
    try:
        while sched.pending or sched.running:
            sched.start_ready()
            if not sched.running:
                if sched.pending:  # nothing can start and nothing runs: a dependency was never planned
                    raise ConfigError(
                        "--jobs: stages wait for parents that are neither done nor planned: "
                        + ", ".join(i.id for i in sched.pending)
                    )
                break
            time.sleep(0.5)
            sched.reap()
            sched.report_progress()
    except BaseException:
        sched.stop_all()
        raise
    sched.raise_if_failed()
    return sched.finished


class _Scheduler:
    """run_jobs' state: what waits (longest chain first), what runs where, what finished or failed."""

    def __init__(
        self,
        out: Path,
        todo: list[StageInstance],
        done: set[str],
        jobs: int,
        on_change: Callable[[StageInstance, str, dict], None],
        log: Callable[[str], None],
    ):
        self.out, self.jobs, self.on_change, self.log = out, jobs, on_change, log
        self.done = set(done)
        gpus = visible_gpus()
        self.devices: list[str | None] = list(gpus) if gpus else [None]
        priority = chain_lengths(todo)
        self.pending = deque(sorted(todo, key=lambda i: -priority[i.id]))  # stable: plan order among equals
        self.exclusive: set[str] = set()  # stages to run alone (they ran out of memory beside others)
        self.running: list[_Job] = []
        self.finished: list[str] = []
        self.failed: dict[str, str] = {}
        self.last_progress = time.time()

    def on(self, device: str | None) -> list[_Job]:
        return [j for j in self.running if j.device == device]

    @staticmethod
    def where(device: str | None, env: dict | None = None) -> str:
        if device is not None:
            return f"GPU {device}"
        return f"{env.get('OMP_NUM_THREADS', '?')} thread(s)" if env else "the CPU"

    def start_ready(self) -> None:
        """Start what is ready, longest chain first, while there is room."""
        ready = sum(1 for i in self.pending if i.parent is None or i.parent.id in self.done)
        sharing = min(self.jobs, len(self.running) + ready)
        for inst in list(self.pending):
            if len(self.running) >= self.jobs:
                break
            parent = inst.parent.id if inst.parent is not None else None
            if parent in self.failed:
                self.pending.remove(inst)  # it starts from what failed: it cannot run
                self.failed[inst.id] = f"not run: {parent} failed"
                continue
            if parent is not None and parent not in self.done:
                continue
            device = self.device_for(inst)
            if not device:
                break  # wait for a device to empty (or to be let go); start nothing meanwhile
            self.pending.remove(inst)
            self.start(inst, device[0], sharing)

    def device_for(self, inst: StageInstance) -> list[str | None]:
        """[the device to start ``inst`` on], or [] while it must wait: a stage to run alone needs an
        idle device; any other one a device no job holds alone, the least busy, first in order."""
        if inst.id in self.exclusive:
            return [d for d in self.devices if not self.on(d)][:1]
        held = {j.device for j in self.running if j.exclusive}
        free = [d for d in self.devices if d not in held]
        return [min(free, key=lambda d: len(self.on(d)))] if free else []

    def start(self, inst: StageInstance, device: str | None, sharing: int) -> None:
        path = log_path(self.out, inst.id)
        fh = path.open("ab")
        env = device_env(device, sharing)
        proc = subprocess.Popen(
            worker_command(self.out, inst.id), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()
        )
        job = _Job(inst, proc, device, fh, inst.id in self.exclusive)
        for other in self.on(device):
            other.shared = job.shared = True
        self.running.append(job)
        self.log(
            f"[jobs] {inst.name} ({inst.kind}) started on {self.where(device, env)}"
            + (" alone" if job.exclusive else "")
            + f" -> {inst.id} (log: {path})"
        )
        self.on_change(inst, "running", {"log": str(path), "device": self.where(device, env)})

    def reap(self) -> None:
        """Take in the jobs that ended: done, to run again alone (out of memory beside others), or failed."""
        for job in [j for j in self.running if j.proc.poll() is not None]:
            job.fh.close()
            self.running.remove(job)
            inst, rc, secs = job.inst, job.proc.returncode, time.time() - job.t0
            if rc == 0 and cache.is_done(inst.folder):
                self.done.add(inst.id)
                self.finished.append(inst.id)
                info = cache.read_done(inst.folder)
                self.log(
                    f"[jobs] {inst.name} done in {secs:.1f}s (peak RSS {info.get('peak_rss_mb')} MB"
                    + (f", GPU {info['peak_gpu_mb']} MB" if info.get("peak_gpu_mb") is not None else "")
                    + ")"
                )
                self.on_change(inst, "done", {"wall_seconds": info.get("wall_seconds", round(secs, 2))})
                continue
            tail = _last_line(log_path(self.out, inst.id), 40)
            if job.shared and not job.exclusive and out_of_memory(rc, tail):
                self.exclusive.add(inst.id)
                self.pending.appendleft(inst)
                self.log(
                    f"[jobs] {inst.name} ran out of memory beside other jobs on {self.where(job.device)} "
                    f"after {secs:.0f}s; it runs again alone once a device is free"
                )
                self.on_change(inst, "pending", {"retry": "out of memory beside other jobs; runs again alone"})
                continue
            self.failed[inst.id] = f"exit code {rc}"
            self.log(
                f"[jobs] {inst.name} FAILED (exit code {rc}) after {secs:.0f}s; "
                f"log: {log_path(self.out, inst.id)}\n" + "\n".join(tail.splitlines()[-15:])
            )
            self.on_change(inst, "failed", {"error": f"exit code {rc}; see {log_path(self.out, inst.id)}"})

    def report_progress(self) -> None:
        if self.running and time.time() - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = time.time()
            for job in self.running:
                self.log(
                    f"[jobs] {job.inst.name}: {time.time() - job.t0:.0f}s | "
                    f"{_last_line(log_path(self.out, job.inst.id))[:160]}"
                )

    def stop_all(self) -> None:
        """Interrupted (Ctrl-C) or broken: stop the workers; their folders stay interrupted and resume later."""
        for job in self.running:
            job.proc.terminate()
        for job in self.running:
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
            job.fh.close()
            self.on_change(job.inst, "interrupted", {})

    def raise_if_failed(self) -> None:
        if self.failed:
            failed = self.failed
            first = next(i for i in failed if not failed[i].startswith("not run"))
            skipped = [i for i, w in failed.items() if w.startswith("not run")]
            raise RuntimeError(
                f"stage {first} failed ({failed[first]}); its log: {log_path(self.out, first)}"
                + (f"; not run because of it: {', '.join(skipped)}" if skipped else "")
            )


def worker_main(out: str, inst_id: str) -> int:
    """One stage of a run, in a process of its own (see the module docstring)."""
    import yaml

    from ..config.pipeline import LM_KINDS, load_pipeline
    from .plan import plan, unique_instances
    from .rows import EVIDENCE_FILE
    from .execute import execute_stage, log
    from .evidence import lm_evidence

    out_dir = Path(out).resolve()
    data = yaml.safe_load((out_dir / "pipeline.yaml").read_text(encoding="utf-8"))
    data["output_dir"] = str(out_dir)
    cfg = load_pipeline(data=data)
    inst = next((i for i in unique_instances(plan(cfg)) if i.id == inst_id), None)
    if inst is None:
        raise ConfigError(
            f"{out_dir / 'pipeline.yaml'}: no stage {inst_id} in its plan "
            "(did an input file change since the run started?)"
        )
    log(f"{inst.id}: {inst.kind} stage '{inst.name}' in process {os.getpid()}")
    info = execute_stage(inst, keep_checkpoints=cfg.keep_checkpoints)
    log(f"{inst.id}: done in {info['wall_seconds']:.1f}s")
    if inst.kind in LM_KINDS and cfg.evaluation.enabled:
        lm_evidence(inst.model_out, cfg, inst.folder / EVIDENCE_FILE)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lmadapt.pipeline.jobs OUTPUT_DIR STAGE_ID")
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
