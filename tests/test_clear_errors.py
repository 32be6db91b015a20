"""Issue 19 item 6: inputs that gave a traceback (or silently did the wrong thing) give one clear line.

Each test reproduces one reported case; none trains a model (tiny random models, saved once)."""

import errno
import json

import pytest

from helpers import tiny_bpe_tokenizer, tiny_gpt2, tiny_llama
from lmadapt.cli import main
from lmadapt.config import ConfigError, PretrainConfig, load_recipe


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("Loading weights", "Writing"))]
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny Llama and GPT-2 folders with a 64-position context, a corpus, and a damaged copy."""
    d = tmp_path_factory.mktemp("models")
    for name, build in (("llama", tiny_llama), ("gpt2", tiny_gpt2)):
        tok = tiny_bpe_tokenizer(d / name)
        ctx = {"max_position_embeddings": 64} if name == "llama" else {"n_positions": 64}
        build(len(tok), **ctx).save_pretrained(d / name)
    corrupt = d / "corrupt"
    tiny_bpe_tokenizer(corrupt)
    tiny_llama(400, max_position_embeddings=64).save_pretrained(corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a download cut short
    corpus = d / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            f"the {w} jumps over the lazy dog number {i}." for i, w in enumerate(["fox", "cat", "bird", "cow"] * 15)
        )
    )
    return d


def _pretrain_args(models, tmp_path, *extra):
    return [
        "pretrain",
        f"model.path={models / 'llama'}",
        f"data.sources=[{{path: {models / 'corpus.txt'}, split_docs: blank_line}}]",
        "data.block_size=32",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.max_steps=1",
        "train.report_to=[]",
        f"train.output_dir={tmp_path / 'run'}",
        *extra,
    ]


# --- recipes -----------------------------------------------------------------------------------


def test_yaml_exponent_without_dot_is_a_number_in_files_and_overrides(models, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {models / 'llama'}}}\n"
        f"data: {{sources: [{{path: {models / 'corpus.txt'}}}], block_size: 32}}\n"
        "train:\n  lr: 2e-4\n  weight_decay: 1E-2\n"
    )  # YAML 1.1 reads both as strings
    cfg = load_recipe(PretrainConfig, recipe)
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.weight_decay == pytest.approx(1e-2)
    assert load_recipe(PretrainConfig, recipe, ["train.lr='3e-5'"]).train.lr == pytest.approx(3e-5)
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'fast'"):
        load_recipe(PretrainConfig, recipe, ["train.lr=fast"])


def test_epochs_zero_is_refused(models, tmp_path, capsys):
    assert main(_pretrain_args(models, tmp_path, "train.max_steps=null", "train.epochs=0")) == 2
    _one_line_error(capsys, "epochs: must be > 0, got 0")
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file(models, tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    assert main(_pretrain_args(models, tmp_path)) == 2
    _one_line_error(capsys, "train.output_dir", "is a file")


# --- models ------------------------------------------------------------------------------------


def test_damaged_safetensors_is_one_line_naming_the_folder(models, tmp_path, capsys):
    corrupt = str(models / "corrupt")
    assert main(["evaluate", corrupt, "--data", str(models / "corpus.txt"), "--block-size", "16"]) == 2
    _one_line_error(capsys, f"could not read the model weights in {corrupt}", "damaged or incomplete")
    assert main(_pretrain_args(models, tmp_path, f"model.path={corrupt}")) == 2
    _one_line_error(capsys, f"could not read the model weights in {corrupt}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_size_above_the_model_context(models, tmp_path, capsys, arch):
    # GPT-2 failed with an IndexError; Llama trained past its 64 positions without a word
    assert main(_pretrain_args(models, tmp_path, f"model.path={models / arch}", "data.block_size=128")) == 2
    _one_line_error(capsys, "data.block_size: 128 tokens", "context of 64 positions")
    assert not (tmp_path / "run").exists()  # refused with the recipe, before any folder is written
    assert main(["evaluate", str(models / arch), "--data", str(models / "corpus.txt"), "--block-size", "65"]) == 2
    _one_line_error(capsys, "block_size: 65 tokens", "context of 64 positions")


def test_loaded_model_context_is_checked_too(models):
    from lmadapt.models.load import check_block_size

    model = tiny_gpt2(400, n_positions=64)  # e.g. a hub model: no local config.json read up front
    check_block_size(model, 64, "data.block_size")
    with pytest.raises(ConfigError, match="data.block_size: 65 tokens is more than the model's context of 64"):
        check_block_size(model, 65, "data.block_size")


# --- evaluate / predict / advise arguments -----------------------------------------------------


def test_evaluate_arguments_and_output_folder(models, tmp_path, capsys):
    base = ["evaluate", str(models / "llama"), "--data", str(models / "corpus.txt")]
    assert main(base + ["--block-size", "0"]) == 2
    _one_line_error(capsys, "--block-size: must be at least 2, got 0")
    (tmp_path / "out").mkdir()
    assert main(base + ["--block-size", "16", "--output", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "--output", "is a folder")
    assert (
        main(
            ["predict", str(models / "llama"), "--input", str(models / "corpus.txt"), "--output", str(tmp_path / "out")]
        )
        == 2
    )
    _one_line_error(capsys, "--output", "is a folder")
    assert list((tmp_path / "out").iterdir()) == []


def test_advise_measurements_not_json(tmp_path, capsys):
    bad = tmp_path / "advice.json"
    bad.write_text("measured: yes\n")
    assert main(["advise", "--goal", "classify", "--measurements", str(bad)]) == 2
    _one_line_error(capsys, f"--measurements: {bad} is not JSON")
    bad.write_text("[1, 2]")
    assert main(["advise", "--goal", "classify", "--measurements", str(bad)]) == 2
    _one_line_error(capsys, "holds no measurements")


@pytest.mark.parametrize(
    "rows, why",
    [
        ([{"text": f"a note number {i}"} for i in range(300)], "has no labels"),
        ([{"text": f"a note number {i}", "label": "jargon"} for i in range(300)], "single class ('jargon')"),
    ],
)
def test_advise_does_not_recommend_finetuning_without_two_classes(tmp_path, rows, why):
    from lmadapt.advise import recommend
    from lmadapt.advise.inputs import task_stats
    from test_advise import meas

    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = meas()
    m["task"], _ = task_stats(str(path), "text", "label", tiny_bpe_tokenizer(), 2048)  # what `measure` records
    advice = recommend(m, "classify")
    assert advice.recommendation != "finetuning" and advice.confidence != "high"
    assert any(why in w for w in advice.warnings) and advice.missing


# --- full or read-only disk --------------------------------------------------------------------


def test_full_or_read_only_disk_is_one_line_naming_the_path(models, tmp_path, monkeypatch, capsys):
    import tempfile

    from transformers import PreTrainedTokenizerFast

    def full(self, *a, **k):  # what safetensors raises on a full disk (not an OSError)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", full)
    out = tmp_path / "tok"
    assert (
        main(["tokenizer", "train", "--data", str(models / "corpus.txt"), "--vocab-size", "300", "--output", str(out)])
        == 2
    )
    _one_line_error(capsys, f"no space left on the device writing {out}", "GiB free there")
    assert not out.exists() and list(tmp_path.iterdir()) == []

    def read_only(*a, dir=None, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert (
        main(
            [
                "evaluate",
                str(models / "llama"),
                "--data",
                str(models / "corpus.txt"),
                "--block-size",
                "16",
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "read-only file system: cannot write", str(tmp_path))


def test_other_errors_are_not_taken_for_a_full_disk():
    from lmadapt.commands import storage_error

    assert storage_error(ValueError("bad value"), None) is None
    assert storage_error(OSError(errno.ENOENT, "No such file"), None) is None
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/data/run/model.safetensors")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert storage_error(outer, None).startswith("disk quota exceeded writing /data/run/model.safetensors")


# --- labeled data ------------------------------------------------------------------------------


def _splits(models, tmp_path, train_rows, dev_rows, **data):
    from lmadapt.config.finetune import FinetuneConfig
    from lmadapt.stages.finetune import read_splits
    from lmadapt.tasks import TASKS

    paths = {}
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_recipe(
        FinetuneConfig,
        data={
            "model": {"path": str(models / "llama")},
            "data": {"train": str(paths["train"]), "dev": str(paths["dev"]), **data},
            "train": {"output_dir": str(tmp_path / "out"), "report_to": []},
        },
    )
    return read_splits(TASKS["classification"], cfg)


def test_labels_differing_only_by_case_or_number_format_are_warned_with_counts(models, tmp_path, capsys):
    train = (
        [{"text": f"a {i}", "label": "jargon"} for i in range(6)]
        + [{"text": "b", "label": "JARGON"}]
        + [{"text": f"c {i}", "label": 3} for i in range(4)]
        + [{"text": "d", "label": 3.0}]
        + [{"text": "e", "label": "plain"}]
    )
    _, _, space = _splits(models, tmp_path, train, [{"text": "x", "label": "plain"}])
    assert set(space["labels"]) == {"jargon", "JARGON", "3", "3.0", "plain"}  # kept apart, as written
    out = capsys.readouterr().out
    assert "'jargon' (6 examples), 'JARGON' (1 examples)" in out
    assert "'3' (4 examples), '3.0' (1 examples)" in out


def test_unseen_dev_label_is_skipped_and_counted_with_on_error_skip(models, tmp_path):
    from lmadapt.tasks.base import DataError

    train = [{"text": f"a {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]
    dev = [{"text": "x", "label": "pos"}, {"text": "y", "label": "Pos"}, {"text": "z", "label": "maybe"}]
    with pytest.raises(DataError, match=r"dev\.jsonl:2: .*label 'Pos' .* differs only by case .* from 'pos'"):
        _splits(models, tmp_path, train, dev)
    splits, reports, _ = _splits(models, tmp_path, train, dev, on_error="skip")  # as the README says
    assert [ex.fields["label"] for ex in splits["dev"]] == ["pos"]
    assert reports["dev"].skipped == 2 and reports["dev"].examples == 1
    assert any("label 'maybe' in the dev set never occurs" in r for r in reports["dev"].skip_reasons)
    with pytest.raises(DataError, match="every record was skipped"):
        _splits(models, tmp_path, train, dev[1:], on_error="skip")


def test_full_disk_without_a_file_name_names_the_recipe_output_dir(tmp_path):
    import argparse

    from lmadapt.commands import storage_error

    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {output_dir: runs/dapt}\n")
    full = OSError(errno.ENOSPC, "No space left on device")  # a write(2) names no file
    args = argparse.Namespace(command="pretrain", recipe=str(recipe), overrides=[])
    assert storage_error(full, args).startswith("no space left on the device writing runs/dapt (")
    args.overrides = ["train.output_dir=/scratch/run2"]
    assert "writing /scratch/run2 (" in storage_error(full, args)


def test_advise_output_that_is_a_folder_is_refused_before_measuring(tmp_path, capsys):
    (tmp_path / "advice").mkdir()
    assert (
        main(
            [
                "advise",
                "--goal",
                "classify",
                "--measurements",
                str(tmp_path / "never-read.json"),
                "--output",
                str(tmp_path / "advice"),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "--output", "is a folder")
