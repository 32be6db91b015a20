"""Issue 19 items 6 and 7 for `lmadapt predict`: a model folder never runs its own code unless the user
says so on the command line, and a damaged folder or a bad --output is one line, not a traceback."""

import json
import shutil

import pytest
import yaml

from helpers import tiny_bert, tiny_wordpiece_tokenizer
from lmadapt.cli import main
from lmadapt.config.base import load_recipe, to_dict
from lmadapt.config.finetune import FinetuneConfig
from lmadapt.stages.finetune import run_finetune

EVIL = """import pathlib
pathlib.Path(MARKER_PATH).write_text("the folder's code ran")   # transformers runs a copy elsewhere
from transformers import BertConfig


class EvilConfig(BertConfig):
    model_type = "bert"
"""


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A one-epoch classification fine-tune of a tiny BERT (~2 s)."""
    d = tmp_path_factory.mktemp("ft")
    tiny_bert(len(tiny_wordpiece_tokenizer(d / "base"))).save_pretrained(d / "base")
    rows = [
        {"text": f"the dog {'was' if i % 2 else 'over'} here {i}", "label": "neg" if i % 2 else "pos"}
        for i in range(16)
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_recipe(
        FinetuneConfig,
        data={
            "model": {"path": str(d / "base"), "max_length": 16},
            "data": {"train": str(d / "train.jsonl"), "dev": str(d / "train.jsonl")},
            "train": {"output_dir": str(d / "out"), "epochs": 1, "batch_size": 8, "report_to": [], "torch_threads": 1},
        },
    )
    run_finetune(cfg, to_dict(cfg))
    return d / "out"


def test_predict_never_takes_trust_remote_code_from_the_folder(finetuned, tmp_path, capsys):
    folder = tmp_path / "downloaded"
    shutil.copytree(finetuned, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "MARKER"
    (folder / "evil.py").write_text(EVIL.replace("MARKER_PATH", repr(str(marker))))
    recipe = yaml.safe_load((folder / "lmadapt_recipe.yaml").read_text())
    recipe["model"]["trust_remote_code"] = True  # the folder asks for its code to run
    (folder / "lmadapt_recipe.yaml").write_text(yaml.safe_dump(recipe))

    assert main(["predict", str(folder), "--text", "the dog was here"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["label"] in ("pos", "neg")
    assert not marker.exists()
    # the user's own flag is what allows it (and shows the folder above really carried runnable code)
    assert main(["predict", str(folder), "--text", "the dog was here", "--trust-remote-code"]) == 0
    assert marker.exists()


def _damage(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short


def test_damaged_weights_are_one_line_in_predict_and_finetune(finetuned, tmp_path, capsys):
    folder = tmp_path / "ft"
    shutil.copytree(finetuned, folder)
    _damage(folder)
    assert main(["predict", str(folder), "--text", "the dog was here"]) == 2
    err = capsys.readouterr().err
    assert f"error: could not read the model weights in {folder}" in err and "Traceback" not in err

    base = tmp_path / "base"
    shutil.copytree(finetuned.parent / "base", base)
    _damage(base)
    train = finetuned.parent / "train.jsonl"
    assert (
        main(
            [
                "finetune",
                f"model.path={base}",
                f"data.train={train}",
                f"data.dev={train}",
                f"train.output_dir={tmp_path / 'out'}",
                "train.report_to=[]",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"error: could not read the model weights in {base}" in err and "Traceback" not in err


def test_predict_output_that_is_a_folder_is_refused_before_loading(finetuned, tmp_path, capsys):
    (tmp_path / "preds").mkdir()
    assert (
        main(
            [
                "predict",
                str(finetuned),
                "--input",
                str(finetuned.parent / "train.jsonl"),
                "--output",
                str(tmp_path / "preds"),
            ]
        )
        == 2
    )
    assert "--output" in capsys.readouterr().err and list((tmp_path / "preds").iterdir()) == []


def test_evaluate_runs_folder_code_only_with_the_flag(tmp_path, capsys):
    from helpers import tiny_bpe_tokenizer, tiny_llama

    folder = tmp_path / "downloaded"
    tiny_llama(len(tiny_bpe_tokenizer(folder))).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "MARKER"
    code = (
        EVIL.replace("MARKER_PATH", repr(str(marker))).replace("BertConfig", "LlamaConfig").replace('"bert"', '"llama"')
    )
    (folder / "evil.py").write_text(
        code.replace("from transformers import LlamaConfig", "from transformers import LlamaConfig, LlamaForCausalLM")
        + "\n\nclass EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    text = tmp_path / "valid.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    args = ["evaluate", str(folder), "--data", str(text), "--block-size", "16"]
    assert main(args) == 0 and not marker.exists()
    assert main(args + ["--trust-remote-code"]) == 0 and marker.exists()
