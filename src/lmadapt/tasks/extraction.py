"""Extraction: token classification with BIO tags (named entities, slots, terms).

Input records (JSONL, one per line), either form per record:

* character spans: ``{"text": "...", "spans": [{"start": 0, "end": 5, "label": "PER"}, ...]}``
  (``end`` exclusive; spans may not overlap; surrounding whitespace inside a span is stripped);
* word tags: ``{"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}``
  (words are joined with single spaces into a text, the tags become character spans; an ``I-X``
  that does not continue an ``X`` opens a new span, as in IOB1 data).

Internally every example is ``text`` + character ``spans``. Encoding tokenizes the text once with a
fast tokenizer (offset mapping) and labels each subword: the first subword of a span ``B-X``, the
other subwords of the span ``I-X``, everything else ``O``; special tokens ``-100``. With
``subword_labels: first`` a word's later subwords get ``-100`` in training (unless a span starts or
ends inside the word) and take their word's label at prediction time (predictions are per word). A span boundary that falls inside a
subword is rounded out to the whole subword. Decoding merges ``B-X I-X ...`` runs into character
spans (start of the first subword's text, end of the last one's, whitespace stripped), so
spans -> BIO -> spans is exact whenever span boundaries fall on subword boundaries (those
conversions live in tasks/bio_tags.py).

Works with encoders (BERT) and decoders (Llama: ``LlamaForTokenClassification``; a causal model
only sees the left context, so expect lower scores than an encoder of the same size).
"""

from __future__ import annotations

import torch

from ..config.base import ConfigError
from ..config.finetune import FinetuneConfig
from ..config.tasks import ExtractionConfig
from ..data.collators import pad_right
from ..runtime.dist import map_split
from .base import DataError, Example, ReadReport, TaskRecipe, eval_batch_size
from .bio_tags import (
    Span,
    check_spans,
    fill_first_subword_tags,
    spans_to_token_tags,
    spans_to_word_tags,
    tags_to_spans,
    token_tags_to_spans,
)
from .model_setup import model_kwargs, pad_id_of
from .labeled_io import read_records
from .span_metrics import span_scores

IGNORE = -100


def _reject(origin: str, reason: str, on_error: str, report: ReadReport) -> None:
    if on_error == "skip":
        field = reason.split("[", 1)[0].split(":", 1)[0]
        report.skip(origin, f"{field} invalid" if field.startswith("field ") else field)
        return
    raise DataError(f"{origin}: {reason}")


# --- the task -------------------------------------------------------------------------------------


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("extraction needs a fast tokenizer (offset mapping); this model's tokenizer is a slow one")


def _tokenize(text: str, tokenizer, max_length: int | None):
    kw = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    if max_length is not None:
        kw.update(truncation=True, max_length=max_length)
    return tokenizer(text, **kw)


class ExtractionTask:
    """BIO token classification over character spans (see module docstring)."""

    name = "extraction"
    peft_task_type = "TOKEN_CLS"

    def default_metric(self, cfg: TaskRecipe) -> str:
        return "span_f1"

    # reading -------------------------------------------------------------------------------------
    def read(self, path: str, cfg: TaskRecipe, *, split: str, report: ReadReport) -> list[Example]:
        sec = cfg.extraction
        on_error = cfg.data.on_error
        raw = read_records(path, fields_required=[], on_error=on_error, report=report, format=cfg.data.format)
        out: list[Example] = []
        for ex in raw:
            rec = ex.fields
            if sec.spans_field in rec or sec.text_field in rec:
                missing = [f for f in (sec.text_field, sec.spans_field) if f not in rec]
                if missing:
                    _reject(
                        ex.origin,
                        f"missing field {missing[0]!r} (span records need {sec.text_field!r} and {sec.spans_field!r})",
                        on_error,
                        report,
                    )
                    continue
                spans, err = check_spans(rec[sec.text_field], rec[sec.spans_field], sec.spans_field, sec.text_field)
                text = rec[sec.text_field]
                tokens = None
            elif sec.tokens_field in rec or sec.tags_field in rec:
                missing = [f for f in (sec.tokens_field, sec.tags_field) if f not in rec]
                if missing:
                    _reject(
                        ex.origin,
                        f"missing field {missing[0]!r} (token records need {sec.tokens_field!r} and "
                        f"{sec.tags_field!r})",
                        on_error,
                        report,
                    )
                    continue
                text, spans, err = tags_to_spans(
                    rec[sec.tokens_field], rec[sec.tags_field], sec.tokens_field, sec.tags_field
                )
                tokens = rec[sec.tokens_field]
            else:
                _reject(
                    ex.origin,
                    f"missing fields: need {sec.text_field!r} + {sec.spans_field!r} or "
                    f"{sec.tokens_field!r} + {sec.tags_field!r}; got {sorted(rec)}",
                    on_error,
                    report,
                )
                continue
            if err:
                _reject(ex.origin, err, on_error, report)
                continue
            fields = {"text": text, "spans": spans}
            if tokens is not None:
                fields["tokens"] = list(tokens)
            out.append(Example(fields=fields, origin=ex.origin))
        report.examples -= len(raw) - len(out)
        if not out:
            raise DataError(f"{path}: no usable records ({report.skipped} skipped: {report.skip_reasons})")
        return out

    # labels ----------------------------------------------------------------------------------------
    def label_space(self, train: list[Example], cfg: TaskRecipe) -> dict:
        labels = sorted({sp[2] for ex in train for sp in ex.fields["spans"]})
        if not labels:
            raise DataError("extraction: the training data has no spans; nothing to learn")
        tags = ["O"] + [f"{p}-{lab}" for lab in labels for p in ("B", "I")]
        label2id = {t: i for i, t in enumerate(tags)}
        return {"labels": labels, "tags": tags, "label2id": label2id, "id2label": {i: t for t, i in label2id.items()}}

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        known = set(space["labels"])
        for ex in examples:
            for sp in ex.fields["spans"]:
                if sp[2] not in known:
                    raise DataError(
                        f"{ex.origin}: {split} span label {sp[2]!r} never occurs in the training data "
                        f"(known: {', '.join(sorted(known))})"
                    )

    # model -----------------------------------------------------------------------------------------
    def load_model(self, base_dir: str, space: dict, cfg: FinetuneConfig):
        from transformers import AutoModelForTokenClassification

        tags = list(space["tags"])
        return AutoModelForTokenClassification.from_pretrained(
            base_dir,
            num_labels=len(tags),
            id2label=dict(enumerate(tags)),
            label2id={t: i for i, t in enumerate(tags)},
            **model_kwargs(cfg),
        )

    # encoding --------------------------------------------------------------------------------------
    def encode_one(
        self,
        ex: Example,
        tokenizer,
        space: dict,
        sec: ExtractionConfig,
        max_length: int,
        allow_truncation: bool,
        report: ReadReport | None,
    ):
        text, spans = ex.fields["text"], ex.fields["spans"]
        enc = _tokenize(text, tokenizer, None)
        if len(enc["input_ids"]) > max_length:
            if not allow_truncation:
                raise DataError(
                    f"{ex.origin}: text is {len(enc['input_ids'])} tokens, more than model.max_length "
                    f"{max_length}; raise model.max_length or set data.allow_truncation: true"
                )
            if report is not None:
                report.truncated += 1
            enc = _tokenize(text, tokenizer, max_length)
        tags = spans_to_token_tags(
            text, enc["offset_mapping"], spans, enc["special_tokens_mask"], enc.word_ids(), sec.subword_labels
        )
        l2i = space["label2id"]
        labels = [IGNORE if t is None else l2i[t] for t in tags]
        return {"input_ids": list(enc["input_ids"]), "attention_mask": [1] * len(enc["input_ids"]), "labels": labels}

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg: TaskRecipe, report: ReadReport):
        import datasets

        _require_fast(tokenizer)
        allow = cfg.data.allow_truncation
        rows = [self.encode_one(ex, tokenizer, space, cfg.extraction, cfg.max_length, allow, report) for ex in examples]
        cols = {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")}
        cols["length"] = [len(ids) for ids in cols["input_ids"]]  # for train.group_by_length
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer, cfg: TaskRecipe):
        return TokenCollator(pad_id_of(tokenizer))

    # inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, model, tokenizer, texts: list[str], cfg: TaskRecipe) -> tuple[list[list[Span]], int]:
        """Predicted character spans for each text, and how many texts were cut at model.max_length."""
        _require_fast(tokenizer)
        sec, max_length = cfg.extraction, cfg.max_length
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = pad_id_of(tokenizer)
        out: list[list[Span]] = []
        truncated = 0
        bs = eval_batch_size(cfg)
        for b in range(0, len(texts), bs):
            batch = texts[b : b + bs]
            encs = []
            for text in batch:
                enc = _tokenize(text, tokenizer, None)
                if len(enc["input_ids"]) > max_length:
                    truncated += 1
                    enc = _tokenize(text, tokenizer, max_length)
                encs.append(enc)
            width = max(len(e["input_ids"]) for e in encs)
            ids = torch.full((len(encs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encs), width), dtype=torch.long)
            for i, e in enumerate(encs):
                ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
                mask[i, : len(e["input_ids"])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            pred = logits.argmax(-1).cpu().tolist()
            for i, (text, e) in enumerate(zip(batch, encs)):
                n = len(e["input_ids"])
                special = e["special_tokens_mask"]
                tags = [None if special[t] else id2label[pred[i][t]] for t in range(n)]
                if sec.subword_labels == "first":
                    tags = fill_first_subword_tags(text, e["offset_mapping"], tags, e.word_ids())
                out.append(token_tags_to_spans(text, e["offset_mapping"], tags))
        if was_training:
            model.train()
        return out, truncated

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg: TaskRecipe) -> dict:
        pred, truncated = map_split(
            lambda share: self.extract(model, tokenizer, [ex.fields["text"] for ex in share], cfg), examples
        )  # several processes: each extracts from its share
        gold = [ex.fields["spans"] for ex in examples]
        metrics = span_scores(gold, pred)
        metrics = {"n": len(examples), **metrics, "truncated": truncated}
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg: TaskRecipe) -> list[dict]:
        """Adds ``spans`` ([{start, end, label, text}]) to each record; word-tag records also get ``tags``.

        Texts longer than ``model.max_length`` tokens are cut there (nothing is found past the cut)."""
        sec = cfg.extraction
        texts, words = [], []
        for i, rec in enumerate(records):
            if isinstance(rec.get(sec.text_field), str):
                texts.append(rec[sec.text_field])
                words.append(None)
            elif isinstance(rec.get(sec.tokens_field), list):
                texts.append(" ".join(rec[sec.tokens_field]))
                words.append(rec[sec.tokens_field])
            else:
                raise DataError(
                    f"record {i}: needs a string field {sec.text_field!r} or a word list {sec.tokens_field!r}"
                )
        spans, _ = self.extract(model, tokenizer, texts, cfg)
        out = []
        for rec, text, ws, sp in zip(records, texts, words, spans):
            row = dict(rec)
            row[sec.spans_field] = [{"start": s, "end": e, "label": lab, "text": text[s:e]} for s, e, lab in sp]
            if ws is not None:
                row[sec.tags_field] = spans_to_word_tags(ws, sp)
            out.append(row)
        return out


class TokenCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest row."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        return pad_right(rows, {"input_ids": self.pad_id, "labels": IGNORE})


TASK = ExtractionTask()
