"""The command line: help texts, one-line errors, and evaluate agreeing with a pretrain run."""

import json

import pytest

from helpers import tiny_bpe_tokenizer
from lmadapt.cli import main


def test_help_lists_commands_and_recipe_keys(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("pretrain", "finetune", "evaluate", "predict", "tokenizer", "convert", "advise"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "train.lr" in out and "(default: 0.0001)" in out and "data.packing" in out


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: x}\ntrian: {lr: 1}\n")
    assert main(["pretrain", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'train'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_print_recipe_resolves_overrides(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n")
    tok = tmp_path / "tok"
    tiny_bpe_tokenizer(tok)
    args = [
        "pretrain",
        "model.init=scratch",
        "model.arch=llama",
        "model.size=1m",
        f"model.tokenizer={tok}",
        f"data.sources=[{{path: {corpus}}}]",
        "train.lr=3e-4",
        "--print-recipe",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "block_size: 512" in out


def test_tokenizer_train_then_pretrain_then_evaluate(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            f"the {w} jumps over the lazy dog number {i}." for i, w in enumerate(["fox", "cat", "bird", "cow"] * 15)
        )
    )
    valid = tmp_path / "valid.txt"
    valid.write_text("the fox jumps over the lazy dog number 3.\n\nthe cat jumps over the lazy dog number 7.")
    assert (
        main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--output", str(tmp_path / "tok")])
        == 0
    )
    out_dir = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "model.init=scratch",
                "model.arch=llama",
                f"model.tokenizer={tmp_path / 'tok'}",
                "model.dims={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}",
                f"data.sources=[{{path: {corpus}, split_docs: blank_line}}]",
                f"data.eval_sources=[{{path: {valid}, name: valid, split_docs: blank_line}}]",
                "data.block_size=32",
                f"data.cache_dir={tmp_path / 'cache'}",
                "train.max_steps=5",
                "train.batch_size=4",
                "train.report_to=[]",
                f"train.output_dir={out_dir}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["evaluate", str(out_dir), "--data", str(valid), "--split-docs", "blank_line", "--block-size", "32"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    after = json.loads((out_dir / "metrics.json").read_text())["heldout"]["valid"]["after"]
    assert result["objective"] == "causal"
    assert result["sets"]["valid"]["perplexity"] == pytest.approx(after["perplexity"], rel=1e-4)
