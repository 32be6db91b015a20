"""Conversations for instruction tuning: records -> ``{role, content}`` messages -> token ids + labels.

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

Kept apart from tasks/instruction.py (the task: reading, packing, training, scoring) because
training, generation and the retention check (tasks/retention.py) must render identically.
"""

from __future__ import annotations

try:  # chat templates need jinja2 (transformers' "chat-template" extra)
    from jinja2.exceptions import TemplateError
except ImportError:  # pragma: no cover - then no template can be rendered at all

    class TemplateError(Exception):
        pass


from ..config.base import ConfigError
from ..config.tasks import InstructionConfig

IGNORE = -100
ROLES = ("system", "user", "assistant")
PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", "assistant": "### Response:\n"}
PLAIN_SEPARATOR = "\n\n"


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
        return [], (
            f"missing field {sec.prompt_field!r} (records need {sec.prompt_field!r} + {sec.response_field!r} "
            f"or {sec.messages_field!r}; keys: {', '.join(map(str, rec))})"
        )
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
        except Exception:  # noqa: BLE001 - templates may index messages[0]
            return ""

    def pieces(self, msgs: list[dict], generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """(text, trained) runs of the rendered conversation.

        Training (``generation_prompt`` false): everything after the last assistant turn is dropped.
        ``generation_prompt``: all of ``msgs`` and then the prompt of a new assistant answer, split
        into the same runs as in training so that the prompt tokens match the trained ones."""
        if not generation_prompt:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            msgs = msgs[: last + 1]
        runs: list[tuple[str, bool]] = []
        if self.chat:
            done = ""
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                prompt = self._chat_text(msgs[:k], True) if k else self._empty_prompt()
                full = self._chat_text(msgs[: k + 1], False)
                if not prompt.startswith(done) or not full.startswith(prompt):
                    raise ConfigError(
                        "instruction: this tokenizer's chat template does not render a conversation turn by turn "
                        "(an earlier turn changes when a later one is added), so assistant tokens cannot be located; "
                        "use instruction.template: plain"
                    )
                runs.append((prompt[len(done) :], False))
                runs.append((full[len(prompt) :], True))
                done = full
            if generation_prompt:
                prompt = self._chat_text(msgs, True)
                if not prompt.startswith(done):
                    raise ConfigError(
                        "instruction: this tokenizer's chat template renders earlier turns differently "
                        "in a generation prompt; use instruction.template: plain"
                    )
                runs.append((prompt[len(done) :], False))
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
