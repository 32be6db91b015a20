"""The TF-IDF + logistic regression reference row (lmadapt/pipeline/baseline.py).

No model is involved: these check the vectorizer settings reach scikit-learn, that C is chosen on
dev, and that the pipeline's ``baseline`` section validates and is stated in the report.
"""

import re

import pytest
from toy_pipeline import toy_rows, write_jsonl

from lmadapt.config.base import ConfigError, from_dict
from lmadapt.config.pipeline import BaselineConfig
from lmadapt.pipeline.baseline import tfidf_baseline
from lmadapt.pipeline.compare import Run
from lmadapt.pipeline.report import baseline_note


def recipe(tmp_path, n_train=40):
    # one distinct word per training text (w0, w1, ...) besides the shared filler: those n-grams
    # occur once, so min_df=2 must drop them
    rows = [dict(r, text=f"{r['text']} w{i}x") for i, r in enumerate(toy_rows(n_train, 0))]
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", rows),
        "dev": write_jsonl(tmp_path / "dev.jsonl", toy_rows(20, 1)),
        "test": write_jsonl(tmp_path / "test.jsonl", toy_rows(20, 2)),
    }
    return {"data": files, "task": {"type": "classification"}}, rows


def ngrams_in_at_least(texts, k):
    """Word 1-2-grams (scikit-learn's default token pattern, lowercased) found in >= k texts."""
    seen = {}
    for t in texts:
        words = re.findall(r"(?u)\b\w\w+\b", t.lower())
        for g in set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}:
            seen[g] = seen.get(g, 0) + 1
    return sum(1 for c in seen.values() if c >= k)


def test_min_df_and_feature_cap_reach_the_vectorizer(tmp_path):
    rec, rows = recipe(tmp_path)
    texts = [r["text"] for r in rows]
    one = tfidf_baseline(rec, Cs=[1.0], max_features=None, min_df=1)
    two = tfidf_baseline(rec, Cs=[1.0], max_features=None, min_df=2)
    assert one["features"] == ngrams_in_at_least(texts, 1)
    assert two["features"] == ngrams_in_at_least(texts, 2) < one["features"]
    assert (one["min_df"], two["min_df"]) == (1, 2)
    capped = tfidf_baseline(rec, Cs=[1.0], max_features=7, min_df=1)
    assert capped["features"] == 7 and capped["max_features"] == 7


def test_c_is_chosen_by_dev_macro_f1(tmp_path):
    rec, _ = recipe(tmp_path)
    res = tfidf_baseline(rec, Cs=[0.001, 1.0, 100.0])
    best = max(res["tried"], key=lambda t: t["dev_macro_f1"])
    assert [t["C"] for t in res["tried"]] == [0.001, 1.0, 100.0]
    assert res["C"] == best["C"] and res["dev"]["macro_f1"] == best["dev_macro_f1"]
    assert res["examples"] == {"train": 40, "dev": 20, "test": 20}
    # the keyword decides the label, so the chosen model must have found it
    assert res["test"]["accuracy"] > 0.9


def test_baseline_section_validates_and_is_reported():
    with pytest.raises(ConfigError, match="min_df"):
        BaselineConfig(tfidf=True, min_df=0)
    with pytest.raises(ConfigError, match="min_dff"):
        from_dict(BaselineConfig, {"tfidf": True, "min_dff": 2})
    run = Run(
        folder=None,
        rows=[],
        state={},
        pipeline={"baseline": {"tfidf": True, "min_df": 2, "max_features": 200000}},
        arms=[],
        reference="",
        noise_factor=2.0,
        roles={},
    )
    assert "min_df 2, at most 200,000 features" in baseline_note(run)
    run.pipeline = {}
    assert f"min_df {BaselineConfig().min_df}, at most {BaselineConfig().max_features:,} features" in baseline_note(run)
