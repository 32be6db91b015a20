"""Task metrics as pure functions of true and predicted values (scikit-learn underneath).

Every function returns a JSON-able dict: flat floats (what training logs and model selection use)
plus, where useful, tables (per-class precision/recall/F1, a confusion matrix). Undefined values
(e.g. Pearson r of a constant prediction) are ``None``, never NaN, so metrics.json stays valid JSON.

    m = classification_metrics(["a", "b"], ["a", "a"], labels=["a", "b"])
    print(format_metrics(m, title="dev"))
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _per_class(p, r, f, s, labels: Sequence[str]) -> dict:
    return {
        str(lab): {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }


def classification_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict:
    """Single-label: accuracy, macro/micro/weighted F1, per-class P/R/F1 and a confusion matrix.

    ``labels`` fixes the class order of the tables (classes absent from ``y_true`` still get a
    row, with support 0)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        return {"n": 0}
    kw = dict(labels=labels, zero_division=0)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, **kw)
    present = [lab for lab in labels if lab in set(y_true)]  # macro over classes that occur in the gold data
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", labels=labels, zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)),
        "per_class": _per_class(p, r, f, s, labels),
        "confusion_matrix": {
            "labels": [str(x) for x in labels],
            "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
    }


def multilabel_metrics(y_true, y_pred, labels: Sequence) -> dict:
    """Multi-label (``y_*`` are n x k 0/1 arrays): micro/macro F1, subset accuracy, Hamming loss, per class."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=int).reshape(-1, len(labels))
    y_pred = np.asarray(y_pred, dtype=int).reshape(-1, len(labels))
    if len(y_true) == 0:
        return {"n": 0}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    present = np.flatnonzero(y_true.sum(axis=0) > 0)
    macro = float(np.mean(f[present])) if len(present) else 0.0
    return {
        "n": int(len(y_true)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": macro,
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "per_class": _per_class(p, r, f, s, labels),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """MSE, RMSE, MAE, Pearson and Spearman correlation (None when undefined, e.g. constant input)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if len(t) == 0:
        return {"n": 0}
    mse = float(mean_squared_error(t, p))
    out = {
        "n": int(len(t)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(t, p)),
        "pearson": None,
        "spearman": None,
    }
    if len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0:
        out["pearson"] = _f(pearsonr(t, p)[0])
        out["spearman"] = _f(spearmanr(t, p)[0])
    return out


# Direction of every scalar metric a recipe may select as `train.metric`.
GREATER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "micro_f1": True,
    "weighted_f1": True,
    "subset_accuracy": True,
    "pearson": True,
    "spearman": True,
    "hamming_loss": False,
    "mse": False,
    "rmse": False,
    "mae": False,
    "loss": False,
}


def scalars(metrics: dict) -> dict[str, float]:
    """The flat numeric part of a metrics dict (what the Trainer logs during training)."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"
    }


def format_metrics(metrics: dict, title: str = "") -> str:
    """A plain-text report: the scalars, then per-class rows and the confusion matrix if present."""
    lines = [f"== {title} (n={metrics.get('n', '?')}) ==" if title else f"(n={metrics.get('n', '?')})"]
    sc = {
        k: v
        for k, v in metrics.items()
        if k != "n" and (isinstance(v, (int, float)) or v is None) and not isinstance(v, bool)
    }
    if sc:
        width = max(len(k) for k in sc)
        lines += [f"  {k:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for k, v in sc.items()]
    per = metrics.get("per_class")
    if per:
        w = max(5, max(len(str(k)) for k in per))
        lines.append(f"  {'class':<{w}}  {'prec':>6}  {'rec':>6}  {'f1':>6}  {'support':>7}")
        for lab, row in per.items():
            vals = ["   n/a" if row[k] is None else f"{row[k]:6.3f}" for k in ("precision", "recall", "f1")]
            lines.append(f"  {lab:<{w}}  {'  '.join(vals)}  {row['support']:>7}")
    cm = metrics.get("confusion_matrix")
    if cm and len(cm["labels"]) <= 30:
        labels = cm["labels"]
        w = max(4, max(len(x) for x in labels))
        cw = max(4, max(len(str(v)) for row in cm["matrix"] for v in row))
        lines.append("  confusion matrix (rows: true, columns: predicted; column i = class i above)")
        lines.append(f"  {'':<{w}}  " + " ".join(f"{i:>{cw}}" for i in range(len(labels))))
        for i, (lab, row) in enumerate(zip(labels, cm["matrix"])):
            lines.append(f"  {lab:<{w}}  " + " ".join(f"{v:>{cw}}" for v in row) + f"   ({i})")
    return "\n".join(lines)
