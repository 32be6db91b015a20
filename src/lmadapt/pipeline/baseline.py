"""A non-neural reference row: TF-IDF features + logistic regression (scikit-learn).

It reads exactly the examples the fine-tuning stage reads (same files, fields, dev/test split and
label budget, via ``stages.finetune.read_splits``), picks C from ``C`` by dev macro-F1 and reports
dev and test metrics like the fine-tuning stage does. Single-label classification only.

    result = tfidf_baseline(finetune_recipe_dict, Cs=[0.1, 1, 10], max_features=100000, min_df=1)
"""

from __future__ import annotations

import time

from .. import metrics as M


def baseline_key(recipe: dict) -> dict:
    """What the baseline's result depends on: the data section (and the seed when it picks a subsample)."""
    data = dict(recipe.get("data") or {})
    task = dict(recipe.get("task") or {})
    seed = (recipe.get("train") or {}).get("seed")
    subset_seed = data.get("subset_seed")
    return {
        "data": data,
        "task": task,
        "subset_seed": (subset_seed if subset_seed is not None else seed) if data.get("max_examples") else None,
    }


def applies(recipe: dict) -> bool:
    task = recipe.get("task") or {}
    return (
        task.get("type", "classification") == "classification" and task.get("problem", "single_label") == "single_label"
    )


def tfidf_baseline(
    recipe: dict, Cs: list[float] = (0.1, 1.0, 10.0), max_features: int | None = 100000, min_df: int = 1
) -> dict:
    """Fit TF-IDF + LogisticRegression on the recipe's training examples; dev/test metrics with the best C.

    The benchmarks call this too (with ``min_df=2, max_features=200_000``, the shared/data README's
    definition), so that every TF-IDF row in the project is one piece of code."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ..stages.finetune import read_splits
    from ..tasks import TASKS
    from ..tasks.base import TaskSettings

    t0 = time.time()
    # no validate() and no model: only the data and task sections decide the examples
    cfg = TaskSettings.of_recipe(recipe)
    task = TASKS["classification"]
    splits, _, space = read_splits(task, cfg)
    labels = list(space["labels"])

    def texts(examples):
        if cfg.data.text_pair_field:
            return [ex.fields["text"] + " \n " + ex.fields.get("text_pair", "") for ex in examples]
        return [ex.fields["text"] for ex in examples]

    def gold(examples):
        return [ex.fields["label"] for ex in examples]

    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=int(min_df), max_features=max_features)
    x_train = vec.fit_transform(texts(train))
    y_train = gold(train)
    tried = []
    best = None
    for C in Cs:
        clf = LogisticRegression(C=float(C), max_iter=3000)
        clf.fit(x_train, y_train)
        dev_m = M.classification_metrics(gold(dev), clf.predict(vec.transform(texts(dev))), labels) if dev else None
        score = dev_m["macro_f1"] if dev_m else None
        tried.append({"C": float(C), "dev_macro_f1": score})
        if best is None or (score is not None and score > best[0]):
            best = (score if score is not None else float("-inf"), float(C), clf, dev_m)
        if not dev:
            break  # nothing to select on: the first C it is
    _, C, clf, dev_m = best
    result = {
        "kind": "tfidf_logreg",
        "C": C,
        "tried": tried,
        "labels": labels,
        "examples": {k: len(v) for k, v in splits.items()},
        "features": len(vec.vocabulary_),
        "min_df": int(min_df),
        "max_features": max_features,
    }
    if dev_m:
        result["dev"] = dev_m
    if test:
        result["test"] = M.classification_metrics(gold(test), clf.predict(vec.transform(texts(test))), labels)
    result["seconds"] = round(time.time() - t0, 2)
    return result
