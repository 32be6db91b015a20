"""Instruction tuning (supervised fine-tuning, SFT) of causal LMs.

Input records (JSONL), either form per record (field names in the ``instruction:`` section):

* ``{"prompt": "...", "response": "...", "system": "..."?}``
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (multi-turn)

Rendering (the tokenizer's chat template, or a plain ``### Instruction:``/``### Response:``
layout) and labels (loss only on assistant tokens, EOS always learned) are tasks/conversations.py.

Packing (``packing: true``): examples are laid one after another into blocks of at most
``model.max_length`` tokens (an example never straddles two blocks); position ids restart at 0 for every
example and the collator passes ``attention_mask=None`` (and ``use_cache=False``), so transformers
builds a block-diagonal causal mask from the position ids (``find_packed_sequence_indices``; sdpa,
eager and flash-attention 2 varlen) and examples never attend to each other.

Metrics (``evaluate``): response loss (mean cross-entropy per response token, EOS included) and
its perplexity over all examples; ``exact_match`` of greedy generations against the reference
(the last assistant turn; whitespace-stripped string equality) for the first ``eval_generate_max``.

Generative question answering with a causal model is this task: question (and passage) as the
prompt, answer as the response; ``evaluate`` then reports exact match of greedy generations.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config.finetune import FinetuneConfig
from ..runtime.dist import map_split, sum_split
from .base import DataError, Example, ReadReport, TaskRecipe, eval_batch_size
from .model_setup import model_kwargs, pad_id_of
from .conversations import IGNORE, Renderer, TemplateError, to_messages
from .labeled_io import read_records
from .span_metrics import generation_exact_match


# --- packing and collation ------------------------------------------------------------------------


def pack(rows: list[tuple[list[int], list[int]]], max_length: int) -> list[dict]:
    """Lay (input_ids, labels) examples into blocks of <= max_length tokens, in order.

    An example never straddles two blocks; ``position_ids`` restart at 0 for each example."""
    blocks: list[dict] = []
    cur = {"input_ids": [], "labels": [], "position_ids": []}
    for ids, labels in rows:
        if len(ids) > max_length:
            raise ValueError(f"pack: example of {len(ids)} tokens is longer than max_length {max_length}")
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > max_length:
            blocks.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ids
        cur["labels"] += labels
        cur["position_ids"] += list(range(len(ids)))
    if cur["input_ids"]:
        blocks.append(cur)
    return blocks


class SFTCollator:
    """Right-pads rows to the longest; labels of padding -100.

    Packed rows (with ``position_ids``): padding continues with positions 0, 1, ... (a separate
    dummy sequence) and no attention_mask, so the model builds the block-diagonal causal mask from
    the position ids. Unpacked rows: a 0/1 attention_mask. Always ``use_cache=False``: a KV cache
    is useless in training, and with one transformers would not detect packed sequences."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        packed = "position_ids" in rows[0]
        if packed:
            pos = torch.zeros((n, width), dtype=torch.long)
        else:
            mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            if packed:
                pos[i, :k] = torch.as_tensor(r["position_ids"])
                pos[i, k:] = torch.arange(width - k)
            else:
                mask[i, :k] = 1
        if packed:
            return {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False}
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "use_cache": False}


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in ([gen] if isinstance(gen, int) else list(gen or [])) + [tokenizer.eos_token_id]:
        if v is not None and v not in ids:
            ids.append(int(v))
    return ids


# --- the task -------------------------------------------------------------------------------------


class InstructionTask:
    """Supervised fine-tuning of causal LMs (see module docstring)."""

    name = "instruction"
    peft_task_type = "CAUSAL_LM"

    def default_metric(self, cfg: TaskRecipe) -> str:
        """The Trainer's dev loss: labels exist only on responses, so it is the response loss."""
        return "loss"

    def read(self, path: str, cfg: TaskRecipe, *, split: str, report: ReadReport) -> list[Example]:
        sec = cfg.instruction
        on_error = cfg.data.on_error
        raw = read_records(path, fields_required=[], on_error=on_error, report=report, format=cfg.data.format)
        out = []
        for ex in raw:
            msgs, err = to_messages(ex.fields, sec)
            if err:
                if on_error == "skip":
                    short = err.split("[", 1)[0].split(":", 1)[0]
                    report.skip(ex.origin, short if not short.startswith("field ") else f"{short} invalid")
                    continue
                raise DataError(f"{ex.origin}: {err}")
            out.append(Example(fields={"messages": msgs}, origin=ex.origin))
        report.examples -= len(raw) - len(out)
        if not out:
            raise DataError(f"{path}: no usable records ({report.skipped} skipped: {report.skip_reasons})")
        return out

    def label_space(self, train: list[Example], cfg: TaskRecipe) -> dict:
        return {}

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        return None

    def load_model(self, base_dir: str, space: dict, cfg: FinetuneConfig):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base_dir, **model_kwargs(cfg, causal=True))

    def encode_rows(
        self, examples: list[Example], tokenizer, cfg: TaskRecipe, report: ReadReport | None, allow_truncation: bool
    ) -> list[tuple[list[int], list[int]]]:
        r = Renderer(tokenizer, cfg.instruction)
        max_length = cfg.max_length
        rows = []
        for ex in examples:
            try:
                ids, labels = r.encode(ex.fields["messages"])
            except TemplateError as exc:
                raise DataError(
                    f"{ex.origin}: the tokenizer's chat template rejects this conversation: {exc}"
                ) from None
            if len(ids) > max_length:
                if not allow_truncation:
                    raise DataError(
                        f"{ex.origin}: example is {len(ids)} tokens, more than model.max_length "
                        f"{max_length}; raise model.max_length or set data.allow_truncation: true"
                    )
                ids, labels = ids[:max_length], labels[:max_length]
                if report is not None:
                    report.truncated += 1
                if all(x == IGNORE for x in labels):
                    if report is not None:
                        report.skip(ex.origin, "no response tokens left after truncation")
                    continue
            rows.append((ids, labels))
        return rows

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg: TaskRecipe, report: ReadReport):
        import datasets

        rows = self.encode_rows(examples, tokenizer, cfg, report, cfg.data.allow_truncation)
        if cfg.instruction.packing:
            blocks = pack(rows, cfg.max_length)
            return datasets.Dataset.from_dict(
                {k: [b[k] for b in blocks] for k in ("input_ids", "labels", "position_ids")}
            )
        return datasets.Dataset.from_dict(
            {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows], "length": [len(r[0]) for r in rows]}
        )  # for train.group_by_length

    def collator(self, tokenizer, cfg: TaskRecipe):
        return SFTCollator(pad_id_of(tokenizer))

    def response_loss(self, model, tokenizer, examples: list[Example], cfg: TaskRecipe) -> tuple[float, int, int]:
        """Mean loss per response token, the number of response tokens and of examples cut (split
        between the processes when there are several)."""
        total, count, cut = sum_split(lambda share: self._response_loss_sums(model, tokenizer, share, cfg), examples)
        return (total / count if count else float("nan")), count, cut

    @torch.no_grad()
    def _response_loss_sums(self, model, tokenizer, examples: list[Example], cfg: TaskRecipe) -> tuple[float, int, int]:
        report = ReadReport()
        rows = self.encode_rows(examples, tokenizer, cfg, report, allow_truncation=True)
        collate = SFTCollator(pad_id_of(tokenizer))
        device = next(model.parameters()).device
        total, count = 0.0, 0
        bs = eval_batch_size(cfg)
        for b in range(0, len(rows), bs):
            batch = collate([{"input_ids": i, "labels": lab} for i, lab in rows[b : b + bs]])
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            labels = batch["labels"].to(device)[:, 1:]
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
            )
            total += float(lp)
            count += int((labels != IGNORE).sum())
        return total, count, report.truncated

    @torch.no_grad()
    def generate(
        self, model, tokenizer, conversations: list[list[dict]], cfg: TaskRecipe, *, greedy: bool | None = None
    ) -> list[str]:
        """Generated answers for conversations (a trailing assistant turn is dropped), batched, left-padded.

        A prompt longer than ``model.max_length`` keeps its last ``model.max_length`` tokens. Generation
        stops at the tokenizer's EOS or any of the model's generation-config EOS ids (chat end-of-turn tokens)."""
        sec = cfg.instruction
        r = Renderer(tokenizer, sec)
        greedy = sec.greedy if greedy is None else greedy
        device = next(model.parameters()).device
        pad = pad_id_of(tokenizer)
        eos = _eos_ids(model, tokenizer)
        out: list[str] = []
        bs = eval_batch_size(cfg)
        for b in range(0, len(conversations), bs):
            prompts = [r.prompt_ids(m) for m in conversations[b : b + bs]]
            prompts = [p[-cfg.max_length :] for p in prompts]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :] = torch.as_tensor(p)
                mask[i, width - len(p) :] = 1
            kw: dict[str, Any] = dict(
                max_new_tokens=sec.max_new_tokens, pad_token_id=pad, eos_token_id=eos, do_sample=not greedy
            )
            if not greedy:
                kw.update(temperature=sec.temperature, top_p=sec.top_p)
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
            for row in gen[:, width:].cpu().tolist():
                cut = next((j for j, t in enumerate(row) if t in eos), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
        return out

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg: TaskRecipe) -> dict:
        sec = cfg.instruction
        was_training = model.training
        model.eval()
        loss, tokens, cut = self.response_loss(model, tokenizer, examples, cfg)
        metrics: dict[str, Any] = {
            "n": len(examples),
            "response_loss": loss if tokens else None,
            "perplexity": math.exp(min(loss, 50.0)) if tokens else None,
            "response_tokens": tokens,
            "truncated": cut,
        }
        with_ref = [ex.fields["messages"] for ex in examples if ex.fields["messages"][-1]["role"] == "assistant"]
        with_ref = with_ref[: sec.eval_generate_max]
        if with_ref:
            preds, _ = map_split(lambda share: (self.generate(model, tokenizer, share, cfg, greedy=True), 0), with_ref)
            metrics["exact_match"] = generation_exact_match(preds, [m[-1]["content"] for m in with_ref])
            metrics["generated"] = len(with_ref)
        if was_training:
            model.train()
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg: TaskRecipe) -> list[dict]:
        """Adds ``prediction`` (the generated response) to each record (prompt or messages form)."""
        sec = cfg.instruction
        convs = []
        for i, rec in enumerate(records):
            msgs, err = to_messages(rec, sec, need_response=False)
            if err:
                raise DataError(f"record {i}: {err}")
            if msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            if not msgs:
                raise DataError(f"record {i}: nothing to answer (no user message)")
            convs.append(msgs)
        was_training = model.training
        model.eval()
        preds = self.generate(model, tokenizer, convs, cfg)
        if was_training:
            model.train()
        return [{**rec, "prediction": p} for rec, p in zip(records, preds)]


TASK = InstructionTask()
