"""Character spans <-> BIO tags, over words and over subword tokens (the extraction task's labels).

Every extraction example is ``text`` + character ``spans`` ``(start, end, label)``; these functions
check raw spans, turn word-level BIO tags into spans and back, label each subword of a tokenized
text (offset mapping) with ``B-X``/``I-X``/``O``, and merge predicted token tags back into spans.
Kept apart from tasks/extraction.py (the task: reading, encoding, training, prediction) because
they are pure functions of text, offsets and tags, tested on their own.
"""

from __future__ import annotations

from typing import Any, Sequence

Span = tuple[int, int, str]


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
            return [], (
                f"field {field!r}[{ib}]: span [{b[0]}, {b[1]}) {text[b[0] : b[1]]!r} overlaps "
                f"{field!r}[{ia}] [{a[0]}, {a[1]}) {text[a[0] : a[1]]!r}"
            )
    return [sp for sp, _ in out], None


def tags_to_spans(
    tokens: Any, tags: Any, tokens_field: str = "tokens", tags_field: str = "tags"
) -> tuple[str, list[Span], str | None]:
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


def spans_to_token_tags(
    text: str,
    offsets,
    spans: Sequence[Span],
    special: Sequence[int] | None = None,
    word_ids: Sequence[int | None] | None = None,
    subword_labels: str = "all",
) -> list[str | None]:
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
            if content[i] is None:  # whitespace-only: transparent when decoding, never labelled
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


def fill_first_subword_tags(
    text: str, offsets, tags: Sequence[str | None], word_ids: Sequence[int | None]
) -> list[str | None]:
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
