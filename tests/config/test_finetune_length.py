"""model.max_length is every fine-tuning task's length: per-task defaults, the deprecated per-task keys,
their conflicts, one minimum, and older saved recipes."""

import pytest

from lmadapt.config import ConfigError, to_dict
from lmadapt.config import finetune as ft
from lmadapt.config.base import from_dict, help_text
from lmadapt.config.finetune import FinetuneConfig, upgrade_saved_recipe
from lmadapt.tasks.base import TaskSettings


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    """Each test sees the once-per-process deprecation notice afresh."""
    monkeypatch.setattr(ft, "_noticed", set())


def _cfg(task: str, **sections) -> FinetuneConfig:
    raw = {"model": {"path": "some/model"}, "data": {"train": "train.jsonl"}, "task": {"type": task}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return from_dict(FinetuneConfig, raw)


@pytest.mark.parametrize(
    "task, length", [("classification", 512), ("extraction", 512), ("qa", 384), ("instruction", 1024)]
)
def test_each_task_gets_its_default_and_the_resolved_recipe_names_one_length(task, length, capsys):
    cfg = _cfg(task)
    assert cfg.model.max_length == cfg.max_length == length
    saved = to_dict(cfg)
    assert saved["model"]["max_length"] == length
    assert all(saved[name]["max_length"] is None for name in ("extraction", "qa", "instruction"))
    assert from_dict(FinetuneConfig, saved).max_length == length  # a saved recipe loads as it was
    assert TaskSettings(data=cfg.data, task=cfg.task).max_length == length
    assert "deprecated" not in capsys.readouterr().err


def test_model_max_length_serves_every_task():
    for task in ("classification", "extraction", "qa", "instruction"):
        assert _cfg(task, model={"max_length": 256}).max_length == 256


def test_deprecated_key_is_folded_in_with_one_notice(capsys):
    cfg = _cfg("extraction", extraction={"max_length": 300})
    assert cfg.max_length == 300 and cfg.extraction.max_length is None
    _cfg("extraction", extraction={"max_length": 300})
    err = capsys.readouterr().err
    assert err.count("extraction.max_length is deprecated: use model.max_length") == 1
    # the same number under both keys is no conflict
    assert _cfg("instruction", model={"max_length": 200}, instruction={"max_length": 200}).max_length == 200
    # another task's key is not read (as before), but still draws the notice
    assert _cfg("classification", qa={"max_length": 200}).max_length == 512
    assert "qa.max_length is deprecated: use model.max_length" in capsys.readouterr().err


def test_both_keys_set_and_different_is_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"model.max_length \(256\) and qa.max_length \(300\) disagree"):
        _cfg("qa", model={"max_length": 256}, qa={"max_length": 300})


def test_one_minimum_for_both_keys():
    with pytest.raises(ConfigError, match="max_length: must be at least 8, got 7"):
        _cfg("instruction", model={"max_length": 7})
    with pytest.raises(ConfigError, match="extraction.max_length: must be at least 8, got 5"):
        _cfg("extraction", extraction={"max_length": 5})
    assert _cfg("extraction", model={"max_length": 8}).max_length == 8


def test_qa_window_checked_against_the_resolved_length():
    with pytest.raises(ConfigError, match=r"qa.doc_stride: must be smaller than model.max_length \(128\)"):
        _cfg("qa", model={"max_length": 128})  # default doc_stride 128
    with pytest.raises(ConfigError, match="raise model.max_length"):
        _cfg("qa", model={"max_length": 160})  # 64 + 128 + 8 > 160
    assert _cfg("qa", model={"max_length": 96}, qa={"doc_stride": 16, "max_question_length": 16}).max_length == 96
    assert _cfg("classification", model={"max_length": 64}).max_length == 64  # the qa section is not used


def test_older_saved_recipes_load_without_conflict_or_notice(capsys):
    old = {
        "model": {"path": "some/model", "max_length": 512},
        "data": {"train": "train.jsonl"},
        "task": {"type": "qa"},
        "extraction": {"max_length": 512},
        "qa": {"max_length": 384},
        "instruction": {"max_length": 1024},
    }
    cfg = from_dict(FinetuneConfig, upgrade_saved_recipe(old))
    assert cfg.max_length == 384
    old["task"]["type"] = "classification"
    assert from_dict(FinetuneConfig, upgrade_saved_recipe(old)).max_length == 512
    assert old["qa"] == {"max_length": 384}  # the input is left as it was
    assert "deprecated" not in capsys.readouterr().err


def test_task_settings_read_a_recipe_without_its_model():
    settings = TaskSettings.of_recipe({"data": {"train": "train.jsonl", "label_field": "y"}, "lora": {"r": 4}})
    assert settings.data.label_field == "y" and settings.max_length == 512


def test_help_lists_one_length():
    text = help_text(FinetuneConfig)
    assert "model.max_length <int (or null)>" in text
    assert "null: the task's default (classification 512" in text
