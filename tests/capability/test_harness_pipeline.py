"""Harness scores and instruction retention as pipeline evidence (results.jsonl, comparison, verdict,
report) and in `lmadapt evaluate`, on the toy pipeline with the bundled offline cloze task."""

import json
import sys
from pathlib import Path

import pytest

from lmadapt.cli import main
from lmadapt.config.base import ConfigError
from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.compare import comparison, load_run
from lmadapt.pipeline.verdict import sentence, verdicts

sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline"))
from toy_pipeline import make_workspace, pipeline_dict, write_jsonl  # noqa: E402

HARNESS = {"tasks": ["lmadapt_cloze"], "limit": 20, "batch_size": 16}


@pytest.fixture(scope="module")
def cap_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("cap_pipe"))
    instr = write_jsonl(ws["dir"] / "instr.jsonl", [{"prompt": f"Echo {w}", "response": w} for w in "abcdef"])
    out = ws["dir"] / "run"
    data = pipeline_dict(ws, out)
    data["seeds"] = [0]
    data["baseline"] = {"tfidf": False}
    # No fine-tuning: forgetting is about the language models (and keeps the test short).
    data["arms"] = {"base_only": ["base"], "dapt": ["base", "dapt"]}
    data["evaluation"].update(harness=HARNESS, instruction_retention={"data": instr, "limit": 6})
    prun.run_pipeline(load_pipeline(data=data))
    return ws, out, data


def test_harness_and_retention_scores_are_evidence_columns_and_verdict(cap_run):
    ws, out, _ = cap_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lm_rows = {r["stage"]: r for r in rows if r["kind"] == "pretrain"}
    assert set(lm_rows) == {"base", "dapt"}
    for r in lm_rows.values():  # before (base) and after (dapt) the continued pretraining
        h = r["harness"]["lmadapt_cloze"]
        assert h["n"] == 20 and 0 <= h["acc_norm"] <= 1 and h["primary"] == "acc_norm"
        assert r["instruction"]["n"] == 6 and r["instruction"]["response_loss"] > 0
        ev = json.loads((out / r["folder"] / "lm_evidence.json").read_text())
        assert ev["harness"]["lmadapt_cloze"]["acc_norm"] == h["acc_norm"]
    run = load_run(out)
    keys = [c.key for c in run.columns]
    assert "harness_lmadapt_cloze_acc_norm" in keys and "instruction_loss" in keys
    comp = comparison(run)
    cells = {r["arm"]: r["cells"] for r in comp["rows"]}
    assert (
        cells["dapt"]["harness_lmadapt_cloze_acc_norm"]["stat"].mean
        == lm_rows["dapt"]["harness"]["lmadapt_cloze"]["acc_norm"]
    )
    assert cells["base_only"]["instruction_loss"]["stat"].mean == lm_rows["base"]["instruction"]["response_loss"]
    (v,) = verdicts(run.rows, comp, run.columns)
    drop = 100 * (
        lm_rows["dapt"]["harness"]["lmadapt_cloze"]["acc_norm"]
        - lm_rows["base"]["harness"]["lmadapt_cloze"]["acc_norm"]
    )
    cap = next(c for c in v["capabilities"] if c["name"] == "lmadapt_cloze acc norm")
    se = [lm_rows[s]["harness"]["lmadapt_cloze"]["acc_norm_stderr"] for s in ("dapt", "base")]
    assert cap["within_sampling_error"] == (abs(cap["diff"]) <= 2 * (se[0] ** 2 + se[1] ** 2) ** 0.5)
    text = sentence(v)
    assert f"lmadapt_cloze acc norm {'+' if drop >= 0 else '−'}{abs(drop):.1f} points" in text, text
    assert "instruction loss ×" in text or "instruction loss ÷" in text
    report = (out / "report.md").read_text()
    assert "lmadapt_cloze acc norm ↑" in report and "points" in report and "instruction loss ↓" in report
    assert "lmadapt_cloze" in (out / "report.html").read_text()


def test_evidence_is_cached_and_rescored_when_the_harness_changes(cap_run, monkeypatch):
    ws, out, data = cap_run
    calls = []
    from lmadapt.stages import evaluate as ev_stage

    real = ev_stage.capability_scores
    # (evaluate_model calls it too, per held-out set, with no harness: those calls are not recorded)
    monkeypatch.setattr(
        ev_stage,
        "capability_scores",
        lambda *a, **k: (a[3] is None or calls.append(a[3])) and real(*a, **k) or real(*a, **k),
    )
    prun.run_pipeline(load_pipeline(data=data), report=False)
    assert calls == []  # same settings: the cached evidence is reused
    data = json.loads(json.dumps(data))
    data["evaluation"]["harness"]["limit"] = 8
    prun.run_pipeline(load_pipeline(data=data), report=False)
    assert [c.limit for c in calls] == [8, 8]  # base and dapt scored again
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["harness"]["lmadapt_cloze"]["n"] for r in rows if r["kind"] == "pretrain"} == {8}


def test_lmadapt_evaluate_prints_harness_scores(cap_run, capsys):
    ws, out, _ = cap_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    base = next(r for r in rows if r["stage"] == "base")
    n = base["harness"]["lmadapt_cloze"]["n"]  # the limit the last run scored with
    assert (
        main(
            [
                "evaluate",
                str(out / base["folder"]),
                "--data",
                ws["dval"],
                "--block-size",
                "32",
                "--harness-tasks",
                "lmadapt_cloze",
                "--harness-limit",
                str(n),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    printed, _ = json.JSONDecoder().raw_decode(text[text.index('{\n  "model"') :])
    assert set(printed["sets"]) == {"domain_valid"}
    # the same model, task and questions as the pipeline's evidence for this stage: the same score
    assert printed["harness"]["lmadapt_cloze"]["acc_norm"] == base["harness"]["lmadapt_cloze"]["acc_norm"]
    assert printed["harness"]["lmadapt_cloze"]["n"] == n


def test_bad_harness_settings_fail_with_the_key(cap_run, tmp_path, capsys, monkeypatch):
    ws, _, data = cap_run
    bad = json.loads(json.dumps(data))
    bad["evaluation"]["harness"]["include_path"] = [str(tmp_path / "nope")]
    with pytest.raises(ConfigError, match=r"evaluation\.harness: include_path\[0\]: folder not found"):
        load_pipeline(data=bad)
    # An unknown name makes lm-eval index its ~15,000 task YAMLs (~10 s); the error path is ours, so
    # the index here is the bundled tasks only.
    from lmadapt.train import harness

    real = harness._manager
    monkeypatch.setattr(harness, "_manager", lambda include, defaults: real(include, False))
    assert main(["evaluate", str(ws["tok"]), "--harness-tasks", "lmadapt_clozee"]) == 2  # before loading a model
    assert "'lmadapt_clozee' is not an lm-eval task" in capsys.readouterr().err
