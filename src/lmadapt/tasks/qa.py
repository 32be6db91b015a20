"""Extractive question answering (SQuAD style) for encoder models (``AutoModelForQuestionAnswering``).

Input records (JSONL)::

    {"id": "q1", "question": "Who ...?", "context": "...", "answers": [{"text": "Ada", "start": 17}]}

``id`` is optional (default: file:line); ``answers: []`` marks an unanswerable question;
``answer_start`` is accepted for ``start`` (SQuAD's own name). Every answer must match the context
at its offset, else reading stops with file:line and both strings.

Encoding: question + passage pairs, the passage cut into overlapping windows of ``model.max_length``
tokens sharing ``doc_stride`` tokens (only the passage is ever cut). A window's start/end
positions are the answer's first/last token when the whole answer lies inside it, else the null
position 0 (BERT's [CLS]) -- as for unanswerable questions. Training uses the first answer.

Post-processing: for every window the ``n_best`` start and end logits inside the passage are
paired (end >= start, at most ``max_answer_length`` tokens); the best-scoring span over all windows
(start logit + end logit) is the answer. When unanswerable questions are allowed (``qa.unanswerable``,
default: when the training data has some), the answer is empty if the smallest null score over
the windows exceeds the best span's score by more than ``null_threshold``.

Generative QA with causal (decoder) models is the ``instruction`` task: put the question (and
passage) in the prompt and the answer in the response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.base import ConfigError
from ..config.finetune import FinetuneConfig
from ..config.tasks import QAConfig
from ..data.collators import pad_right
from ..runtime.dist import map_split
from .base import DataError, Example, ReadReport, TaskRecipe, eval_batch_size
from .model_setup import model_kwargs, pad_id_of
from .labeled_io import read_records
from .span_metrics import squad_scores

IGNORE = -100


def check_answers(context: str, answers, field: str = "answers") -> tuple[list[dict], str | None]:
    """Validate raw answers against the context: ([{"text", "start"}], None) or ([], message)."""
    if not isinstance(answers, list):
        return (
            [],
            f"field {field!r} must be a list of {{text, start}} ([] = unanswerable), got {type(answers).__name__}",
        )
    out = []
    for i, ans in enumerate(answers):
        where = f"field {field!r}[{i}]"
        if not isinstance(ans, dict):
            return [], f"{where}: expected {{text, start}}, got {ans!r}"
        start = ans.get("start", ans.get("answer_start"))
        if "text" not in ans or start is None:
            missing = "text" if "text" not in ans else "start"
            return [], f"{where}: missing {missing!r} in {ans!r}"
        text = ans["text"]
        if not isinstance(text, str) or not text.strip():
            return [], f"{where}: 'text' must be a non-empty string, got {text!r}"
        if isinstance(start, bool) or not isinstance(start, int):
            return [], f"{where}: 'start' must be an integer character offset, got {start!r}"
        if start < 0 or start + len(text) > len(context):
            return [], (f"{where}: answer {text!r} at start {start} runs outside the context ({len(context)} chars)")
        found = context[start : start + len(text)]
        if found != text:
            hint = ""
            pos = context.find(text)
            if pos >= 0:
                hint = f" (the text occurs at start {pos})"
            return [], (
                f"{where}: answer text {text!r} does not match the context at start {start}, "
                f"which reads {found!r}{hint}"
            )
        out.append({"text": text, "start": start})
    return out, None


# --- windows and post-processing ------------------------------------------------------------------


@dataclass
class Window:
    """One model input: a question with a piece of its passage."""

    example: int  # index into the example list
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int] | None]  # character range in the context; None outside it
    cls_index: int = 0
    start_position: int = 0
    end_position: int = 0


def _question_ids(question: str, tokenizer, sec: QAConfig, allow: bool, origin: str, counter: list) -> str:
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    if n <= sec.max_question_length:
        return question
    if not allow:
        raise DataError(
            f"{origin}: question is {n} tokens, more than qa.max_question_length {sec.max_question_length}; "
            f"raise it (and model.max_length) or set data.allow_truncation: true"
        )
    counter[0] += 1
    return question[: enc["offset_mapping"][sec.max_question_length - 1][1]]


def make_windows(
    questions: list[str],
    contexts: list[str],
    tokenizer,
    sec: QAConfig,
    max_length: int,
    *,
    answers: list[list[dict]] | None = None,
    origins: list[str] | None = None,
    allow_truncation: bool = False,
) -> tuple[list[Window], int]:
    """Windows of every (question, context); with ``answers`` also their start/end positions.

    Returns the windows and the number of questions cut to ``max_question_length``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("qa needs a fast tokenizer (offset mapping); this model's tokenizer is a slow one")
    origins = origins or [f"example {i}" for i in range(len(questions))]
    cut = [0]
    qs = [_question_ids(q, tokenizer, sec, allow_truncation, o, cut) for q, o in zip(questions, origins)]
    windows: list[Window] = []
    for i, (q, ctx) in enumerate(zip(qs, contexts)):
        enc = tokenizer(
            q,
            ctx,
            truncation="only_second",
            max_length=max_length,
            stride=sec.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for w in range(len(enc["input_ids"])):
            ids = enc["input_ids"][w]
            seq = enc.sequence_ids(w)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], seq)]
            cls_id = tokenizer.cls_token_id
            cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
            tt = enc["token_type_ids"][w] if "token_type_ids" in enc else None
            win = Window(
                example=i,
                input_ids=list(ids),
                token_type_ids=list(tt) if tt is not None else None,
                offsets=offsets,
                cls_index=cls_index,
                start_position=cls_index,
                end_position=cls_index,
            )
            if answers is not None and answers[i]:
                a = answers[i][0]
                a_start, a_end = a["start"], a["start"] + len(a["text"])
                ctx_tokens = [t for t, o in enumerate(offsets) if o is not None]
                if ctx_tokens and offsets[ctx_tokens[0]][0] <= a_start and offsets[ctx_tokens[-1]][1] >= a_end:
                    s_tok = max(t for t in ctx_tokens if offsets[t][0] <= a_start)
                    e_tok = min(t for t in ctx_tokens if offsets[t][1] >= a_end)
                    if e_tok >= s_tok:
                        win.start_position, win.end_position = s_tok, e_tok
            windows.append(win)
    return windows, cut[0]


def best_answers(
    contexts: list[str], windows: list[Window], start_logits, end_logits, sec: QAConfig, unanswerable: bool
) -> list[dict]:
    """Pick each example's answer over its windows: ``{"text", "start", "score", "null_score"}``.

    ``start`` is a character offset into the context (None for the empty answer)."""
    best: list[dict | None] = [None] * len(contexts)
    null: list[float | None] = [None] * len(contexts)
    for w, sl, el in zip(windows, start_logits, end_logits):
        sl = [float(x) for x in sl]
        el = [float(x) for x in el]
        n = len(w.input_ids)
        null_score = sl[w.cls_index] + el[w.cls_index]
        if null[w.example] is None or null_score < null[w.example]:
            null[w.example] = null_score
        ctx = [t for t in range(n) if w.offsets[t] is not None]
        if not ctx:
            continue
        starts = sorted(ctx, key=lambda t: -sl[t])[: sec.n_best]
        ends = sorted(ctx, key=lambda t: -el[t])[: sec.n_best]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > sec.max_answer_length:
                    continue
                score = sl[s] + el[e]
                cur = best[w.example]
                if cur is None or score > cur["score"]:
                    cs, ce = w.offsets[s][0], w.offsets[e][1]
                    best[w.example] = {"start": cs, "end": ce, "score": score}
    out = []
    for i, ctx in enumerate(contexts):
        b, ns = best[i], null[i]
        if b is None or (unanswerable and ns is not None and ns - b["score"] > sec.null_threshold):
            out.append({"text": "", "start": None, "score": ns if ns is not None else 0.0, "null_score": ns})
            continue
        raw = ctx[b["start"] : b["end"]]
        lead = len(raw) - len(raw.lstrip())
        text = raw.strip()
        out.append({"text": text, "start": b["start"] + lead, "score": b["score"], "null_score": ns})
    return out


# --- the task -------------------------------------------------------------------------------------


class QATask:
    """Extractive QA (see module docstring)."""

    name = "qa"
    peft_task_type = "QUESTION_ANS"

    def default_metric(self, cfg: TaskRecipe) -> str:
        return "f1"

    def text_fields(self, cfg: TaskRecipe) -> list[str]:
        """Fields every predict record needs (non-empty strings)."""
        sec = cfg.qa
        return [sec.question_field, sec.context_field]

    def stratify_key(self, space: dict | None):
        """Dev/test split off train: answerable and unanswerable questions in proportion."""
        return lambda ex: bool(ex.fields["answers"])

    def read(self, path: str, cfg: TaskRecipe, *, split: str, report: ReadReport) -> list[Example]:
        sec = cfg.qa
        on_error = cfg.data.on_error
        raw = read_records(
            path,
            fields_required=[sec.question_field, sec.context_field, sec.answers_field],
            text_fields=[sec.question_field, sec.context_field],
            on_error=on_error,
            report=report,
            format=cfg.data.format,
        )
        out = []
        for ex in raw:
            rec = ex.fields
            context = rec[sec.context_field]
            answers, err = check_answers(context, rec[sec.answers_field], sec.answers_field)
            if err:
                if on_error == "skip":
                    report.skip(
                        ex.origin,
                        "answer does not match context"
                        if "does not match" in err
                        else f"field {sec.answers_field!r} invalid",
                    )
                    continue
                raise DataError(f"{ex.origin}: {err}")
            qid = rec.get(sec.id_field)
            out.append(
                Example(
                    fields={
                        "id": str(qid) if qid is not None else ex.origin,
                        "question": rec[sec.question_field],
                        "context": context,
                        "answers": answers,
                    },
                    origin=ex.origin,
                )
            )
        report.examples -= len(raw) - len(out)
        if not out:
            raise DataError(f"{path}: no usable records ({report.skipped} skipped: {report.skip_reasons})")
        return out

    def label_space(self, train: list[Example], cfg: TaskRecipe) -> dict:
        sec = cfg.qa
        has_null = any(not ex.fields["answers"] for ex in train)
        allowed = sec.unanswerable if sec.unanswerable is not None else has_null
        if all(not ex.fields["answers"] for ex in train):
            raise DataError("qa: every training question is unanswerable; nothing to learn")
        return {"unanswerable": bool(allowed)}

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        if space.get("unanswerable"):
            return
        for ex in examples:
            if not ex.fields["answers"]:
                raise DataError(
                    f"{ex.origin}: {split} question is unanswerable (answers: []) but the training data "
                    f"has no unanswerable questions; add some, or set qa.unanswerable: true"
                )

    def load_model(self, base_dir: str, space: dict, cfg: FinetuneConfig):
        from transformers import AutoModelForQuestionAnswering

        model = AutoModelForQuestionAnswering.from_pretrained(base_dir, **model_kwargs(cfg))
        # Saved with the model, so that `lmadapt predict` knows whether the empty answer is allowed.
        model.config.lmadapt_qa_unanswerable = bool(space.get("unanswerable", False))
        return model

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg: TaskRecipe, report: ReadReport):
        import datasets

        windows, cut = make_windows(
            [e.fields["question"] for e in examples],
            [e.fields["context"] for e in examples],
            tokenizer,
            cfg.qa,
            cfg.max_length,
            answers=[e.fields["answers"] for e in examples],
            origins=[e.origin for e in examples],
            allow_truncation=cfg.data.allow_truncation,
        )
        report.truncated += cut
        cols = {
            "input_ids": [w.input_ids for w in windows],
            "attention_mask": [[1] * len(w.input_ids) for w in windows],
            "start_positions": [w.start_position for w in windows],
            "end_positions": [w.end_position for w in windows],
        }
        if windows and windows[0].token_type_ids is not None:
            cols["token_type_ids"] = [w.token_type_ids for w in windows]
        cols["length"] = [len(w.input_ids) for w in windows]  # for train.group_by_length
        return datasets.Dataset.from_dict(cols)

    def collator(self, tokenizer, cfg: TaskRecipe):
        return QACollator(pad_id_of(tokenizer))

    @torch.no_grad()
    def answer(
        self,
        model,
        tokenizer,
        questions: list[str],
        contexts: list[str],
        cfg: TaskRecipe,
        unanswerable: bool | None = None,
    ) -> tuple[list[dict], int]:
        """Answers ({"text", "start", "score", "null_score"}) and the number of questions cut."""
        sec = cfg.qa
        if unanswerable is None:
            unanswerable = sec.unanswerable
        if unanswerable is None:
            unanswerable = bool(getattr(model.config, "lmadapt_qa_unanswerable", False))
        windows, cut = make_windows(questions, contexts, tokenizer, sec, cfg.max_length, allow_truncation=True)
        collate = self.collator(tokenizer, cfg)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        starts, ends = [], []
        bs = eval_batch_size(cfg)
        for b in range(0, len(windows), bs):
            chunk = windows[b : b + bs]
            rows = [
                {"input_ids": w.input_ids, **({"token_type_ids": w.token_type_ids} if w.token_type_ids else {})}
                for w in chunk
            ]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            out = model(**batch)
            for j, w in enumerate(chunk):
                n = len(w.input_ids)
                starts.append(out.start_logits[j, :n].float().cpu().tolist())
                ends.append(out.end_logits[j, :n].float().cpu().tolist())
        if was_training:
            model.train()
        return best_answers(contexts, windows, starts, ends, sec, unanswerable), cut

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg: TaskRecipe) -> dict:
        def answer(share: list[Example]):
            return self.answer(
                model,
                tokenizer,
                [e.fields["question"] for e in share],
                [e.fields["context"] for e in share],
                cfg,
                unanswerable=bool(space.get("unanswerable", False)),
            )

        answers, cut = map_split(answer, examples)  # several processes: each answers its share
        refs = [[a["text"] for a in e.fields["answers"]] for e in examples]
        metrics = squad_scores([a["text"] for a in answers], refs)
        metrics["truncated"] = cut
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg: TaskRecipe) -> list[dict]:
        """Adds ``answer`` (text, "" = no answer), ``answer_start`` (character offset or null) and ``score``."""
        sec = cfg.qa
        qs, cs = [], []
        for i, rec in enumerate(records):
            q, c = rec.get(sec.question_field), rec.get(sec.context_field)
            if not isinstance(q, str) or not isinstance(c, str):
                raise DataError(f"record {i}: needs string fields {sec.question_field!r} and {sec.context_field!r}")
            qs.append(q)
            cs.append(c)
        answers, _ = self.answer(model, tokenizer, qs, cs, cfg)
        return [
            {**rec, "answer": a["text"], "answer_start": a["start"], "score": a["score"]}
            for rec, a in zip(records, answers)
        ]


class QACollator:
    """Right-pads input_ids / token_type_ids (and builds attention_mask); stacks start/end positions."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = pad_right(rows, {"input_ids": self.pad_id, "token_type_ids": 0})
        if "start_positions" in rows[0]:
            batch["start_positions"] = torch.as_tensor([r["start_positions"] for r in rows], dtype=torch.long)
            batch["end_positions"] = torch.as_tensor([r["end_positions"] for r in rows], dtype=torch.long)
        return batch


TASK = QATask()
