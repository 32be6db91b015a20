"""Loaders for the bundled harness tasks: their JSONL files sit next to this module, so the task
YAMLs need no absolute path and no hub (lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def jsonl_split(name: str, split: str = "test"):
    """One split read from a JSONL file here (from_list: no datasets cache folder is written)."""
    import json

    import datasets

    lines = (HERE / name).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({split: datasets.Dataset.from_list([json.loads(x) for x in lines if x.strip()])})


def lmadapt_cloze(**_kwargs):
    return jsonl_split("lmadapt_cloze.jsonl")
