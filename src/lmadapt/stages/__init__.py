"""The stages, and the one table of them that the CLI (commands.py) and the pipeline
(pipeline/execute.py) both read.

A stage never imports another stage: they meet in output folders. The table names modules as
strings and loads them when a stage runs, so naming a stage imports nothing (``lmadapt --help``
needs no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    config: str  # "module.Class": the stage's recipe
    run: str  # "module.function": runs the stage from a loaded recipe, returns its metrics

    def config_class(self) -> type:
        return _load(self.config)

    def runner(self) -> Callable[[Any], dict]:
        return _load(self.run)


def _load(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(import_module(module), name)


# Recipe-driven stages: `lmadapt NAME RECIPE [key=value ...]`, and a pipeline stage of kind NAME.
STAGES: dict[str, Stage] = {
    "pretrain": Stage("lmadapt.config.pretrain.PretrainConfig", "lmadapt.stages.pretrain.run_pretrain"),
    "finetune": Stage("lmadapt.config.finetune.FinetuneConfig", "lmadapt.stages.finetune.run_finetune"),
    "merge": Stage("lmadapt.config.merge.MergeConfig", "lmadapt.stages.merge.run_merge"),
}
