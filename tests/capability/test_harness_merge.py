"""merge.budget_metric on a capability: the rule (points for accuracies, relative for losses), the
sweep's choice with a scorer that is a known function of alpha, and one real lm-eval run per weight."""

import json
from pathlib import Path

import pytest
import torch

from helpers import CORPUS, base_and_adapted, tiny_bpe_tokenizer, tiny_llama
from lmadapt.config.base import ConfigError, load_recipe
from lmadapt.config.merge import MergeConfig
from lmadapt.stages import merge as merge_stage
from lmadapt.stages.merge import choose, refine, run_merge

ROLES = {"domain": "domain", "general": "general"}


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    pair = base_and_adapted(tmp_path_factory.mktemp("cap_merge"))
    d = pair["dir"]
    instr = _jsonl(d / "instr.jsonl", [{"prompt": f"Repeat: {t}", "response": t} for t in CORPUS[12:20]])
    return {**pair, "instr": instr}


def recipe(pair, out, merge: dict, **evaluation):
    data = {
        "model": {"path": str(pair["adapted"])},
        "merge": merge,
        "eval": {"sets": pair["sets"], "block_size": 32, **evaluation},
        "train": {"output_dir": str(out)},
    }
    return load_recipe(MergeConfig, data=data)


def _sweep(alphas, domain):
    return {a: {"domain": {"perplexity": domain(a)}, "general": {"perplexity": 10.0}} for a in alphas}


def _caps(alphas, acc):
    return {a: {"harness": {"t": {"acc": acc(a), "primary": "acc", "higher_is_better": {"acc": True}}}} for a in alphas}


def test_accuracy_budget_is_in_points_and_loss_budget_is_relative():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    sweep = _sweep(alphas, lambda a: 100 - 50 * a)  # the domain keeps improving with alpha
    caps = _caps(alphas, lambda a: 0.60 - 0.08 * a)  # the task loses 2 points per 0.25
    pick = lambda b: choose(sweep, ROLES, b, "harness:t/acc", caps)[0]  # noqa: E731
    assert pick(1.0) == 0.0 and pick(2.0) == 0.25 and pick(4.5) == 0.5 and pick(8.0) == 1.0
    assert (
        "t acc at most 2 points below the base's (0.600 → at least 0.580)"
        in choose(sweep, ROLES, 2.0, "harness:t/acc", caps)[1]
    )
    # a lower-is-better harness metric and the instruction loss are bounded relatively, like perplexity
    for a in alphas:
        caps[a]["instruction_retention"] = {"response_loss": 2.0 * (1 + 0.2 * a)}
    assert choose(sweep, ROLES, 0.10, "instruction_loss", caps)[0] == 0.5  # 0.75 is +15%
    # the metric's default budget: 1 point for accuracies, 5% for losses
    cfg = MergeConfig.__dataclass_fields__["merge"].default_factory()
    assert cfg.budget(higher_is_better=True) == 1.0 and cfg.budget(False) == 0.05
    with pytest.raises(ConfigError, match="no harness:t/acc_norm score at alpha 0.0 \\(scored: t/acc\\)"):
        choose(sweep, ROLES, 1.0, "harness:t/acc_norm", caps)


def test_refine_bisects_to_the_edge_of_an_accuracy_budget():
    """acc 0.6 - 0.2 a: a 3-point budget ends at a = 0.15; the grid picks 0; halvings score 0.125 (0.575,
    within), 0.1875 (0.5625, not) and 0.15625 (0.56875, not), so 0.125 is chosen."""
    acc = lambda a: 0.6 - 0.2 * a  # noqa: E731
    sweep, caps = _sweep([0.0, 0.25, 1.0], lambda a: 100 - 50 * a), _caps([0.0, 0.25, 1.0], acc)

    def score(a):
        caps.update(_caps([a], acc))
        return _sweep([a], lambda x: 100 - 50 * x)[a]

    assert choose(sweep, ROLES, 3.0, "harness:t/acc", caps)[0] == 0.0
    refine(score, sweep, ROLES, 3.0, 3, "harness:t/acc", caps)
    assert sorted(sweep) == [0.0, 0.125, 0.15625, 0.1875, 0.25, 1.0]
    assert choose(sweep, ROLES, 3.0, "harness:t/acc", caps)[0] == 0.125


def test_run_merge_chooses_the_alpha_a_known_harness_score_implies(pair, tmp_path, monkeypatch):
    """The stage scores the weights it interpolated (checked against the lerp of the two models) with
    known scores: domain perplexity 100 - 50 alpha (adapting helps), acc 0.7 - 0.1 alpha; a 4-point
    budget allows alpha <= 0.4: 0.25 on the grid, then refine halves toward 0.5 (0.375 ok, 0.4375 not)."""
    seen = []

    def fake_harness(model, tokenizer, cfg):
        w = model.model.embed_tokens.weight
        a = merge_alpha[0]
        seen.append(a)
        assert torch.allclose(
            w, weights[0].base["model.embed_tokens.weight"].lerp(weights[0].adapted["model.embed_tokens.weight"], a)
        )
        return {"lmadapt_cloze": {"acc": 0.7 - 0.1 * a, "primary": "acc", "n": 20, "higher_is_better": {"acc": True}}}

    merge_alpha, weights = [None], []
    real_set = merge_stage.Interpolator.set

    def spy_set(self, alpha):
        merge_alpha[0] = float(alpha)
        weights[:] = [self]
        return real_set(self, alpha)

    def fake_sets(model, sets, *args, **kwargs):
        return {"domain": {"perplexity": 100 - 50 * merge_alpha[0]}, "general": {"perplexity": 10.0}}

    monkeypatch.setattr(merge_stage, "run_harness", fake_harness)
    monkeypatch.setattr(merge_stage, "score_sets", fake_sets)
    monkeypatch.setattr(merge_stage.Interpolator, "set", spy_set)
    cfg = recipe(
        pair,
        tmp_path / "out",
        {
            "alphas": [0.25, 0.5, 0.75],
            "refine": 2,
            "forgetting_budget": 4,
            "budget_metric": "harness:lmadapt_cloze/acc",
        },
        harness={"tasks": ["lmadapt_cloze"], "limit": 20},
    )
    metrics = run_merge(cfg)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 0.375, 0.4375]
    assert metrics["alpha"] == 0.375 and metrics["selection"]["budget_metric"] == "harness:lmadapt_cloze/acc"
    assert metrics["capabilities"]["after"]["harness"]["lmadapt_cloze"]["acc"] == pytest.approx(0.6625)
    assert [r["harness"]["lmadapt_cloze"]["acc"] for r in metrics["sweep"]] == pytest.approx(
        [0.7, 0.675, 0.6625, 0.65625, 0.65, 0.625, 0.6]
    )


def test_budget_metric_needs_its_scores_configured(pair, tmp_path):
    with pytest.raises(ConfigError, match="needs eval.harness.tasks"):
        recipe(pair, tmp_path / "o", {"budget_metric": "harness:lmadapt_cloze/acc"}).validate()
    with pytest.raises(ConfigError, match="instruction_loss needs eval.instruction_retention.data"):
        recipe(pair, tmp_path / "o", {"budget_metric": "instruction_loss"}).validate()
    with pytest.raises(ConfigError, match="budget_metric: 'accuracy' is not"):
        recipe(pair, tmp_path / "o", {"budget_metric": "accuracy"})


def test_real_harness_and_instruction_scores_at_every_weight(pair, tmp_path):
    """One real lm-eval run per weight (bundled cloze task, 20 questions) and the instruction loss:
    the anchors score the base and the adapted model, the choice obeys the rule on those numbers."""
    cfg = recipe(
        pair,
        tmp_path / "out",
        {"alphas": [0.5], "refine": 0, "budget_metric": "instruction_loss", "forgetting_budget": 0.0},
        harness={"tasks": ["lmadapt_cloze"], "limit": 20},
        instruction_retention={"data": pair["instr"], "limit": 4},
    )
    metrics = run_merge(cfg)
    rows = {r["alpha"]: r for r in metrics["sweep"]}
    assert sorted(rows) == [0.0, 0.5, 1.0]
    for r in rows.values():
        h = r["harness"]["lmadapt_cloze"]
        assert h["n"] == 20 and 0 <= h["acc"] <= 1 and h["primary"] == "acc_norm"
        assert r["instruction_retention"]["n"] == 4 and r["instruction_retention"]["response_loss"] > 0
    loss = {a: r["instruction_retention"]["response_loss"] for a, r in rows.items()}
    ok = [a for a in rows if loss[a] <= loss[0.0]]
    want = min(ok, key=lambda a: (rows[a]["sets"]["domain"]["perplexity"], a))
    assert metrics["alpha"] == want
    assert "instruction response loss within +0% of the base's" in metrics["selection"]["rule"]


def test_report_shows_the_capability_scores_of_a_merge_sweep(tmp_path):
    """report.md / report.html of a run whose merge stage scored a harness task at every weight."""
    from lmadapt.pipeline.report import write_report

    sweep = [
        {
            "alpha": a,
            "sets": {"domain": {"perplexity": 100 - 50 * a}},
            "harness": {"lmadapt_cloze": {"acc_norm": 0.5 - 0.1 * a, "primary": "acc_norm"}},
            "instruction_retention": {"response_loss": 2 + a},
        }
        for a in (0.0, 0.5, 1.0)
    ]
    row = {
        "arm": "m",
        "seed": 0,
        "position": 1,
        "stage": "merge",
        "kind": "merge",
        "id": "merge-x",
        "folder": None,
        "status": "done",
        "executed": True,
        "perf": {},
        "merge": {"alpha": 0.5, "rule": "the rule", "sweep": sweep},
    }
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| alpha | domain ppl | lmadapt_cloze acc_norm | instruction loss |" in md
    assert "| **0.50** | 75.00 | 0.450 | 2.500 |" in md
    assert "<th>lmadapt_cloze acc_norm</th>" in (tmp_path / "report.html").read_text()


def test_run_harness_leaves_the_random_state_as_it_was():
    """lm-eval seeds python/numpy/torch; a pipeline goes on after the evidence, unaffected."""
    import random

    import numpy as np

    from lmadapt.config.capability import HarnessConfig
    from lmadapt.train.harness import run_harness

    tok = tiny_bpe_tokenizer()
    model = tiny_llama(len(tok))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    scores = run_harness(model, tok, HarnessConfig(tasks=["lmadapt_cloze"], limit=4))
    assert scores["lmadapt_cloze"]["n"] == 4
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
