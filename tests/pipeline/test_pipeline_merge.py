"""A merge stage inside `lmadapt run`: base -> dapt -> merge (toward base) -> ft, beside ft_only."""

import json

import pytest
import yaml

from lmadapt.config.base import ConfigError
from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.compare import arm_values, load_run
from lmadapt.pipeline.verdict import verdicts
from lmadapt.pipeline.compare import comparison
from toy_pipeline import make_workspace, pipeline_dict


def merge_pipeline(ws, out) -> dict:
    data = pipeline_dict(ws, out)
    data["seeds"] = [0]
    data["stages"]["merge"] = {
        "kind": "merge",
        "recipe": {
            "eval": {"sets": {"domain": ws["dval"], "general": ws["gval"]}, "block_size": 32},
            "merge": {"alphas": [0.5], "forgetting_budget": 0.02},
        },
    }
    data["arms"] = {"ft_only": ["base", "ft"], "dapt_merge_ft": ["base", "dapt", "merge", "ft"]}
    return data


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("pipe_merge"))
    out = ws["dir"] / "run"
    data = merge_pipeline(ws, out)
    prun.run_pipeline(load_pipeline(data=data))
    return ws, out, data


def test_merge_stage_hands_off_and_is_compared(merged_run):
    ws, out, data = merged_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_stage = {r["stage"]: r for r in rows if r["arm"] == "dapt_merge_ft"}
    merge, dapt, base, ft = by_stage["merge"], by_stage["dapt"], by_stage["base"], by_stage["ft"]
    # the merge starts from dapt, interpolates toward the model dapt started from, and ft starts from it
    assert merge["parent"] == dapt["folder"] and ft["parent"] == merge["folder"]
    meta = json.loads((out / merge["folder"] / "lmadapt_meta.json").read_text())
    assert meta["base"] == str(out.resolve() / base["folder"]) and meta["parent"] == str(out.resolve() / dapt["folder"])
    recipe = yaml.safe_load((out / ft["folder"] / "lmadapt_recipe.yaml").read_text())
    assert recipe["model"]["path"] == str(out.resolve() / merge["folder"])
    # its sweep and choice are in the row, and the LM evidence of the merged model is what the arm reports
    assert [s["alpha"] for s in merge["merge"]["sweep"]] == [0.0, 0.5, 1.0] and merge["merge"]["alpha"] in (
        0.0,
        0.5,
        1.0,
    )
    assert set(merge["lm"]) == {"domain", "general"}
    values = arm_values(load_run(out))
    assert values["dapt_merge_ft"]["domain_ppl"].mean == pytest.approx(merge["lm"]["domain"]["perplexity"])
    (v,) = verdicts(rows, comparison(load_run(out)), load_run(out).columns)
    assert v["arm"] == "dapt_merge_ft" and v["cost"]["extra_stages"] == ["dapt", "merge"]
    for name in ("report.md", "report.html"):
        text = (out / name).read_text()
        assert "Weight interpolation: merge" in text and "alpha" in text


def test_a_second_run_reuses_the_merge(merged_run, monkeypatch):
    ws, out, data = merged_run

    def boom(recipe, folder):
        raise AssertionError(f"stage re-executed: {folder}")

    for kind in ("pretrain", "finetune", "merge"):
        monkeypatch.setitem(prun.STAGE_RUNNERS, kind, boom)
    summary = prun.run_pipeline(load_pipeline(data=data), report=False)
    assert summary["executed"] == [] and len(summary["reused"]) == 5


def test_merge_recipe_is_validated_with_the_pipeline(merged_run, tmp_path):
    ws, _, _ = merged_run
    bad = merge_pipeline(ws, tmp_path / "r")
    bad["stages"]["merge"]["recipe"]["merge"]["alpha"] = 2
    with pytest.raises(ConfigError, match=r"arms\.dapt_merge_ft\[2\] \(merge, merge\).*alpha"):
        load_pipeline(data=bad)
    bad = merge_pipeline(ws, tmp_path / "r")
    bad["arms"] = {"a": ["base", "ft", "merge"]}
    with pytest.raises(ConfigError, match="cannot follow a finetune"):
        load_pipeline(data=bad)
