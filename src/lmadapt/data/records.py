"""One record of corpus text checked, and a bad one reported: what every format reader shares.

A reader (:mod:`.formats` for text files, :mod:`.columnar` for parquet and datasets) raises
:class:`BadRecord` for a record it cannot use; the caller adds where it happened and hands it to
:meth:`Ctx.problem`, which raises :class:`CorpusError` or, with ``on_error: skip``, counts it in the
source's stats and keeps a few examples for the report.
"""

from __future__ import annotations

import difflib

from .documents import SourceStats

_MAX_EXAMPLES = 10


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and, where it applies, the line (and field)."""


class BadRecord(Exception):
    """A record-level problem; the caller adds where it happened and applies on_error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Ctx:
    """Where a source's bad records go: raised (``on_error: raise``) or counted in its stats and skipped."""

    def __init__(self, stats: "SourceStats", on_error: str):
        self.stats, self.on_error = stats, on_error

    def problem(self, where: str, bad: BadRecord, note: str = "") -> None:
        text = f"{where}: {bad.message}{note}"
        if self.on_error == "raise":
            raise CorpusError(text + " (on_error: skip skips and counts such records)")
        st = self.stats
        st.skipped += 1
        st.skip_reasons[bad.reason] = st.skip_reasons.get(bad.reason, 0) + 1
        if len(st.first_skips) < _MAX_EXAMPLES:
            st.first_skips.append(text)


def check_text(value, fld: str) -> str:
    if value is None:
        raise BadRecord("null text", f"field {fld!r} is null")
    if not isinstance(value, str):
        raise BadRecord("text not a string", f"field {fld!r} is {type(value).__name__}, expected a string")
    text = value.strip()
    if not text:
        raise BadRecord("empty text", f"field {fld!r} is empty")
    try:  # JSON "\ud800" escapes give lone surrogates that tokenizers cannot encode later
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRecord(
            "invalid unicode", f"field {fld!r} has an unpaired surrogate at character {exc.start}"
        ) from None
    return text


def keys_hint(fld: str, keys: list) -> str:
    names = [str(k) for k in keys]
    near = difflib.get_close_matches(fld, names, n=1, cutoff=0.5)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"(has: {shown or 'nothing'})" + (f"; did you mean text_field: {near[0]}?" if near else "")
