"""Recipes fail loudly and early: unknown keys, wrong types, missing files, impossible combinations."""

import json

import pytest

from lmadapt.config import ConfigError, PretrainConfig, load_recipe, to_dict
from lmadapt.config.base import apply_overrides, help_text


def _recipe(tmp_path, **sections):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n")
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = {"model": {"path": str(model)}, "data": {"sources": [{"path": str(corpus)}]}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def test_valid_recipe_resolves_defaults(tmp_path):
    cfg = load_recipe(PretrainConfig, data=_recipe(tmp_path))
    assert cfg.train.lr == 1e-4 and cfg.data.block_size == 512
    assert to_dict(cfg)["data"]["sources"][0]["weight"] == 1.0


def test_unknown_key_names_nearest(tmp_path):
    data = _recipe(tmp_path)
    data["train"] = {"learning_rate": 1e-3}
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_recipe(PretrainConfig, data=data)
    data["train"] = {"lrr": 1e-3}
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_recipe(PretrainConfig, data=data)


def test_unknown_section_and_wrong_type(tmp_path):
    data = _recipe(tmp_path)
    data["trainer"] = {}
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_recipe(PretrainConfig, data=data)
    data = _recipe(tmp_path, train={"batch_size": "eight"})
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load_recipe(PretrainConfig, data=data)
    data = _recipe(tmp_path, data={"packing": "documents"})
    with pytest.raises(ConfigError, match="did you mean 'document'"):
        load_recipe(PretrainConfig, data=data)


def test_missing_corpus_file_named(tmp_path):
    data = _recipe(tmp_path)
    data["data"]["sources"] = [{"path": str(tmp_path / "nope.jsonl")}]
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: file not found: .*nope.jsonl"):
        load_recipe(PretrainConfig, data=data)


def test_masked_lm_on_decoder_refused(tmp_path):
    data = _recipe(tmp_path, model={"objective": "masked"})
    with pytest.raises(ConfigError, match="masked LM needs an encoder"):
        load_recipe(PretrainConfig, data=data)


def test_impossible_values(tmp_path):
    with pytest.raises(ConfigError, match="shares add up"):
        load_recipe(
            PretrainConfig,
            data=_recipe(
                tmp_path,
                data={
                    "sources": [
                        {"path": str(tmp_path / "corpus.txt"), "share": 0.6},
                        {"path": str(tmp_path / "corpus.txt"), "share": 0.5},
                    ]
                },
            ),
        )
    with pytest.raises(ConfigError, match="lora.merge"):
        load_recipe(PretrainConfig, data=_recipe(tmp_path, lora={"merge": True}))
    with pytest.raises(ConfigError, match="arch: required"):
        load_recipe(PretrainConfig, data=_recipe(tmp_path, model={"init": "scratch", "path": None}))


def test_yaml_file_and_overrides(tmp_path):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path)))
    cfg = load_recipe(PretrainConfig, path, ["train.lr=3e-4", "data.block_size=128", "train.report_to=[]"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.data.block_size == 128 and cfg.train.report_to == []
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'train.lrate'"):
        load_recipe(PretrainConfig, path, ["train.lrate=1"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  path: x\n  bad: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(PretrainConfig, path)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(PretrainConfig, tmp_path / "missing.yaml")


def test_override_syntax():
    assert apply_overrides({}, ["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(ConfigError, match="key.subkey=value"):
        apply_overrides({}, ["nonsense"])


def test_help_lists_every_option_with_default():
    text = help_text(PretrainConfig)
    for key in ("train.lr", "data.block_size", "data.packing", "lora.r", "model.objective", "train.resume"):
        assert key in text
    assert "(default: 512)" in text
