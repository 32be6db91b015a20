"""Classification: a label (single_label), a set of labels (multi_label) or a number (regression)
for a text or a text pair. The reference implementation of the :class:`~lmadapt.tasks.base.Task` contract.

Records (JSONL/CSV/TSV/parquet) carry ``data.text_field`` (+ optional ``data.text_pair_field``)
and ``data.label_field``. Labels are read as strings (``1`` and ``"1"`` are the same class);
multi-label labels are a list, or a string split on ``data.label_separator``; regression labels
are numbers.

The model is ``AutoModelForSequenceClassification`` on the base folder with a fresh head:
encoders classify from their [CLS] representation, decoders (Llama, GPT-2) from the last real
token — transformers finds it as the rightmost token that is not ``config.pad_token_id``, so the
stage sets the pad token before training (the tokenizer's pad, else its EOS: a decoder tokenizer
usually has none, and EOS is never part of our inputs). The label space (label2id/id2label,
problem_type) is stored in the model config, so the output folder is self-describing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import numpy as np
import torch

from .. import metrics as M
from ..config.finetune import PROBLEM_METRICS, FinetuneConfig
from ..runtime.dist import log, map_split
from .base import DataError, Example, ReadReport, TaskRecipe, eval_batch_size
from .classification_batches import PaddingCollator, WeightedLoss
from .labeled_io import read_records
from .labels import label_variants, natural_key, parse_label, variant_key
from .model_setup import model_kwargs, pad_id_of

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


class ClassificationTask:
    name = "classification"
    peft_task_type = "SEQ_CLS"

    # reading -----------------------------------------------------------------------------------
    def text_fields(self, cfg: TaskRecipe) -> list[str]:
        d = cfg.data
        return [d.text_field] + ([d.text_pair_field] if d.text_pair_field else [])

    def read(self, path: str, cfg: TaskRecipe, *, split: str, report: ReadReport) -> list[Example]:
        d, problem = cfg.data, cfg.task.problem
        texts = self.text_fields(cfg)
        rows = read_records(
            path,
            fields_required=texts + [d.label_field],
            text_fields=texts,
            on_error=d.on_error,
            report=report,
            format=d.format,
        )
        out = []
        for ex in rows:
            label, err = parse_label(ex.fields[d.label_field], problem, d.label_separator)
            if err:
                if d.on_error == "raise":
                    raise DataError(f"{ex.origin}: field '{d.label_field}' {err}")
                report.skip(ex.origin, f"field '{d.label_field}' invalid")
                report.examples -= 1
                continue
            fields = {"text": ex.fields[d.text_field], "label": label}
            if d.text_pair_field:
                fields["text_pair"] = ex.fields[d.text_pair_field]
            out.append(Example(fields=fields, origin=ex.origin))
        if not out:
            raise DataError(f"{path}: no usable records ({report.skipped} skipped: {report.skip_reasons})")
        return out

    def stratify_key(self, space: dict | None) -> Callable[[Example], Any]:
        """Label used to stratify splits and subsamples: the label; a multi-label example's rarest
        label; for regression the quintile of the value (with ``space``; else one group)."""
        problem = (space or {}).get("problem")

        def key(ex: Example):
            lab = ex.fields["label"]
            if isinstance(lab, list):
                counts = (space or {}).get("counts", {})
                return min(lab, key=lambda x: (counts.get(x, 0), x)) if lab else ""
            if isinstance(lab, float) or problem == "regression":
                edges = (space or {}).get("quantiles")
                return int(np.searchsorted(edges, lab)) if edges else 0
            return lab

        return key

    # labels --------------------------------------------------------------------------------------
    def label_space(self, train: list[Example], cfg: TaskRecipe) -> dict:
        problem = cfg.task.problem
        space: dict[str, Any] = {
            "problem": problem,
            "problem_type": PROBLEM_TYPES[problem],
            "label_field": cfg.data.label_field,
        }
        if problem == "regression":
            values = np.array([ex.fields["label"] for ex in train], dtype=float)
            space.update(
                labels=["value"],
                label2id={"value": 0},
                id2label={0: "value"},
                quantiles=np.quantile(values, [0.2, 0.4, 0.6, 0.8]).tolist(),
                mean=float(values.mean()),
                std=float(values.std()),
            )
            return space
        counts: Counter = Counter()
        for ex in train:
            lab = ex.fields["label"]
            counts.update(lab if isinstance(lab, list) else [lab])
        labels = sorted(counts, key=natural_key)
        if problem == "single_label" and len(labels) < 2:
            raise DataError(f"training data has only one label ({labels}); a classifier needs at least two")
        if not labels:
            raise DataError("training data has no labels at all")
        for group in label_variants(counts):
            log(
                "warning: labels that differ only by case or number format are separate classes: "
                + ", ".join(f"{lab!r} ({n} examples)" for lab, n in group)
                + "; if they mean one class, write them one way in the data"
            )
        space.update(
            labels=labels,
            label2id={lab: i for i, lab in enumerate(labels)},
            id2label=dict(enumerate(labels)),
            counts=dict(counts),
        )
        return space

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        if space["problem"] == "regression":
            return
        known = space["label2id"]
        for ex in examples:
            lab = ex.fields["label"]
            for x in lab if isinstance(lab, list) else [lab]:
                if x not in known:
                    shown = ", ".join(space["labels"][:20]) + (", ..." if len(known) > 20 else "")
                    near = [k for k in known if variant_key(k) == variant_key(x)]
                    hint = f"; differs only by case or number format from {near[0]!r}" if near else ""
                    raise DataError(
                        f"{ex.origin}: field '{space['label_field']}': label {x!r} in the {split} set never "
                        f"occurs in the training data (train labels: {shown}{hint})"
                    )

    def class_weights(self, train: list[Example], space: dict) -> torch.Tensor:
        """'balanced' weights n / (k * count_c) over the classes present in ``train`` (single label),
        or BCE pos_weight neg/pos (multi label); a class absent from ``train`` gets weight 0 / 1."""
        seen: Counter = Counter()
        for ex in train:
            lab = ex.fields["label"]
            seen.update(lab if isinstance(lab, list) else [lab])
        counts = np.array([seen.get(lab, 0) for lab in space["labels"]], dtype=float)
        if space["problem"] == "multi_label":
            n = len(train)
            return torch.tensor(np.where(counts > 0, (n - counts) / np.maximum(counts, 1), 1.0), dtype=torch.float32)
        w = np.where(counts > 0, counts.sum() / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(w, dtype=torch.float32)

    def sample_weights(self, train: list[Example], space: dict) -> list[float]:
        """Per-example weights that make every class equally likely (multi label: by its rarest label)."""
        key = self.stratify_key(space)
        counts = Counter(key(ex) for ex in train)
        return [1.0 / counts[key(ex)] for ex in train]

    # model ---------------------------------------------------------------------------------------
    def load_model(self, base_dir: str, space: dict, cfg: FinetuneConfig):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(space["labels"]),
            id2label=dict(space["id2label"]),
            label2id=dict(space["label2id"]),
            problem_type=space["problem_type"],
            **model_kwargs(cfg),
        )
        model.config.use_cache = False  # no generation; a cache in the outputs would confuse the Trainer
        return model

    # encoding ------------------------------------------------------------------------------------
    def _tokenize(self, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int | None):
        kw: dict = dict(truncation=max_length is not None)
        if max_length is not None:
            kw["max_length"] = max_length
        return tokenizer(texts, pairs, **kw) if pairs is not None else tokenizer(texts, **kw)

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg: TaskRecipe, report: ReadReport):
        import datasets

        max_len, allow = cfg.max_length, cfg.data.allow_truncation
        texts = [ex.fields["text"] for ex in examples]
        pairs = [ex.fields["text_pair"] for ex in examples] if cfg.data.text_pair_field else None
        enc = dict(self._tokenize(tokenizer, texts, pairs, None))
        too_long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_len]
        if too_long and not allow:
            first = too_long[0]
            raise DataError(
                f"{examples[first].origin}: {len(enc['input_ids'][first])} tokens, more than model.max_length={max_len} "
                f"({len(too_long)} of {len(examples)} examples are); raise model.max_length or set "
                f"data.allow_truncation: true to cut them"
            )
        if too_long:
            cut = self._tokenize(
                tokenizer,
                [texts[i] for i in too_long],
                [pairs[i] for i in too_long] if pairs is not None else None,
                max_len,
            )
            for j, i in enumerate(too_long):
                for k in enc:
                    enc[k][i] = cut[k][j]
            report.truncated += len(too_long)
        cols = {k: [list(v) for v in enc[k]] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        cols["labels"] = [self._target(ex.fields["label"], space) for ex in examples]
        cols["length"] = [len(ids) for ids in cols["input_ids"]]
        return datasets.Dataset.from_dict(cols)

    def _target(self, label, space: dict):
        if space["problem"] == "regression":
            return float(label)
        if space["problem"] == "multi_label":
            hot = [0.0] * len(space["labels"])
            for x in label:
                if x in space["label2id"]:
                    hot[space["label2id"][x]] = 1.0
            return hot
        return space["label2id"][label]

    def collator(self, tokenizer, cfg: TaskRecipe):
        return PaddingCollator(pad_id_of(tokenizer))

    def loss_function(self, space: dict, weights: torch.Tensor):
        """A Trainer ``compute_loss_func`` applying class weights (only used with data.class_weights)."""
        return WeightedLoss(space["problem"], weights)

    # metrics -------------------------------------------------------------------------------------
    def default_metric(self, cfg: TaskRecipe) -> str:
        return PROBLEM_METRICS[cfg.task.problem][0]

    def compute_metrics(self, space: dict, cfg: TaskRecipe, keep: Callable[[dict], None] | None = None) -> Callable:
        """For the Trainer's per-epoch dev evaluation: scalars for the Trainer; ``keep`` receives
        the full metrics (per-class, confusion matrix), so the stage need not score dev again."""

        def fn(eval_pred) -> dict:
            logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            full = self._metrics(np.asarray(logits), np.asarray(eval_pred.label_ids), space, cfg)
            if keep is not None:
                keep(full)
            return M.scalars(full)

        return fn

    def _metrics(self, logits: np.ndarray, targets: np.ndarray, space: dict, cfg: TaskRecipe) -> dict:
        problem, labels = space["problem"], space["labels"]
        if problem == "regression":
            return M.regression_metrics(targets.reshape(-1), logits.reshape(-1))
        if problem == "multi_label":
            pred = (_sigmoid(logits) >= cfg.task.threshold).astype(int)
            return M.multilabel_metrics(targets.astype(int), pred, labels)
        return M.classification_metrics(
            [labels[int(i)] for i in targets.reshape(-1)], [labels[int(i)] for i in logits.argmax(-1)], labels
        )

    # inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(
        self,
        model,
        tokenizer,
        texts: list[str],
        pairs: list[str] | None,
        cfg: TaskRecipe,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, int]:
        """Logits for every text (batched, longest first), and how many were cut at model.max_length."""
        batch_size = eval_batch_size(cfg)
        max_len = cfg.max_length
        collate = PaddingCollator(pad_id_of(tokenizer))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        enc = self._tokenize(tokenizer, texts, pairs, max_len)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        lengths = [len(ids) for ids in enc["input_ids"]]
        full = self._tokenize(tokenizer, texts, pairs, None)["input_ids"]
        truncated = sum(len(a) > len(b) for a, b in zip(full, enc["input_ids"]))
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = collate([{k: enc[k][i] for k in keys} for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits
            out[idx] = logits.float().cpu().numpy().reshape(len(idx), -1)
            if progress:
                progress(len(idx))
        if was_training:
            model.train()
        return out, truncated

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg: TaskRecipe) -> dict:
        def score(share: list[Example]):
            texts = [ex.fields["text"] for ex in share]
            pairs = [ex.fields["text_pair"] for ex in share] if cfg.data.text_pair_field else None
            return self.logits(model, tokenizer, texts, pairs, cfg)

        rows, truncated = map_split(score, examples)  # several processes: each scores its share
        logits = np.stack(rows)
        targets = np.array([self._target(ex.fields["label"], space) for ex in examples])
        metrics = self._metrics(logits, targets, space, cfg)
        metrics["truncated"] = truncated
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg: TaskRecipe) -> list[dict]:
        """Each record gets a ``prediction``: {label, score, top_k} (single label), {labels,
        probabilities} (multi label: labels with probability >= task.threshold) or {value} (regression)."""
        d = cfg.data
        for i, rec in enumerate(records):
            for f in self.text_fields(cfg):
                if not isinstance(rec.get(f), str):
                    raise DataError(f"record {i + 1}: field {f!r} missing or not text (keys: {', '.join(rec)})")
        texts = [r[d.text_field] for r in records]
        pairs = [r[d.text_pair_field] for r in records] if d.text_pair_field else None
        logits, _ = self.logits(model, tokenizer, texts, pairs, cfg)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        problem = {v: k for k, v in PROBLEM_TYPES.items()}.get(model.config.problem_type, cfg.task.problem)
        out = []
        for rec, row in zip(records, logits):
            if problem == "regression":
                pred: dict = {"value": float(row[0])}
            elif problem == "multi_label":
                probs = _sigmoid(row)
                pred = {
                    "labels": [id2label[i] for i in np.flatnonzero(probs >= cfg.task.threshold)],
                    "probabilities": {id2label[i]: round(float(p), 6) for i, p in enumerate(probs)},
                }
            else:
                probs = _softmax(row)
                top = np.argsort(-probs)[: cfg.task.top_k]
                pred = {
                    "label": id2label[int(top[0])],
                    "score": round(float(probs[top[0]]), 6),
                    "top_k": [{"label": id2label[int(i)], "score": round(float(probs[i]), 6)} for i in top],
                }
            out.append({**rec, "prediction": pred})
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


TASK = ClassificationTask()
