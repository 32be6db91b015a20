"""Issue 19 item 5: overwrite clears an earlier run's files, resume refuses another recipe's run, and a
standalone stage takes the folder lock `lmadapt run` takes."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "stages"))
from test_pretrain import learnable_corpus, recipe  # noqa: E402  (the tiny pretrain recipe)

from helpers import tiny_bpe_tokenizer
from lmadapt.config import PretrainConfig, load_recipe
from lmadapt.config.base import ConfigError
from lmadapt.stages.pretrain import run_pretrain
from lmadapt.pipeline.run import RunLock  # the lock `lmadapt run` takes


def test_overwrite_clears_resume_checks_the_recipe_and_standalone_stages_lock(tmp_path):
    tok = tmp_path / "tok"
    tiny_bpe_tokenizer(tok)
    train = learnable_corpus(tmp_path / "train.jsonl", 40, 0)
    valid = learnable_corpus(tmp_path / "valid.jsonl", 4, 1)
    data = recipe(tmp_path, tok, train, valid, max_steps=4, save_every=2, save_total_limit=3)
    run_pretrain(load_recipe(PretrainConfig, data=data))
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "stale_section": 1}))

    # resume with another seed: refused, naming the difference
    data["train"].update(resume=True, seed=1)
    with pytest.raises(ConfigError, match=r"different recipe \(train.seed: 0 there, 1 now\)"):
        run_pretrain(load_recipe(PretrainConfig, data=data))
    data["train"].update(seed=0)
    data["data"]["sources"] = [{"path": str(valid)}]
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path"):
        run_pretrain(load_recipe(PretrainConfig, data=data))

    # overwrite: nothing of the earlier run survives (its checkpoints, its metrics sections)
    data = recipe(tmp_path, tok, train, valid, max_steps=2, overwrite=True)
    m = run_pretrain(load_recipe(PretrainConfig, data=data))
    assert "stale_section" not in json.loads((out / "metrics.json").read_text())
    assert not list(out.glob("checkpoints/checkpoint-*")) and m["train"]["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "logs.jsonl").read_text().splitlines()][-1] == 2

    # a folder another lmadapt process holds is refused (the lock of `lmadapt run`)
    from lmadapt.runtime.run_folder import release_folder

    release_folder(out)  # this process's own hold, as if the run above had been another process
    with RunLock(out):
        with pytest.raises(ConfigError, match="is in use by another lmadapt process"):
            run_pretrain(load_recipe(PretrainConfig, data=data))

    # overwrite never empties a folder lmadapt did not write
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    data["train"]["output_dir"] = str(foreign)
    with pytest.raises(ConfigError, match="holds files lmadapt did not write"):
        run_pretrain(load_recipe(PretrainConfig, data=data))
    assert (foreign / "thesis.tex").is_file()


def test_overwrite_into_a_new_folder_and_a_rerun_after_an_early_failure_start(tmp_path):
    """The lock file a run takes is not "an earlier run" (train.overwrite=true into a new folder was refused
    because of it), and a folder left by a run that failed before its first checkpoint or output holds
    nothing to lose: the corrected run starts there without a flag."""
    from lmadapt.runtime import run_folder
    from lmadapt.runtime.run_folder import prepare_output_dir

    new = tmp_path / "new"
    prepare_output_dir(new, resume=False, overwrite=True, recipe={"train": {"seed": 0}})
    assert (new / run_folder.LOCK_FILE).is_file() and (new / run_folder.RUN_FILE).is_file()
    run_folder.release_folder(new)  # as if that process had failed and exited
    (new / ".lmadapt-blocks").mkdir()
    prepare_output_dir(new, resume=False, overwrite=False, recipe={"train": {"seed": 1}})
    assert json.loads((new / run_folder.RUN_FILE).read_text())["train.seed"] == 1
    run_folder.release_folder(new)
    (new / "metrics.json").write_text("{}")  # an output: now a flag is needed
    with pytest.raises(ConfigError, match="is not empty"):
        prepare_output_dir(new, resume=False, overwrite=False, recipe={"train": {"seed": 1}})
