"""lm-evaluation-harness scores of a model held in memory (a thin use of ``lm_eval.simple_evaluate``).

    scores = run_harness(model, tokenizer, HarnessConfig(tasks=["lmadapt_cloze"], limit=20))
    # {"lmadapt_cloze": {"acc": 0.35, "acc_stderr": 0.11, "acc_norm": 0.4, ..., "n": 20, "primary": "acc_norm"}}

The model is wrapped in lm-eval's own ``HFLM`` (``pretrained=`` a model object), so what is scored
is exactly the weights in memory: a pretrain stage's model before and after, or a merge stage's
interpolated weights at each alpha, without writing a folder. Task names resolve through a
``TaskManager`` that also indexes the bundled offline tasks (lmadapt/harness_tasks) and any
``include_path`` folders of task YAMLs. Under several processes every process scores the whole
task set on its own device (HFLM's in-memory mode is single-process), so all get the same numbers.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from importlib.resources import files

from ..config.base import ConfigError
from ..config.capability import HarnessConfig

# Which of a task's metrics is its headline number (the one compared across arms and usable as a
# merge budget): length-normalised accuracy where the task has it (HellaSwag, ARC), else accuracy
# (MMLU), else exact match (generative tasks), else the first the task reports.
PRIMARY_ORDER = ("acc_norm", "acc", "exact_match", "f1", "mcc")


def bundled_tasks_dir() -> str:
    """Folder of the task YAMLs shipped with lmadapt (``lmadapt_cloze``: offline, no hub)."""
    return str(files("lmadapt") / "harness_tasks")


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(
            "harness: lm-evaluation-harness is not installed; pip install 'lmadapt[harness]' "
            "(or pip install 'lm-eval>=0.4')"
        ) from None


@functools.lru_cache(maxsize=8)
def _manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include), include_defaults=defaults)


def task_manager(cfg: HarnessConfig):
    """An lm-eval TaskManager that knows the bundled tasks, ``cfg.include_path`` and, unless every
    task is found there, lm-eval's own tasks (indexing its ~15,000 YAMLs takes ~10 s on one core,
    so a run on local tasks skips it). Cached per process: a merge sweep scores many weights."""
    _require_lm_eval()
    include = (bundled_tasks_dir(), *map(str, cfg.include_path))
    local = _manager(include, False)
    if all(name in local.all_tasks for name in cfg.tasks):
        return local
    return _manager(include, True)


def check_tasks(cfg: HarnessConfig, manager=None) -> None:
    """Every task name is one lm-eval (or an include path) defines: a clear error before any scoring."""
    manager = manager or task_manager(cfg)
    known = set(manager.all_tasks)
    for i, name in enumerate(cfg.tasks):
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=3)
            raise ConfigError(
                f"harness.tasks[{i}]: {name!r} is not an lm-eval task or group"
                + (f" (did you mean {', '.join(near)}?)" if near else "")
                + "; local tasks need their YAML folder in harness.include_path"
            )


def primary_metric(scores: dict) -> str | None:
    """The headline metric of one task's scores (see PRIMARY_ORDER)."""
    names = [
        k
        for k in scores
        if k not in ("n", "primary") and not k.endswith("_stderr") and isinstance(scores[k], (int, float))
    ]
    return next((m for m in PRIMARY_ORDER if m in names), names[0] if names else None)


def _flatten(name: str, res: dict, higher: dict) -> dict:
    """lm-eval's {"acc,none": .., "acc_stderr,none": ..} as {"acc": .., "acc_stderr": ..}."""
    out: dict = {}
    for key, value in res.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, flt = key.split(",", 1)
        base = metric[: -len("_stderr")] if metric.endswith("_stderr") else metric
        label = base if flt == "none" else f"{base}_{flt}"
        if metric.endswith("_stderr"):
            label += "_stderr"
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[label] = float(value)
    out["n"] = int(res.get("sample_len") or res.get("samples") or 0) or None
    out["primary"] = primary_metric(out)
    out["higher_is_better"] = {m: bool(v) for m, v in (higher.get(name) or {}).items()}
    return out


def _rng_state():
    import random

    import numpy as np
    import torch

    return (
        random.getstate(),
        np.random.get_state(),
        torch.random.get_rng_state(),
        (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
    )


def _set_rng_state(state) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.random.set_rng_state(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


def run_harness(model, tokenizer, cfg: HarnessConfig) -> dict:
    """{task: {metric: value, metric_stderr: value, n, primary, higher_is_better}} for ``cfg.tasks``
    (a group such as mmlu gives its aggregate where lm-eval computes one, else its subtasks)."""
    if not cfg.enabled:
        return {}
    manager = task_manager(cfg)
    check_tasks(cfg, manager)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from ..runtime.dist import to_process_device

    model = to_process_device(model) if cfg.device == "auto" else model.to(cfg.device)
    was_training = model.training
    model.eval()
    # Expected, once per call: "pretrained is not a str" (we pass the model in memory on purpose) and
    # the custom_dataset hint of the bundled tasks' loader; real warnings of other modules still show.
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task"):
        logging.getLogger(name).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    # simple_evaluate seeds python, numpy and torch (fixed few-shot draws); a pipeline or a test goes
    # on after it, so their random state is put back as it was.
    state = _rng_state()
    try:
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=100,
            verbosity="WARNING",
        )
    finally:
        model.train(was_training)
        _set_rng_state(state)
    results, higher = res.get("results") or {}, res.get("higher_is_better") or {}
    counts = {k: (v or {}).get("effective") for k, v in (res.get("n-samples") or {}).items()}
    out = {}
    for name in cfg.tasks:
        names = [name] if name in results else list((res.get("group_subtasks") or {}).get(name) or [])
        for task in names:
            if task in results:
                out[task] = _flatten(task, {**results[task], "samples": counts.get(task)}, higher)
    return out


def harness_value(scores: dict, spec: str) -> float | None:
    """``scores[task][metric]`` for ``spec`` = "task/metric" (or "task": its primary metric)."""
    task, _, metric = spec.partition("/")
    t = scores.get(task) or {}
    metric = metric or t.get("primary")
    v = t.get(metric) if metric else None
    return float(v) if isinstance(v, (int, float)) else None
