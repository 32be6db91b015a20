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
spans -> BIO -> spans is exact whenever span boundaries fall on subword boundaries.

Works with encoders (BERT) and decoders (Llama: ``LlamaForTokenClassification``; a causal model
only sees the left context, so expect lower scores than an encoder of the same size).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config.base import ConfigError
from ..config.tasks import ExtractionConfig
from ..data.collators import pad_right
from ..runtime.dist import map_split
from .base import DataError, Example, ReadReport, allow_truncation, eval_batch_size, on_error_mode, recipe_section
from .classification import model_kwargs, pad_id_of
from .labeled_io import read_records
from .span_metrics import span_scores

IGNORE = -100
Span = tuple[int, int, str]


# --- recipe access --------------------------------------------------------------------------------

def section(cfg) -> ExtractionConfig:
    """The ``extraction:`` section of a finetune recipe (or the section itself; defaults when absent)."""
    return recipe_section(cfg, "extraction", ExtractionConfig)


def _eval_batch_size(cfg) -> int:
    return eval_batch_size(cfg, default=16)


def _reject(origin: str, reason: str, on_error: str, report: ReadReport) -> None:
    if on_error == "skip":
        field = reason.split("[", 1)[0].split(":", 1)[0]
        report.skip(origin, f"{field} invalid" if field.startswith("field ") else field)
        return
    raise DataError(f"{origin}: {reason}")


# --- spans <-> tags -------------------------------------------------------------------------------

def check_spans(text: Any, spans: Any, field: str = "spans", text_field: str = "text") -> tuple[list[Span], str | None]:
    """Validate raw span dicts against ``text``; returns (sorted spans, None) or ([], error message).

    Errors name the field and index: ``field 'spans'[2]: span [30, 40) is outside the text (34 chars)``.
    Whitespace at either end of a span is stripped (a span of only whitespace is an error)."""
    if not isinstance(text, str):
        return [], f"field {text_field!r} must be a string, got {type(text).__name__}"
    if not isinstance(spans, list):
        return [], f"field {field!r} must be a list of {{start, end, label}}, got {type(spans).__name__}"
    out: list[tuple[Span, int]] = []
    for i, sp in enumerate(spans):
        where = f"field {field!r}[{i}]"
        if not isinstance(sp, dict):
            return [], f"{where}: expected {{start, end, label}}, got {sp!r}"
        missing = [k for k in ("start", "end", "label") if k not in sp]
        if missing:
            return [], f"{where}: missing {', '.join(repr(m) for m in missing)} in {sp!r}"
        s, e, label = sp["start"], sp["end"], sp["label"]
        if isinstance(s, bool) or isinstance(e, bool) or not isinstance(s, int) or not isinstance(e, int):
            return [], f"{where}: start and end must be integers, got {s!r}, {e!r}"
        if not isinstance(label, str) or not label or label == "O" or label[:2] in ("B-", "I-"):
            return [], f"{where}: label must be a plain non-empty name (not 'O', no B-/I- prefix), got {label!r}"
        if e <= s:
            return [], f"{where}: end {e} must be greater than start {s}"
        if s < 0 or e > len(text):
            return [], f"{where}: span [{s}, {e}) is outside the text ({len(text)} chars)"
        piece = text[s:e]
        if not piece.strip():
            return [], f"{where}: span [{s}, {e}) holds only whitespace"
        s2 = s + (len(piece) - len(piece.lstrip()))
        e2 = e - (len(piece) - len(piece.rstrip()))
        out.append(((s2, e2, label), i))
    out.sort(key=lambda x: (x[0][0], x[0][1]))
    for (a, ia), (b, ib) in zip(out, out[1:]):
        if b[0] < a[1]:
            return [], (f"field {field!r}[{ib}]: span [{b[0]}, {b[1]}) {text[b[0]:b[1]]!r} overlaps "
                        f"{field!r}[{ia}] [{a[0]}, {a[1]}) {text[a[0]:a[1]]!r}")
    return [sp for sp, _ in out], None


def tags_to_spans(tokens: Any, tags: Any, tokens_field: str = "tokens",
                  tags_field: str = "tags") -> tuple[str, list[Span], str | None]:
    """Word-level BIO tags -> (text joined with spaces, character spans, error message or None)."""
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return "", [], f"field {tokens_field!r} must be a list of strings"
    if not isinstance(tags, list):
        return "", [], f"field {tags_field!r} must be a list of tags"
    if len(tokens) != len(tags):
        return "", [], f"field {tags_field!r} has {len(tags)} tags for {len(tokens)} tokens"
    for i, w in enumerate(tokens):
        if not w.strip() or w != w.strip():
            return "", [], f"field {tokens_field!r}[{i}]: token {w!r} is empty or has surrounding whitespace"
    text, starts, pos = "", [], 0
    for w in tokens:
        starts.append(pos)
        pos += len(w) + 1
    text = " ".join(tokens)
    spans: list[Span] = []
    cur: list | None = None
    for i, (w, tag) in enumerate(zip(tokens, tags)):
        if not isinstance(tag, str) or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            return "", [], f"field {tags_field!r}[{i}]: {tag!r} is not a BIO tag (O, B-X, I-X)"
        if tag == "O":
            if cur:
                spans.append(tuple(cur))
            cur = None
            continue
        label = tag[2:]
        if tag.startswith("I-") and cur and cur[2] == label:
            cur[1] = starts[i] + len(w)
            continue
        if cur:
            spans.append(tuple(cur))
        cur = [starts[i], starts[i] + len(w), label]
    if cur:
        spans.append(tuple(cur))
    return text, spans, None


def spans_to_word_tags(tokens: Sequence[str], spans: Sequence[Span]) -> list[str]:
    """Character spans over ``" ".join(tokens)`` -> one BIO tag per word (a word inside a span is I-/B-)."""
    tags, pos = [], 0
    for w in tokens:
        s, e = pos, pos + len(w)
        pos = e + 1
        tag = "O"
        for a, b, label in spans:
            if s < b and a < e:
                tag = ("B-" if s <= a else "I-") + label
                break
        tags.append(tag)
    return tags


def _content(text: str, offsets) -> list[tuple[int, int] | None]:
    """Each token's character range with whitespace stripped (None: special or whitespace-only)."""
    out = []
    for s, e in offsets:
        if e <= s:
            out.append(None)
            continue
        piece = text[s:e]
        stripped = piece.strip()
        if not stripped:
            out.append(None)
            continue
        s2 = s + (len(piece) - len(piece.lstrip()))
        out.append((s2, s2 + len(stripped)))
    return out


def spans_to_token_tags(text: str, offsets, spans: Sequence[Span], special: Sequence[int] | None = None,
                        word_ids: Sequence[int | None] | None = None,
                        subword_labels: str = "all") -> list[str | None]:
    """BIO tag per token (``None`` = not labelled: special tokens, first-mode continuation subwords).

    A token belongs to a span when its (whitespace-stripped) text overlaps the span; whitespace-only
    tokens strictly inside a span are ``I-``."""
    content = _content(text, offsets)
    n = len(content)
    tags: list[str | None] = []
    is_special = [bool(special[i]) if special is not None else False for i in range(n)]
    j = 0  # next span to consider (spans sorted, non-overlapping)
    spans = sorted(spans)
    open_span: Span | None = None
    for i in range(n):
        s_e = content[i]
        raw_s, raw_e = offsets[i]
        if is_special[i] or (raw_e <= raw_s):
            tags.append(None)
            continue
        if s_e is None:  # whitespace-only token
            inside = open_span is not None and raw_s >= open_span[0] and raw_e <= open_span[1]
            tags.append(f"I-{open_span[2]}" if inside else "O")
            continue
        s, e = s_e
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if open_span is not None and s < open_span[1] and open_span[0] < e:
            tags.append(f"I-{open_span[2]}")
            continue
        if j < len(spans) and spans[j][0] < e and s < spans[j][1]:
            open_span = spans[j]
            j += 1
            tags.append(f"B-{open_span[2]}")
        else:
            open_span = None
            tags.append("O")
    if subword_labels == "first" and word_ids is not None:
        last_word, prev_tag = None, None
        for i in range(n):
            if tags[i] is None:
                last_word = None
                continue
            if content[i] is None:      # whitespace-only: transparent when decoding, never labelled
                tags[i] = None
                continue
            wid = word_ids[i]
            if wid is not None and wid == last_word and prev_tag is not None and _continues(prev_tag, tags[i]):
                tags[i] = None
            else:
                prev_tag = tags[i]
            last_word = wid
    return tags


def _continues(prev: str, cur: str) -> bool:
    if cur == "O":
        return prev == "O"
    return cur.startswith("I-") and prev != "O" and prev[2:] == cur[2:]


def token_tags_to_spans(text: str, offsets, tags: Sequence[str | None]) -> list[Span]:
    """Merge ``B-X I-X ...`` runs of token tags into character spans (whitespace stripped).

    ``None`` tags (special tokens) end a span; an ``I-X`` that does not continue an ``X`` starts one;
    whitespace-only tokens are transparent (they neither open, extend nor end a span)."""
    content = _content(text, offsets)
    spans: list[Span] = []
    cur: list | None = None
    for rng, tag, (raw_s, raw_e) in zip(content, tags, offsets):
        if rng is None and tag is not None and raw_e > raw_s:
            continue
        if tag is None or tag == "O":
            if cur:
                spans.append(tuple(cur))
            cur = None
            continue
        label = tag[2:]
        if tag.startswith("I-") and cur is not None and cur[2] == label:
            cur[1] = rng[1]
            continue
        if cur:
            spans.append(tuple(cur))
        cur = [rng[0], rng[1], label]
    if cur:
        spans.append(tuple(cur))
    return spans


def fill_first_subword_tags(text: str, offsets, tags: Sequence[str | None],
                            word_ids: Sequence[int | None]) -> list[str | None]:
    """subword_labels: first -> a word's later subwords take the label of its first (non-blank) subword."""
    content = _content(text, offsets)
    out = list(tags)
    last_word, prev = None, None
    for i in range(len(out)):
        if out[i] is None:
            last_word = None
            continue
        if content[i] is None:
            continue
        wid = word_ids[i]
        if wid is not None and wid == last_word and prev is not None:
            out[i] = "O" if prev == "O" else f"I-{prev[2:]}"
        prev, last_word = out[i], wid
    return out


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

    def default_metric(self, cfg) -> str:
        return "span_f1"

    # reading -------------------------------------------------------------------------------------
    def read(self, path: str, cfg, *, split: str, report: ReadReport) -> list[Example]:
        sec = section(cfg)
        on_error = on_error_mode(cfg)
        raw = read_records(path, fields_required=[], on_error=on_error, report=report,
                           format=getattr(getattr(cfg, "data", None), "format", "auto"))
        out: list[Example] = []
        for ex in raw:
            rec = ex.fields
            if sec.spans_field in rec or sec.text_field in rec:
                missing = [f for f in (sec.text_field, sec.spans_field) if f not in rec]
                if missing:
                    _reject(ex.origin, f"missing field {missing[0]!r} (span records need {sec.text_field!r} and "
                                       f"{sec.spans_field!r})", on_error, report)
                    continue
                spans, err = check_spans(rec[sec.text_field], rec[sec.spans_field], sec.spans_field, sec.text_field)
                text = rec[sec.text_field]
                tokens = None
            elif sec.tokens_field in rec or sec.tags_field in rec:
                missing = [f for f in (sec.tokens_field, sec.tags_field) if f not in rec]
                if missing:
                    _reject(ex.origin, f"missing field {missing[0]!r} (token records need {sec.tokens_field!r} and "
                                       f"{sec.tags_field!r})", on_error, report)
                    continue
                text, spans, err = tags_to_spans(rec[sec.tokens_field], rec[sec.tags_field],
                                                 sec.tokens_field, sec.tags_field)
                tokens = rec[sec.tokens_field]
            else:
                _reject(ex.origin, f"missing fields: need {sec.text_field!r} + {sec.spans_field!r} or "
                                   f"{sec.tokens_field!r} + {sec.tags_field!r}; got {sorted(rec)}", on_error, report)
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
    def label_space(self, train: list[Example], cfg) -> dict:
        labels = sorted({sp[2] for ex in train for sp in ex.fields["spans"]})
        if not labels:
            raise DataError("extraction: the training data has no spans; nothing to learn")
        tags = ["O"] + [f"{p}-{lab}" for lab in labels for p in ("B", "I")]
        label2id = {t: i for i, t in enumerate(tags)}
        return {"labels": labels, "tags": tags, "label2id": label2id,
                "id2label": {i: t for t, i in label2id.items()}}

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        known = set(space["labels"])
        for ex in examples:
            for sp in ex.fields["spans"]:
                if sp[2] not in known:
                    raise DataError(f"{ex.origin}: {split} span label {sp[2]!r} never occurs in the training data "
                                    f"(known: {', '.join(sorted(known))})")

    # model -----------------------------------------------------------------------------------------
    def load_model(self, base_dir: str, space: dict, cfg):
        from transformers import AutoModelForTokenClassification

        tags = list(space["tags"])
        return AutoModelForTokenClassification.from_pretrained(
            base_dir, num_labels=len(tags), id2label=dict(enumerate(tags)),
            label2id={t: i for i, t in enumerate(tags)}, **model_kwargs(cfg))

    # encoding --------------------------------------------------------------------------------------
    def encode_one(self, ex: Example, tokenizer, space: dict, sec: ExtractionConfig, allow_truncation: bool,
                   report: ReadReport | None):
        text, spans = ex.fields["text"], ex.fields["spans"]
        enc = _tokenize(text, tokenizer, None)
        if len(enc["input_ids"]) > sec.max_length:
            if not allow_truncation:
                raise DataError(f"{ex.origin}: text is {len(enc['input_ids'])} tokens, more than extraction.max_length "
                                f"{sec.max_length}; raise extraction.max_length or set data.allow_truncation: true")
            if report is not None:
                report.truncated += 1
            enc = _tokenize(text, tokenizer, sec.max_length)
        tags = spans_to_token_tags(text, enc["offset_mapping"], spans, enc["special_tokens_mask"],
                                   enc.word_ids(), sec.subword_labels)
        l2i = space["label2id"]
        labels = [IGNORE if t is None else l2i[t] for t in tags]
        return {"input_ids": list(enc["input_ids"]), "attention_mask": [1] * len(enc["input_ids"]), "labels": labels}

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg, report: ReadReport):
        import datasets

        _require_fast(tokenizer)
        sec = section(cfg)
        allow = allow_truncation(cfg)
        rows = [self.encode_one(ex, tokenizer, space, sec, allow, report) for ex in examples]
        cols = {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")}
        cols["length"] = [len(ids) for ids in cols["input_ids"]]      # for train.group_by_length
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer, cfg):
        return TokenCollator(pad_id_of(tokenizer))

    # inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, model, tokenizer, texts: list[str], cfg) -> tuple[list[list[Span]], int]:
        """Predicted character spans for each text, and how many texts were cut at max_length."""
        _require_fast(tokenizer)
        sec = section(cfg)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = pad_id_of(tokenizer)
        out: list[list[Span]] = []
        truncated = 0
        bs = _eval_batch_size(cfg)
        for b in range(0, len(texts), bs):
            batch = texts[b:b + bs]
            encs = []
            for text in batch:
                enc = _tokenize(text, tokenizer, None)
                if len(enc["input_ids"]) > sec.max_length:
                    truncated += 1
                    enc = _tokenize(text, tokenizer, sec.max_length)
                encs.append(enc)
            width = max(len(e["input_ids"]) for e in encs)
            ids = torch.full((len(encs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(encs), width), dtype=torch.long)
            for i, e in enumerate(encs):
                ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
                mask[i, :len(e["input_ids"])] = 1
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

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg) -> dict:
        pred, truncated = map_split(lambda share: self.extract(model, tokenizer, [ex.fields["text"] for ex in share], cfg),
                                    examples)   # several processes: each extracts from its share
        gold = [ex.fields["spans"] for ex in examples]
        metrics = span_scores(gold, pred)
        metrics = {"n": len(examples), **metrics, "truncated": truncated}
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg) -> list[dict]:
        """Adds ``spans`` ([{start, end, label, text}]) to each record; word-tag records also get ``tags``.

        Texts longer than ``extraction.max_length`` tokens are cut there (nothing is found past the cut)."""
        sec = section(cfg)
        texts, words = [], []
        for i, rec in enumerate(records):
            if isinstance(rec.get(sec.text_field), str):
                texts.append(rec[sec.text_field])
                words.append(None)
            elif isinstance(rec.get(sec.tokens_field), list):
                texts.append(" ".join(rec[sec.tokens_field]))
                words.append(rec[sec.tokens_field])
            else:
                raise DataError(f"record {i}: needs a string field {sec.text_field!r} or a word list {sec.tokens_field!r}")
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
