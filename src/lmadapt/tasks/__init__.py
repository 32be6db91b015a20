"""Fine-tuning tasks: ``TASKS[name]`` -> the task object (see tasks/base.py for the contract).

Task modules are imported on first use, so a task whose module (or an optional dependency of
it) is missing does not break the others: asking for it raises a ConfigError that says why.
Adding a task is one line in ``_MODULES`` plus a module that defines ``TASK``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Iterator

from ..config.base import ConfigError
from .base import DataError, Example, ReadReport, Task

_MODULES = {
    "classification": "lmadapt.tasks.classification",
    "extraction": "lmadapt.tasks.extraction",
    "qa": "lmadapt.tasks.qa",
    "instruction": "lmadapt.tasks.instruction",
}


class _Registry(Mapping):
    """A read-only mapping that imports a task's module the first time the task is asked for."""

    def __init__(self, modules: dict[str, str]):
        self._modules = dict(modules)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Task:
        if name not in self._modules:
            raise ConfigError(f"task.type: unknown task {name!r} (known: {', '.join(self._modules)})")
        if name not in self._loaded:
            try:
                module = importlib.import_module(self._modules[name])
            except ImportError as exc:
                raise ConfigError(f"task.type: {name!r} is not available here ({exc})") from exc
            task = getattr(module, "TASK", None)
            if task is None:
                raise ConfigError(f"task.type: module {self._modules[name]} defines no TASK object")
            self._loaded[name] = task
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def available(self) -> list[str]:
        """Names whose module imports cleanly."""
        out = []
        for name in self._modules:
            try:
                self[name]
                out.append(name)
            except ConfigError:
                pass
        return out


TASKS = _Registry(_MODULES)


def get_task(name: str) -> Task:
    return TASKS[name]


__all__ = ["TASKS", "get_task", "DataError", "Example", "ReadReport", "Task"]
