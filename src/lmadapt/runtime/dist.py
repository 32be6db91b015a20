"""Coordination between the processes of one ``torchrun`` / ``accelerate launch`` job.

A stage (pretrain, finetune, a perplexity evaluation) runs on every process: Trainer and
``lm_eval`` split the work and meet in collectives. Everything around the stages (which stage is
cached, run_state.json, results.jsonl, DONE markers, the report) is decided and written by the
main process alone and then *broadcast*, so no process acts on a file another one is writing.

With one process (no ``WORLD_SIZE`` > 1) every helper here is a no-op that returns its input, and
no process group is created.

Timeout: while the main process works alone (saving or merging a model, the TF-IDF baseline, the
report), the others wait in a collective. NCCL's default would abort them after 10 minutes;
lmadapt creates the group with ``LMADAPT_DIST_TIMEOUT`` seconds (default 1800, the Trainer's own
``ddp_timeout``), and hands the same value to the Trainer, whichever of the two starts the group.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def is_local_main_process() -> bool:
    """The first process of this node (it owns the node's local files, such as a tokenization cache)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def log(msg: str, tag: str = "lmadapt") -> None:
    """A progress line, printed by the main process only (one line per job, not one per process)."""
    if is_main_process():
        print(f"[{tag}] {msg}", flush=True)


def timeout_seconds() -> int:
    """How long a collective waits for the slowest process (``LMADAPT_DIST_TIMEOUT``, default 1800 s)."""
    raw = os.environ.get("LMADAPT_DIST_TIMEOUT", "1800")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"LMADAPT_DIST_TIMEOUT={raw!r}: expected a positive number of seconds")
    return value


def use_cpu() -> bool:
    """Train and coordinate on the CPU: exactly when no GPU is visible (the Trainer is told the same)."""
    import torch

    return not torch.cuda.is_available()


def resolve_precision(precision: str) -> str:
    """'auto' -> bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (CPU bf16 is slow here)."""
    import torch

    if precision != "auto":
        if precision in ("bf16", "fp16") and not torch.cuda.is_available():
            # bf16 on CPU works but can be ~80x slower than fp32 on CPUs without AMX/AVX512-BF16.
            return precision
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def process_device():
    """This process's device: ``cuda:LOCAL_RANK`` when GPUs are visible (torchrun sets LOCAL_RANK;
    one process: cuda:0), else the CPU. The Trainer puts the model there for training."""
    import torch

    if use_cpu():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def to_process_device(model):
    """``model`` moved to ``process_device()``, for the evaluations that run outside the Trainer
    (held-out perplexity before training, pipeline evidence, `lmadapt evaluate`): loaded models
    start on the CPU, where a GPU job would otherwise score them."""
    return model.to(process_device())


def _state():
    """The process group, joined on first use: gloo on CPU, nccl on GPUs.

    ``cpu`` must be passed: without it accelerate, finding no GPU, starts the group but calls the
    job single-process, and ``wait_for_everyone`` then returns without waiting. The Trainer later
    rebuilds this state with the same settings over the same group."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=use_cpu(), timeout=timedelta(seconds=timeout_seconds()))


def barrier() -> None:
    if world_size() > 1:
        _state().wait_for_everyone()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (any picklable object)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    _state()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list:
    """``value`` of every process, in rank order, on every process."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    _state()
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def main_first(fn: Callable[[], T], what: str, *, per_node: bool, others: Callable[[], T] | None = None) -> T:
    """``fn()`` on the main process (``per_node``: each node's first process), then on the others
    (``others()`` there instead, where given: to read what ``fn`` wrote without redoing its work).

    For work that fills a cache on disk (tokenizing a corpus, per node; training the demo
    tokenizer into the shared output folder, once): the first process does it, the others read
    the result instead of all doing it at once. A failure on a first process stops every process
    with a message, where a plain barrier would leave the others waiting until the timeout."""
    if world_size() == 1:
        return fn()
    first = is_local_main_process() if per_node else is_main_process()
    result, error = None, None
    if first:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
            error = exc
    failed = [i for i, e in enumerate(gather(error is not None)) if e]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on process {failed[0]}; its log has the error")
    return result if first else (others or fn)()


def _share(items: Sequence) -> list:
    """This process's contiguous share of ``items`` (accelerate's ``split_between_processes``:
    shares differ by one item at most, and a process may get none)."""
    with _state().split_between_processes(list(items)) as mine:
        return list(mine)


def _lockstep() -> bool:
    """A sharded model is alive here: every forward pass is a collective, so every process must run
    the same ones. map_split/sum_split then run ``fn`` on all items on every process (identical
    results everywhere, no split), instead of shares whose batch counts differ."""
    import sys

    fsdp = sys.modules.get("lmadapt.train.fsdp")
    return fsdp is not None and fsdp.any_sharded()


def map_split(fn: Callable[[list], tuple[Sequence, int]], items: Sequence) -> tuple[list, int]:
    """``fn`` over ``items``, split between the processes; for evaluations that score examples one by one.

    ``fn`` maps a list to (one result per item, a count such as "examples truncated"). Each process
    runs it on its share; every process gets back all results in the order of ``items`` and the
    count summed over processes. The model must be whole on every process (data parallel), since
    the processes run different numbers of batches; with a sharded one every process runs all items."""
    if world_size() == 1 or _lockstep():
        results, count = fn(list(items))
        return list(results), count
    mine = _share(items)
    results, count = fn(mine) if mine else ([], 0)
    parts = gather((list(results), count))
    merged = [r for part, _ in parts for r in part]
    if len(merged) != len(items):
        raise RuntimeError(f"map_split: {len(merged)} results for {len(items)} items")
    return merged, sum(c for _, c in parts)


def sum_split(fn: Callable[[list], tuple], items: Sequence) -> tuple:
    """``fn`` over ``items`` split between the processes, where ``fn`` returns additive numbers
    (a loss sum, a token count): their totals over all processes, on every process (with a sharded
    model: ``fn`` over all items on every process, see map_split)."""
    if world_size() == 1 or _lockstep():
        return tuple(fn(list(items)))
    return tuple(sum(vals) for vals in zip(*gather(tuple(fn(_share(items))))))


def finish() -> None:
    """Leave the process group cleanly at the end of a command, on every process.

    Without this, Gloo's worker threads can outlive the interpreter's teardown and abort the
    process (SIGABRT) after the work is done: 2 of 12 runs of the two-process test file, 0 of 16 since."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imported: nothing to leave (and no torch import)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
