"""Pure metric functions."""

import json
import math

import numpy as np
import pytest

from lmadapt import metrics as M


def test_classification_metrics_tables():
    m = M.classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"], labels=["a", "b", "c"])
    assert m["n"] == 4 and m["accuracy"] == 0.5
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 1, 0], [0, 1, 0], [1, 0, 0]]}
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["micro_f1"] == pytest.approx(0.5)
    text = M.format_metrics(m, "dev")
    assert "macro_f1" in text and "confusion matrix" in text
    json.dumps(m)


def test_macro_f1_ignores_classes_absent_from_gold():
    m = M.classification_metrics(["a", "b"], ["a", "b"], labels=["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["per_class"]["c"]["support"] == 0


def test_multilabel_metrics():
    t = np.array([[1, 0, 1], [0, 1, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0]])
    m = M.multilabel_metrics(t, p, ["x", "y", "z"])
    assert m["subset_accuracy"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert m["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["hamming_loss"] == pytest.approx(1 / 6)


def test_regression_metrics_and_undefined_correlation():
    m = M.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["mse"] == pytest.approx(1 / 3) and m["mae"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3)) and m["pearson"] > 0.9
    flat = M.regression_metrics([1.0, 2.0], [0.5, 0.5])
    assert flat["pearson"] is None and flat["spearman"] is None
    json.dumps(flat, allow_nan=False)
    assert "pearson" not in M.scalars(flat) and M.scalars(m)["mse"] == pytest.approx(1 / 3)
