"""Numbers as the report and the verdicts print them."""

from __future__ import annotations

import math


def fmt_value(v: float | None, key: str = "") -> str:
    """A metric (3 decimals) or, for keys ending in ``ppl``, a perplexity; "—" when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if key.endswith("ppl"):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:.3f}"


def fmt_factor(f: float | None) -> str:
    """A ratio as a direction and size: 0.31 -> "÷3.22", 1.16 -> "×1.16"."""
    if f is None:
        return "—"
    if f < 1:
        return f"÷{1 / f:.2f}" if 1 / f < 10 else f"÷{1 / f:.1f}"
    return f"×{f:.2f}" if f < 10 else f"×{f:.1f}"


def fmt_tokens(n: float) -> str:
    """A signed token count: +1.02M, −12.3k."""
    a = abs(n)
    text = (
        f"{a / 1e9:.2f}B"
        if a >= 1e9
        else f"{a / 1e6:.2f}M"
        if a >= 1e6
        else f"{a / 1e3:.1f}k"
        if a >= 1e3
        else f"{a:.0f}"
    )
    return ("−" if n < 0 else "+") + text


def fmt_seconds(s: float) -> str:
    """A signed duration: +42 s, +3.5 min, −1.2 h."""
    a = abs(s)
    text = f"{a / 3600:.1f} h" if a >= 3600 else f"{a / 60:.1f} min" if a >= 120 else f"{a:.0f} s"
    return ("−" if s < 0 else "+") + text
