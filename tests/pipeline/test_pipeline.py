"""`lmadapt run` end to end on a miniature pipeline: two arms x two seeds, stage cache, resume, report.

The model is a scratch Llama (hidden 32, 2 layers) on the tiny test tokenizer; every stage runs a
few steps, so the whole module takes well under a minute on CPU.
"""

import json
from pathlib import Path

import pytest

from lmadapt.config.base import ConfigError
from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.cache import DONE_FILE, input_fingerprints, stage_key
from lmadapt.pipeline.compare import arm_values, comparison, load_run
from lmadapt.pipeline.report import summary_table, write_report
from lmadapt.pipeline.verdict import verdicts
from toy_pipeline import make_workspace, pipeline_dict


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("pipe"))


def done_mtimes(out: Path) -> dict:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "stages").glob(f"*/{DONE_FILE}")}


@pytest.fixture(scope="module")
def first_run(workspace):
    out = workspace["dir"] / "run"
    cfg = load_pipeline(data=pipeline_dict(workspace, out))
    summary = prun.run_pipeline(cfg)
    return cfg, out, summary


def test_pipeline_runs_end_to_end_sharing_stages(first_run):
    cfg, out, summary = first_run
    folders = sorted(p.name for p in (out / "stages").iterdir())
    # base once, dapt once, ft per (parent, seed): 2 x 2
    assert [f.split("-")[0] for f in folders].count("pretrain") == 2, folders
    assert [f.split("-")[0] for f in folders].count("finetune") == 4, folders
    assert [f.split("-")[0] for f in folders].count("evaluate") == 1, folders
    assert len(summary["executed"]) == 7 and len(set(summary["executed"])) == 7
    assert all((out / "stages" / f / DONE_FILE).is_file() for f in folders)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    stage_rows = [r for r in rows if r["kind"] in ("pretrain", "finetune")]
    assert {(r["arm"], r["seed"], r["stage"]) for r in stage_rows} == {
        (a, s, st)
        for s in (0, 1)
        for a, sts in (("ft_only", ["base", "ft"]), ("dapt_ft", ["base", "dapt", "ft"]))
        for st in sts
    }
    base_rows = [r for r in stage_rows if r["stage"] == "base"]
    assert len({r["id"] for r in base_rows}) == 1, "the base model is trained once and shared"
    for r in stage_rows:
        assert r["perf"]["wall_seconds"] > 0 and r["perf"]["peak_rss_mb"] > 0
        if r["kind"] == "pretrain":
            assert set(r["lm"]) == {"domain", "general"} and r["lm"]["domain"]["perplexity"] > 1
            assert r["perf"]["tokens_per_second"] > 0
        else:
            assert "lm" not in r
            assert 0 <= r["task"]["test"]["accuracy"] <= 1 and "macro_f1" in r["task"]["dev"]
            assert r["perf"]["tokens_seen"] > 0
    ft = [r for r in stage_rows if r["kind"] == "finetune"]
    assert len({r["id"] for r in ft if r["arm"] == "ft_only"}) == 2  # one per seed
    ev = [r for r in rows if r["kind"] == "evaluate"]
    assert len(ev) == 2 and ev[0]["id"] == ev[1]["id"] and ev[0]["stage"] == "dapt_ft-3"
    assert ev[0]["lm"]["domain"]["perplexity"] > 1 and ev[0]["parent"] == next(
        r["folder"] for r in stage_rows if r["stage"] == "dapt"
    )
    assert all(r["parent"] == ev[0]["parent"] for r in ft if r["arm"] == "dapt_ft"), "evaluate passes its model on"
    # hand-off: dapt starts from base, ft of dapt_ft from dapt
    dapt = next(r for r in stage_rows if r["stage"] == "dapt")
    assert dapt["parent"] == base_rows[0]["folder"]
    recipe = json.loads(
        json.dumps(__import__("yaml").safe_load((out / dapt["folder"] / "lmadapt_recipe.yaml").read_text()))
    )
    assert recipe["model"]["path"] == str(out.resolve() / base_rows[0]["folder"])
    assert recipe["model"]["init"] == "pretrained" and not recipe["model"]["dims"] and not recipe["model"]["arch"]
    seeds = {
        r["seed"]: __import__("yaml").safe_load((out / r["folder"] / "lmadapt_recipe.yaml").read_text())["train"][
            "seed"
        ]
        for r in ft
        if r["arm"] == "dapt_ft"
    }
    assert seeds == {0: 0, 1: 1}
    baseline = [r for r in rows if r["kind"] == "baseline"]
    assert baseline and 0 <= baseline[0]["task"]["test"]["accuracy"] <= 1
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "done"


def test_report_has_every_arm_and_metric(first_run):
    cfg, out, _ = first_run
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in (md, page):
        for arm in ("ft_only", "dapt_ft", "tfidf_baseline"):
            assert arm in text
        for metric in ("test accuracy", "test macro-F1", "dev macro-F1", "domain ppl", "general ppl"):
            assert metric in text
        assert "beyond noise" in text and "pooled" in text
    assert page.count("<svg") >= 4 and "<link" not in page and 'src="http' not in page
    assert "Token accounting" in page and "Per-class test F1" in page and "Cost per stage" in page
    # rebuilt from the run folder alone
    (out / "report.md").unlink()
    write_report(out)
    assert (out / "report.md").read_text().startswith("# lmadapt run report")
    table = summary_table(out)
    assert "ft_only" in table and "dapt_ft" in table
    run = load_run(out)
    assert run.reference == "ft_only"


def test_verdict_answers_did_it_pay_off_and_what_it_cost(first_run):
    cfg, out, _ = first_run
    run = load_run(out)
    comp = comparison(run)
    (v,) = verdicts(run.rows, comp, run.columns)
    assert v["arm"] == "dapt_ft" and v["reference"] == "ft_only" and v["metric"].startswith("test macro-F1")
    # the task effect is the comparison's test macro-F1 difference and verdict, restated
    cell = next(r for r in comp["rows"] if r["arm"] == "dapt_ft")["cells"]["test_macro_f1"]["cmp"]
    assert v["diff"] == cell["diff"]
    want = {"within noise": "no measurable effect"}.get(cell["verdict"]) or ("helped" if cell["diff"] > 0 else "hurt")
    assert v["effect"] == want
    # perplexity factors: dapt's evidence over base's, read from the stage folders
    ev = {
        p.parent.name.split("-")[1]: json.loads(p.read_text())["sets"]
        for p in (out / "stages").glob("pretrain-*/lm_evidence.json")
    }
    for role in ("domain", "general"):
        assert v[f"{role}_factor"] == pytest.approx(ev["dapt"][role]["perplexity"] / ev["base"][role]["perplexity"])
    # cost: dapt_ft's own stages (dapt, its evaluate, its two fine-tunes) minus ft_only's two fine-tunes
    done = {p.parent.name: json.loads(p.read_text()) for p in (out / "stages").glob(f"*/{DONE_FILE}")}
    ids = {
        arm: {r["id"] for r in run.rows if r["arm"] == arm and r["kind"] in ("pretrain", "finetune", "evaluate")}
        for arm in ("dapt_ft", "ft_only")
    }
    wall = sum(done[i]["wall_seconds"] for i in ids["dapt_ft"] - ids["ft_only"]) - sum(
        done[i]["wall_seconds"] for i in ids["ft_only"] - ids["dapt_ft"]
    )
    assert v["cost"]["wall_seconds"] == pytest.approx(wall)
    assert v["cost"]["extra_stages"] == ["dapt", "dapt_ft-3"]
    dapt_tokens = json.loads(next((out / "stages").glob("pretrain-dapt-*/metrics.json")).read_text())["train"][
        "tokens_seen"
    ]
    assert v["cost"]["pretrain_tokens"] == dapt_tokens > 0
    md, page, table = (out / "report.md").read_text(), (out / "report.html").read_text(), summary_table(out)
    for text in (md, page):
        assert "did it pay off, and at what cost?" in text and v["effect"] in text
    assert (
        f"dapt_ft vs ft_only: test macro-F1 {'+' if v['diff'] >= 0 else '−'}{abs(v['diff']):.3f}, {v['effect']}"
        in table
    )


def test_task_columns_follow_the_selected_metric(first_run, tmp_path):
    """An extraction-style run selects on F1, a generation-style run on loss (lower is better)."""
    cfg, out, _ = first_run
    run = load_run(out)
    assert [c.key for c in run.columns] == [
        "test_accuracy",
        "test_macro_f1",
        "dev_macro_f1",
        "domain_ppl",
        "general_ppl",
        "domain_wppl",
        "general_wppl",
    ]
    for metric, greater, label in (("f1", True, "test F1 ↑"), ("loss", False, "test loss ↓")):
        rows = [
            dict(r, task={**r["task"], "metric": metric, "test": {metric: 0.5 + 0.1 * r["seed"]}, "dev": {metric: 0.4}})
            if r["kind"] == "finetune"
            else r
            for r in run.rows
            if r["kind"] != "baseline"
        ]
        folder = tmp_path / metric
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in ("pipeline.yaml", "run_state.json"):
            (folder / name).write_text((out / name).read_text())
        for r in rows:
            if r["kind"] == "finetune":  # the stage's own metrics.json says which way is better
                m = folder / r["folder"] / "metrics.json"
                m.parent.mkdir(parents=True, exist_ok=True)
                m.write_text(json.dumps({"selection": {"metric": metric, "greater_is_better": greater}}))
        other = load_run(folder)
        assert [(c.key, c.label, c.better) for c in other.columns[:2]] == [
            (f"test_{metric}", label, "higher" if greater else "lower"),
            (f"dev_{metric}", label.replace("test", "dev"), "higher" if greater else "lower"),
        ]
        values = arm_values(other)
        assert values["ft_only"][f"test_{metric}"].mean == pytest.approx(0.55)


def test_second_run_reuses_every_stage(first_run, monkeypatch):
    cfg, out, _ = first_run
    before = done_mtimes(out)

    def boom(recipe, folder):
        raise AssertionError(f"stage re-executed: {folder}")

    for kind in ("pretrain", "finetune", "evaluate"):
        monkeypatch.setitem(prun.STAGE_RUNNERS, kind, boom)
    summary = prun.run_pipeline(load_pipeline(data=pipeline_dict_for(out, cfg)), report=False)
    assert summary["executed"] == []
    assert len(summary["reused"]) == 7
    assert done_mtimes(out) == before


def pipeline_dict_for(out, cfg):
    from lmadapt.config.base import to_dict

    data = to_dict(cfg)
    data.pop("vars", None)
    return data


def test_interrupted_stage_resumes(first_run, monkeypatch):
    cfg, out, _ = first_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    victim = next(r for r in rows if r["arm"] == "dapt_ft" and r["seed"] == 1 and r["kind"] == "finetune")
    (out / victim["folder"] / DONE_FILE).unlink()  # as if the process died before DONE
    dapt = next(r for r in rows if r["stage"] == "dapt")
    (out / dapt["folder"] / DONE_FILE).unlink()  # died after its last checkpoint (save_every: 2)
    before = done_mtimes(out)
    real = prun.STAGE_RUNNERS["finetune"]
    real_pretrain = prun.STAGE_RUNNERS["pretrain"]

    calls = []

    def spy(runner):
        def wrapped(recipe, folder):
            calls.append((folder.name, recipe["train"].get("resume", False)))
            return runner(recipe, folder)

        return wrapped

    def crash(recipe, folder):
        raise KeyboardInterrupt

    # dapt runs again, so what starts from it is out of date: its evaluate stage and the other seed's
    # fine-tune, which is the first fine-tune to run (and crash) below
    after_dapt = {r["id"] for r in rows if r["arm"] == "dapt_ft" and r["stage"] not in ("base", "dapt")}
    other = next(r["id"] for r in rows if r["arm"] == "dapt_ft" and r["seed"] == 0 and r["kind"] == "finetune")
    monkeypatch.setitem(prun.STAGE_RUNNERS, "finetune", crash)
    monkeypatch.setitem(prun.STAGE_RUNNERS, "pretrain", spy(real_pretrain))
    with pytest.raises(KeyboardInterrupt):
        prun.run_pipeline(load_pipeline(data=pipeline_dict_for(out, cfg)), report=False)
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "interrupted" and state["stages"][other]["status"] == "interrupted"
    # the pretrain stage continued from its last checkpoint (it ran before the crash)
    assert calls == [(dapt["id"], True)]
    assert json.loads((out / dapt["folder"] / DONE_FILE).read_text())["resumed"] == "checkpoint"

    calls.clear()
    monkeypatch.setitem(prun.STAGE_RUNNERS, "finetune", spy(real))
    summary = prun.run_pipeline(load_pipeline(data=pipeline_dict_for(out, cfg)), report=False)
    # the crashed fine-tunes (no checkpoint) start over; nothing else runs
    assert calls == [(other, False), (victim["id"], False)] and summary["executed"] == [other, victim["id"]]
    after = done_mtimes(out)
    assert {k for k in after if after[k] != before.get(k)} == after_dapt | {dapt["id"]}
    assert len(after_dapt) == 3 and victim["id"] in after_dapt


def test_stage_hash_tracks_inputs(workspace, tmp_path):
    recipe = {"data": {"sources": [{"path": workspace["general"]}]}, "train": {"output_dir": "x", "seed": 1}}
    k1 = stage_key("pretrain", recipe, parent_hash=None, parent_model=None)
    k2 = stage_key(
        "pretrain", {**recipe, "train": {"output_dir": "elsewhere", "seed": 1}}, parent_hash=None, parent_model=None
    )
    assert k1 == k2, "output_dir does not change what a stage computes"
    assert (
        stage_key("pretrain", {**recipe, "train": {"seed": 2}}, parent_hash=None, parent_model=None)["recipe"]
        != k1["recipe"]
    )
    copy = tmp_path / "g.jsonl"
    copy.write_text(Path(workspace["general"]).read_text() + '{"text": "one more"}\n')
    fp1 = input_fingerprints(recipe)
    fp2 = input_fingerprints({"data": {"sources": [{"path": str(copy)}]}})
    assert fp1["data.sources[0].path"][0][2] != fp2["data.sources[0].path"][0][2]


def test_schema_fails_loudly(workspace, tmp_path):
    base = pipeline_dict(workspace, tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown key 'armz'"):
        load_pipeline(data={**base, "armz": {}})
    with pytest.raises(ConfigError, match="no stage named 'fine'"):
        load_pipeline(data={**base, "arms": {"a": ["base", "fine"]}})
    bad = json.loads(json.dumps(base))
    bad["stages"]["dapt"]["recipe"]["data"]["sources"][0]["path"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"arms\.dapt_ft\[1\] \(dapt, pretrain\).*file not found"):
        load_pipeline(data=bad)
    bad = json.loads(json.dumps(base))
    bad["defaults"]["finetune"]["train"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_pipeline(data=bad)
    bad = json.loads(json.dumps(base))
    bad["defaults"]["finetune"]["data"]["train"] = "${nowhere}/train.jsonl"
    with pytest.raises(ConfigError, match=r"undefined variable \$\{nowhere\}"):
        load_pipeline(data=bad)
    with pytest.raises(ConfigError, match="cannot follow a finetune"):
        load_pipeline(data={**base, "arms": {"a": ["base", "ft", "dapt"]}})
    inline = {**base, "arms": {"x": ["base", {"kind": "finetune", "recipe": {"train": {"epochs": 2}}}]}}
    cfg = load_pipeline(data=inline)
    assert cfg.stage_of("x", 1)[0] == "x-2"
    assert "ft_only" not in prun.describe_plan(cfg) and "x-2[run]" in prun.describe_plan(cfg)


def test_a_stage_started_over_keeps_its_packed_blocks(tmp_path):
    """Interrupted without a checkpoint, a stage starts over in an emptied folder, but its packed
    blocks stay (their names key their content), so the new start does not pack again."""
    from lmadapt.pipeline import cache
    from lmadapt.pipeline.execute import clear_for_restart
    from lmadapt.stages.pretrain_data import BLOCKS_DIR

    folder = tmp_path / "stage"
    (folder / BLOCKS_DIR).mkdir(parents=True)
    (folder / BLOCKS_DIR / "train-abc.arrow").write_text("blocks")
    (folder / cache.STAGE_FILE).write_text("{}")
    (folder / "checkpoint-2").mkdir()
    (folder / "logs.jsonl").write_text("")
    clear_for_restart(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([BLOCKS_DIR, cache.STAGE_FILE])
    assert (folder / BLOCKS_DIR / "train-abc.arrow").read_text() == "blocks"
