"""The report's vocabulary section: per pretrain stage that extended the tokenizer, what it added
and the tokens per word before and after (the arms' per-word perplexities are in the comparison)."""

from __future__ import annotations

from typing import Callable

NOTE = (
    "Per-token perplexity does not compare across tokenizers; the comparison's word ppl columns (total NLL / words) do."
)


def _stages(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r.get("vocab") and r.get("id") not in seen:
            seen.add(r.get("id"))
            out.append(r)
    return out


def _cells(r: dict) -> list[str]:
    v = r["vocab"]

    def n(x):
        return "—" if x is None else f"{x:.3f}"

    return [
        r.get("stage", "?"),
        str(v.get("added")),
        str(v.get("init")),
        n(v.get("tokens_per_word_before")),
        n(v.get("tokens_per_word_after")),
        str(v.get("text") or "—"),
        ", ".join(repr(w) for w in (v.get("top") or [])),
    ]


HEAD = ["stage", "tokens added", "init", "tokens/word before", "after", "measured on", "first words added"]


def vocab_md(rows: list[dict]) -> list[str]:
    stages = _stages(rows)
    if not stages:
        return []
    lines = [
        "## Vocabulary extension",
        "",
        NOTE,
        "",
        "| " + " | ".join(HEAD) + " |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in stages]
    return lines + [""]


def vocab_html(rows: list[dict], e: Callable[[str], str]) -> list[str]:
    stages = _stages(rows)
    if not stages:
        return []
    parts = [
        f"<h2>Vocabulary extension</h2><p class='note'>{e(NOTE)}</p><table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in HEAD)
        + "</tr>"
    ]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(r)) + "</tr>" for r in stages]
    return parts + ["</table>"]
