"""Instruction tuning (supervised fine-tuning, SFT) of causal LMs.

Input records (JSONL), either form per record (field names in the ``instruction:`` section):

* ``{"prompt": "...", "response": "...", "system": "..."?}``
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (multi-turn)

Rendering. With the tokenizer's chat template (``template: auto`` when it has one, or ``chat``) a
conversation is rendered with ``apply_chat_template`` turn by turn: the text an assistant turn adds
after the generation prompt is the trained part. Without one (``plain``)::

    ### System:\\n{system}\\n\\n            (only when there is a system message)
    ### Instruction:\\n{user}\\n\\n
    ### Response:\\n{assistant}<eos>       (then "\\n\\n" and the next turn, for multi-turn)

Non-trained text runs and every response are tokenized separately and concatenated, and a
generation prompt is built the same way, so training and generation see the same tokens.

Labels. Loss only on assistant tokens (everything else -100). An EOS token is appended after
every response (unless the chat template already put one there) and is always labelled: labels
come from this rendering, never from ``input_ids != pad`` (so pad == eos is harmless). The first
token of an example is never labelled.

Packing (``packing: true``): examples are laid one after another into blocks of at most
``max_length`` tokens (an example never straddles two blocks); position ids restart at 0 for every
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

try:                                   # chat templates need jinja2 (transformers' "chat-template" extra)
    from jinja2.exceptions import TemplateError
except ImportError:                    # pragma: no cover - then no template can be rendered at all
    class TemplateError(Exception):
        pass

from ..config.base import ConfigError
from ..config.tasks import InstructionConfig
from ..runtime.dist import map_split, sum_split
from .base import DataError, Example, ReadReport, allow_truncation, eval_batch_size, on_error_mode, recipe_section
from .classification import model_kwargs, pad_id_of
from .labeled_io import read_records
from .span_metrics import generation_exact_match

IGNORE = -100
ROLES = ("system", "user", "assistant")
PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", "assistant": "### Response:\n"}
PLAIN_SEPARATOR = "\n\n"


# --- recipe access --------------------------------------------------------------------------------

def section(cfg) -> InstructionConfig:
    """The ``instruction:`` section of a finetune recipe (or the section itself; defaults when absent)."""
    return recipe_section(cfg, "instruction", InstructionConfig)


def _eval_batch_size(cfg) -> int:
    return eval_batch_size(cfg, default=8)


# --- records -> conversations ---------------------------------------------------------------------

def to_messages(rec: dict, sec: InstructionConfig, *, need_response: bool = True) -> tuple[list[dict], str | None]:
    """A record as a list of ``{"role", "content"}`` messages, or ([], error message).

    With ``need_response`` the conversation must contain a non-empty assistant turn."""
    if not isinstance(rec, dict):
        return [], f"expected a JSON object, got {type(rec).__name__}"
    if sec.messages_field in rec:
        msgs = rec[sec.messages_field]
        f = sec.messages_field
        if not isinstance(msgs, list) or not msgs:
            return [], f"field {f!r} must be a non-empty list of {{role, content}}"
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                return [], f"field {f!r}[{i}]: expected {{role, content}}, got {m!r}"
            if m["role"] not in ROLES:
                return [], f"field {f!r}[{i}]: unknown role {m['role']!r} (known: {', '.join(ROLES)})"
            if not isinstance(m["content"], str):
                return [], f"field {f!r}[{i}]: content must be a string, got {type(m['content']).__name__}"
            if m["role"] == "assistant" and need_response and not m["content"].strip():
                return [], f"field {f!r}[{i}]: empty assistant response"
            out.append({"role": m["role"], "content": m["content"]})
        if need_response and not any(m["role"] == "assistant" for m in out):
            return [], f"field {f!r}: conversation has no assistant turn (nothing to learn)"
        return out, None
    if sec.prompt_field not in rec:
        return [], (f"missing field {sec.prompt_field!r} (records need {sec.prompt_field!r} + {sec.response_field!r} "
                    f"or {sec.messages_field!r}; keys: {', '.join(map(str, rec))})")
    prompt = rec[sec.prompt_field]
    if not isinstance(prompt, str) or not prompt.strip():
        return [], f"field {sec.prompt_field!r} must be a non-empty string"
    out = []
    system = rec.get(sec.system_field) if sec.system_field else None
    if system is not None:
        if not isinstance(system, str):
            return [], f"field {sec.system_field!r} must be a string"
        if system.strip():
            out.append({"role": "system", "content": system})
    out.append({"role": "user", "content": prompt})
    if need_response:
        if sec.response_field not in rec:
            return [], f"missing field {sec.response_field!r}"
        resp = rec[sec.response_field]
        if not isinstance(resp, str) or not resp.strip():
            return [], f"field {sec.response_field!r}: empty response"
        out.append({"role": "assistant", "content": resp})
    elif isinstance(rec.get(sec.response_field), str):
        out.append({"role": "assistant", "content": rec[sec.response_field]})
    return out, None


# --- rendering ------------------------------------------------------------------------------------

class Renderer:
    """Turns conversations into token ids + a trained-token mask, with the chat or the plain template."""

    def __init__(self, tokenizer, sec: InstructionConfig):
        self.tok = tokenizer
        self.sec = sec
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if sec.template == "chat" and not has_chat:
            raise ConfigError("instruction.template: chat, but this tokenizer has no chat template; use plain or auto")
        self.chat = sec.template == "chat" or (sec.template == "auto" and has_chat)
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ConfigError("instruction: the tokenizer has no EOS token; a response needs one to end")
        self.bos = None
        if not self.chat and tokenizer.bos_token_id is not None:
            probe = tokenizer("a", add_special_tokens=True)["input_ids"]
            if probe and probe[0] == tokenizer.bos_token_id:
                self.bos = tokenizer.bos_token_id

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def _chat_text(self, msgs: list[dict], gen: bool) -> str:
        out = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return out if isinstance(out, str) else str(out)

    def _empty_prompt(self) -> str:
        """The generation prompt of an empty conversation (a conversation opening with the assistant)."""
        try:
            return self._chat_text([], True)
        except Exception:        # noqa: BLE001 - templates may index messages[0]
            return ""

    def pieces(self, msgs: list[dict], generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """(text, trained) runs of the rendered conversation.

        Training (``generation_prompt`` false): everything after the last assistant turn is dropped.
        ``generation_prompt``: all of ``msgs`` and then the prompt of a new assistant answer, split
        into the same runs as in training so that the prompt tokens match the trained ones."""
        if not generation_prompt:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            msgs = msgs[:last + 1]
        runs: list[tuple[str, bool]] = []
        if self.chat:
            done = ""
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                prompt = self._chat_text(msgs[:k], True) if k else self._empty_prompt()
                full = self._chat_text(msgs[:k + 1], False)
                if not prompt.startswith(done) or not full.startswith(prompt):
                    raise ConfigError(
                        "instruction: this tokenizer's chat template does not render a conversation turn by turn "
                        "(an earlier turn changes when a later one is added), so assistant tokens cannot be located; "
                        "use instruction.template: plain")
                runs.append((prompt[len(done):], False))
                runs.append((full[len(prompt):], True))
                done = full
            if generation_prompt:
                prompt = self._chat_text(msgs, True)
                if not prompt.startswith(done):
                    raise ConfigError("instruction: this tokenizer's chat template renders earlier turns differently "
                                      "in a generation prompt; use instruction.template: plain")
                runs.append((prompt[len(done):], False))
            return runs
        ctx = ""
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                runs.append((ctx + PLAIN_HEADERS["assistant"], False))
                runs.append((m["content"], True))
                ctx = PLAIN_SEPARATOR
            else:
                ctx += PLAIN_HEADERS[m["role"]] + m["content"] + PLAIN_SEPARATOR
        if generation_prompt:
            runs.append((ctx + PLAIN_HEADERS["assistant"], False))
        return runs

    def encode(self, msgs: list[dict], generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a conversation: labels -100 outside responses, each response + EOS labelled.

        ``generation_prompt``: the ids end with the prompt of a new answer (labels then unused)."""
        ids: list[int] = [self.bos] if self.bos is not None else []
        labels: list[int] = [IGNORE] * len(ids)
        for text, trained in self.pieces(msgs, generation_prompt):
            piece = self._ids(text)
            if trained:
                if not self.chat or self.eos not in piece:
                    piece = piece + [self.eos]
                labels += piece
            else:
                labels += [IGNORE] * len(piece)
            ids += piece
        if labels:
            labels[0] = IGNORE
        return ids, labels

    def prompt_ids(self, msgs: list[dict]) -> list[int]:
        """Token ids of the generation prompt for ``msgs`` (a trailing assistant turn is the reference: dropped)."""
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return self.encode(msgs, generation_prompt=True)[0]


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

    def default_metric(self, cfg) -> str:
        """The Trainer's dev loss: labels exist only on responses, so it is the response loss."""
        return "loss"

    def read(self, path: str, cfg, *, split: str, report: ReadReport) -> list[Example]:
        sec = section(cfg)
        on_error = on_error_mode(cfg)
        raw = read_records(path, fields_required=[], on_error=on_error, report=report,
                           format=getattr(getattr(cfg, "data", None), "format", "auto"))
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

    def label_space(self, train: list[Example], cfg) -> dict:
        return {}

    def check_split(self, examples: list[Example], space: dict, split: str) -> None:
        return None

    def load_model(self, base_dir: str, space: dict, cfg):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base_dir, **model_kwargs(cfg, causal=True))

    def encode_rows(self, examples: list[Example], tokenizer, cfg, report: ReadReport | None,
                    allow_truncation: bool) -> list[tuple[list[int], list[int]]]:
        sec = section(cfg)
        r = Renderer(tokenizer, sec)
        rows = []
        for ex in examples:
            try:
                ids, labels = r.encode(ex.fields["messages"])
            except TemplateError as exc:
                raise DataError(f"{ex.origin}: the tokenizer's chat template rejects this conversation: {exc}") from None
            if len(ids) > sec.max_length:
                if not allow_truncation:
                    raise DataError(f"{ex.origin}: example is {len(ids)} tokens, more than instruction.max_length "
                                    f"{sec.max_length}; raise it or set data.allow_truncation: true")
                ids, labels = ids[:sec.max_length], labels[:sec.max_length]
                if report is not None:
                    report.truncated += 1
                if all(x == IGNORE for x in labels):
                    if report is not None:
                        report.skip(ex.origin, "no response tokens left after truncation")
                    continue
            rows.append((ids, labels))
        return rows

    def encode(self, examples: list[Example], tokenizer, space: dict, cfg, report: ReadReport):
        import datasets

        sec = section(cfg)
        rows = self.encode_rows(examples, tokenizer, cfg, report, allow_truncation(cfg))
        if sec.packing:
            blocks = pack(rows, sec.max_length)
            return datasets.Dataset.from_dict({k: [b[k] for b in blocks] for k in ("input_ids", "labels", "position_ids")})
        return datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
                                           "length": [len(r[0]) for r in rows]})   # for train.group_by_length

    def collator(self, tokenizer, cfg):
        return SFTCollator(pad_id_of(tokenizer))

    def response_loss(self, model, tokenizer, examples: list[Example], cfg) -> tuple[float, int, int]:
        """Mean loss per response token, the number of response tokens and of examples cut (split
        between the processes when there are several)."""
        total, count, cut = sum_split(lambda share: self._response_loss_sums(model, tokenizer, share, cfg), examples)
        return (total / count if count else float("nan")), count, cut

    @torch.no_grad()
    def _response_loss_sums(self, model, tokenizer, examples: list[Example], cfg) -> tuple[float, int, int]:
        report = ReadReport()
        rows = self.encode_rows(examples, tokenizer, cfg, report, allow_truncation=True)
        collate = SFTCollator(pad_id_of(tokenizer))
        device = next(model.parameters()).device
        total, count = 0.0, 0
        bs = _eval_batch_size(cfg)
        for b in range(0, len(rows), bs):
            batch = collate([{"input_ids": i, "labels": lab} for i, lab in rows[b:b + bs]])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"].to(device)[:, 1:]
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                                   ignore_index=IGNORE, reduction="sum")
            total += float(lp)
            count += int((labels != IGNORE).sum())
        return total, count, report.truncated

    @torch.no_grad()
    def generate(self, model, tokenizer, conversations: list[list[dict]], cfg, *, greedy: bool | None = None) -> list[str]:
        """Generated answers for conversations (a trailing assistant turn is dropped), batched, left-padded.

        A prompt longer than ``max_length`` keeps its last ``max_length`` tokens. Generation stops at
        the tokenizer's EOS or any of the model's generation-config EOS ids (chat end-of-turn tokens)."""
        sec = section(cfg)
        r = Renderer(tokenizer, sec)
        greedy = sec.greedy if greedy is None else greedy
        device = next(model.parameters()).device
        pad = pad_id_of(tokenizer)
        eos = _eos_ids(model, tokenizer)
        out: list[str] = []
        bs = _eval_batch_size(cfg)
        for b in range(0, len(conversations), bs):
            prompts = [r.prompt_ids(m) for m in conversations[b:b + bs]]
            prompts = [p[-sec.max_length:] for p in prompts]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, width - len(p):] = torch.as_tensor(p)
                mask[i, width - len(p):] = 1
            kw: dict[str, Any] = dict(max_new_tokens=sec.max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                      do_sample=not greedy)
            if not greedy:
                kw.update(temperature=sec.temperature, top_p=sec.top_p)
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
            for row in gen[:, width:].cpu().tolist():
                cut = next((j for j, t in enumerate(row) if t in eos), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
        return out

    def evaluate(self, model, tokenizer, examples: list[Example], space: dict, cfg) -> dict:
        sec = section(cfg)
        was_training = model.training
        model.eval()
        loss, tokens, cut = self.response_loss(model, tokenizer, examples, cfg)
        metrics: dict[str, Any] = {"n": len(examples), "response_loss": loss if tokens else None,
                                   "perplexity": math.exp(min(loss, 50.0)) if tokens else None,
                                   "response_tokens": tokens, "truncated": cut}
        with_ref = [ex.fields["messages"] for ex in examples if ex.fields["messages"][-1]["role"] == "assistant"]
        with_ref = with_ref[:sec.eval_generate_max]
        if with_ref:
            preds, _ = map_split(lambda share: (self.generate(model, tokenizer, share, cfg, greedy=True), 0), with_ref)
            metrics["exact_match"] = generation_exact_match(preds, [m[-1]["content"] for m in with_ref])
            metrics["generated"] = len(with_ref)
        if was_training:
            model.train()
        return metrics

    def predict(self, model, tokenizer, records: list[dict], cfg) -> list[dict]:
        """Adds ``prediction`` (the generated response) to each record (prompt or messages form)."""
        sec = section(cfg)
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
