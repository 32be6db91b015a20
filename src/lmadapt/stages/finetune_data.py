"""The fine-tuning stage's data: train/dev/test examples read by the task, dev/test split off train
when not given, records the training data cannot score checked (or skipped), the label budget's
subsample, and what was read and skipped (logged, and reported in metrics.json). Needs no model."""

from __future__ import annotations

from dataclasses import asdict

from ..runtime.dist import log
from ..tasks.base import DataError, Example, ReadReport, TaskRecipe
from ..tasks.labeled_io import stratified_split, stratified_subsample


def checked_split(
    task, examples: list[Example], space: dict, split: str, on_error: str, report: ReadReport
) -> list[Example]:
    """A dev/test record the training data cannot score (a label it never saw; a QA record the
    task cannot answer) is an error, or with ``data.on_error: skip`` is skipped and counted like any
    other bad record (the README's promise; it used to stop even then)."""
    if on_error != "skip":
        task.check_split(examples, space, split)
        return examples
    kept = []
    for ex in examples:
        try:
            task.check_split([ex], space, split)
        except DataError as exc:
            report.skip(ex.origin, str(exc).removeprefix(f"{ex.origin}: ").split(" (")[0])
            report.examples -= 1
            continue
        kept.append(ex)
    if not kept:
        raise DataError(f"data.{split}: every record was skipped ({report.skip_reasons})")
    return kept


def read_splits(task, cfg: TaskRecipe) -> tuple[dict[str, list[Example]], dict[str, ReadReport], dict]:
    """train/dev/test examples, a ReadReport per file, and the label space. Needs no model: ``cfg``
    is a FinetuneConfig or, for a reader without one (the TF-IDF baseline), a TaskSettings.

    Missing dev/test sets are split off train (stratified, ``data.split_seed``). The label space
    comes from all training examples, before the ``max_examples`` subsample, so every arm of a
    label-budget curve has the same head; dev/test labels unseen in train are an error (skipped and
    counted with ``data.on_error: skip``)."""
    d = cfg.data
    reports = {"train": ReadReport()}
    train = task.read(d.train, cfg, split="train", report=reports["train"])
    space = task.label_space(train, cfg)
    key = task.stratify_key(space) if hasattr(task, "stratify_key") else (lambda ex: None)
    splits: dict[str, list[Example]] = {}
    carve = {
        name: frac
        for name, frac in (("dev", d.dev_fraction), ("test", d.test_fraction))
        if getattr(d, name) is None and frac > 0
    }
    if carve:
        parts = stratified_split(train, key, list(carve.values()), seed=d.split_seed)
        train = parts[0]
        for (name, _), part in zip(carve.items(), parts[1:]):
            splits[name] = part
            reports[name] = ReadReport(examples=len(part))
        log(f"split off train ({d.train}): " + ", ".join(f"{n} {len(splits[n])}" for n in carve))
    for name in ("dev", "test"):
        path = getattr(d, name)
        if path is not None:
            reports[name] = ReadReport()
            splits[name] = task.read(path, cfg, split=name, report=reports[name])
    for name in ("dev", "test"):
        if name in splits:
            splits[name] = checked_split(task, splits[name], space, name, d.on_error, reports[name])
    if d.max_examples is not None and d.max_examples < len(train):
        seed = d.subset_seed if d.subset_seed is not None else cfg.train.seed
        before = len(train)
        train = stratified_subsample(train, d.max_examples, key, seed=seed)
        log(f"label budget: {len(train)} of {before} training examples (stratified, seed {seed})")
    splits["train"] = train
    return {k: splits[k] for k in ("train", "dev", "test") if k in splits}, reports, space


def report_dict(reports: dict[str, ReadReport]) -> dict:
    return {name: asdict(r) for name, r in reports.items()}


def log_splits(task, splits: dict[str, list[Example]], reports: dict[str, ReadReport], space: dict) -> None:
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    log(
        f"task {task.name}: train {len(train)}, dev {len(dev or [])}, test {len(test or [])} examples"
        + (f"; {len(space['labels'])} labels" if space.get("labels") else "")
    )
    for name, rep in reports.items():
        if rep.skipped:
            log(f"{name}: skipped {rep.skipped} bad records {rep.skip_reasons}; first: {rep.first_skips[:3]}")
