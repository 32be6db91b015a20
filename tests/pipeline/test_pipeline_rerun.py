"""Which finished stages a run may reuse: `--rerun`, a parent trained again, other lmadapt code.

A stage's folder is named by what it computes, so a parent trained again keeps its name; the
children it fed must then train again too, or they would pair the new parent with results of the
old one. One arm (base -> dapt -> ft), one seed, a few steps a stage.
"""

import json
import shutil

import pytest

from lmadapt.config.base import ConfigError
from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import cache
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.cache import DONE_FILE
from toy_pipeline import make_workspace, pipeline_dict


def small_pipeline(ws, out) -> dict:
    d = pipeline_dict(ws, out)
    d.update(seeds=[0], arms={"dapt_ft": ["base", "dapt", "ft"]}, baseline={"tfidf": False})
    d["evaluation"] = {"lm_sets": {}}
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One finished run; each test gets a copy (stage hashes leave output_dir out, so a copied run
    folder is as finished as the original)."""
    ws = make_workspace(tmp_path_factory.mktemp("rerun"))
    out = ws["dir"] / "template"
    prun.run_pipeline(load_pipeline(data=small_pipeline(ws, out)), report=False)
    return ws, out


@pytest.fixture
def finished(template, tmp_path):
    """A finished run: {stage name: folder}, a function that runs the pipeline again, its data."""
    ws, src = template
    shutil.copytree(src, tmp_path / "run")
    data = small_pipeline(ws, tmp_path / "run")

    def again(**kw):
        return prun.run_pipeline(load_pipeline(data=data), report=False, **kw)

    assert again()["executed"] == [], "the copy is reused as it is"
    folders = {p.name.split("-")[1]: p for p in (tmp_path / "run" / "stages").iterdir()}
    assert set(folders) == {"base", "dapt", "ft"}
    return folders, again, data


def done(folder) -> dict:
    return json.loads((folder / DONE_FILE).read_text())


def executed_names(summary) -> list[str]:
    return [i.split("-")[1] for i in summary["executed"]]


def test_done_records_which_parent_training_it_started_from(finished):
    folders, _, _ = finished
    base, dapt, ft = (done(folders[n]) for n in ("base", "dapt", "ft"))
    assert base["parent_run"] is None
    assert dapt["parent_run"] == base["run_id"] and ft["parent_run"] == dapt["run_id"]
    assert len({base["run_id"], dapt["run_id"], ft["run_id"]}) == 3
    assert ft["code"] == cache.code_fingerprint() and len(ft["code"]) == 12


def test_a_deleted_parent_trains_again_and_so_does_what_follows_it(finished):
    folders, again, _ = finished
    old_ft = done(folders["ft"])["run_id"]
    shutil.rmtree(folders["dapt"])
    summary = again()
    assert executed_names(summary) == ["dapt", "ft"], "ft must not keep the results of the deleted dapt"
    assert done(folders["ft"])["run_id"] != old_ft
    assert done(folders["ft"])["parent_run"] == done(folders["dapt"])["run_id"]


def test_a_parent_trained_again_elsewhere_makes_its_child_out_of_date(finished):
    # As if another pipeline sharing this output_dir, whose plan stops at dapt, had run `--rerun dapt`.
    folders, again, _ = finished
    record = done(folders["dapt"])
    (folders["dapt"] / DONE_FILE).write_text(json.dumps({**record, "run_id": cache.new_run_id()}))
    summary = again()
    assert executed_names(summary) == ["ft"]
    assert done(folders["ft"])["parent_run"] == done(folders["dapt"])["run_id"]


def test_rerun_trains_the_named_stage_and_the_ones_after_it(finished, monkeypatch):
    folders, again, data = finished
    before = {n: done(f)["run_id"] for n, f in folders.items()}
    marker = folders["dapt"] / "left_by_the_old_training.txt"
    marker.write_text("x")
    plan = prun.describe_plan(load_pipeline(data=data), ["dapt"])
    assert "base[cached] -> dapt[rerun] -> ft[rerun]" in plan and "1 cached, 2 to run again" in plan
    assert marker.exists(), "a dry run removes nothing"

    summary = again(rerun=["dapt"])
    assert executed_names(summary) == ["dapt", "ft"]
    after = {n: done(f)["run_id"] for n, f in folders.items()}
    assert after["base"] == before["base"] and after["dapt"] != before["dapt"] and after["ft"] != before["ft"]
    assert not marker.exists(), "the old folder was removed before training again"
    assert not list(folders["dapt"].parent.glob("*.discarded"))

    assert executed_names(again(rerun=["all"])) == ["base", "dapt", "ft"]
    assert executed_names(again()) == []


def test_rerun_of_an_unknown_stage_is_refused_before_anything_is_removed(finished):
    folders, again, data = finished
    before = {n: done(f)["run_id"] for n, f in folders.items()}
    with pytest.raises(ConfigError, match=r"--rerun: no stage named 'dpat'.*base, dapt, ft"):
        again(rerun=["dapt,dpat"])
    with pytest.raises(ConfigError, match="dpat"):
        prun.describe_plan(load_pipeline(data=data), ["dpat"])
    assert {n: done(f)["run_id"] for n, f in folders.items()} == before


def test_stages_from_other_code_are_reused_and_reported(finished, monkeypatch, capsys):
    folders, again, data = finished
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "0123456789ab")
    capsys.readouterr()
    assert executed_names(again()) == []
    log = capsys.readouterr().out
    assert "3 reused stage(s) were computed by other lmadapt code than this (0123456789ab)" in log
    assert "3 cached stage(s) were computed by other lmadapt code" in prun.describe_plan(load_pipeline(data=data))


def test_the_cli_takes_rerun_names_repeated_or_comma_separated():
    import argparse

    args = prun.add_run_arguments(argparse.ArgumentParser()).parse_args(
        ["p.yaml", "--rerun", "dapt,ft", "--rerun", "base"]
    )
    assert args.rerun == ["dapt,ft", "base"]


def test_an_input_model_replaced_at_its_path_is_scored_again(finished, tmp_path):
    """An arm that starts from a model folder: its stages' hashes cover the folder's files, and so
    must its cached held-out perplexity (the report's "before" row)."""
    folders, _, data = finished
    model = tmp_path / "input_model"
    shutil.copytree(folders["base"], model, ignore=shutil.ignore_patterns("checkpoints", DONE_FILE))
    ws_sets = {"general": data["stages"]["base"]["recipe"]["data"]["sources"][0]["path"]}
    pipe = {
        **data,
        "output_dir": str(tmp_path / "run2"),
        "stages": {"ft": {"kind": "finetune", "recipe": {"model": {"path": str(model)}}}},
        "arms": {"ft_only": ["ft"]},
        "evaluation": {"lm_sets": ws_sets, "block_size": 32, "max_tokens": 400},
    }

    def input_perplexity():
        summary = prun.run_pipeline(load_pipeline(data=pipe), report=False)
        row = next(r for r in summary["rows"] if r["kind"] == "input")
        return row["lm"]["general"]["perplexity"], executed_names(summary)

    first, ran = input_perplexity()
    assert ran == ["ft"] and input_perplexity() == (first, [])
    shutil.copy(folders["dapt"] / "model.safetensors", model / "model.safetensors")  # other weights, same path
    second, ran = input_perplexity()
    assert ran == ["ft"] and second != pytest.approx(first, rel=1e-6)


def test_an_interrupted_stage_whose_parent_trains_again_starts_over(finished, monkeypatch):
    """dapt died after its checkpoints; base trains again: resuming dapt would continue training
    the old base's weights, so it starts from the new base instead."""
    folders, again, _ = finished
    (folders["dapt"] / DONE_FILE).unlink()
    assert list((folders["dapt"] / "checkpoints").glob("checkpoint-*")), "the toy dapt saves checkpoints"
    calls = []
    real = prun.STAGE_RUNNERS["pretrain"]

    def spy(recipe, folder):
        calls.append((folder.name.split("-")[1], recipe["train"].get("resume", False)))
        return real(recipe, folder)

    monkeypatch.setitem(prun.STAGE_RUNNERS, "pretrain", spy)
    assert executed_names(again(rerun=["base"])) == ["base", "dapt", "ft"]
    assert calls == [("base", False), ("dapt", False)]
    assert (
        done(folders["dapt"])["resumed"] is None
        and done(folders["dapt"])["parent_run"] == done(folders["base"])["run_id"]
    )


def test_an_interrupted_stage_of_the_same_parent_training_resumes(finished, monkeypatch):
    folders, again, _ = finished
    (folders["dapt"] / DONE_FILE).unlink()
    stage_file = json.loads((folders["dapt"] / cache.STAGE_FILE).read_text())
    assert stage_file["parent_run"] == done(folders["base"])["run_id"]
    assert executed_names(again()) == ["dapt", "ft"]
    assert done(folders["dapt"])["resumed"] == "checkpoint"


def test_folders_the_plan_no_longer_uses_are_listed_with_their_size_and_kept(finished, capsys):
    folders, again, data = finished
    data["stages"]["ft"]["recipe"] = {"train": {"epochs": 2}}  # a new ft: the old folder is left over
    plan = prun.describe_plan(load_pipeline(data=data))
    assert "dapt[cached] -> ft[run]" in plan
    assert f"1 stage folder(s) under {folders['ft'].parent} are not in this plan" in plan
    line = next(ln for ln in plan.splitlines() if folders["ft"].name in ln)
    assert line.split()[-1] in ("KB", "MB") and float(line.split()[-2]) > 0
    capsys.readouterr()
    assert executed_names(again()) == ["ft"]
    assert "are not in this plan" in capsys.readouterr().out
    assert done(folders["ft"])["run_id"], "the old folder is kept"
    assert len(list(folders["ft"].parent.iterdir())) == 4


def test_finished_stages_drop_their_checkpoints_unless_kept(template, tmp_path):
    ws, _ = template
    data = {**small_pipeline(ws, tmp_path / "run"), "keep_checkpoints": False}
    prun.run_pipeline(load_pipeline(data=data), report=False)
    dapt = next((tmp_path / "run" / "stages").glob("pretrain-dapt-*"))
    assert not (dapt / "checkpoints").exists() and (dapt / "model.safetensors").is_file()
    assert done(dapt)["checkpoints_deleted_mb"] > 0  # save_every: 2 wrote some
    assert prun.run_pipeline(load_pipeline(data=data), report=False)["executed"] == []

    _, kept = template  # its pipeline says keep_checkpoints: true
    dapt = next((kept / "stages").glob("pretrain-dapt-*"))
    assert list((dapt / "checkpoints").glob("checkpoint-*")) and "checkpoints_deleted_mb" not in done(dapt)
