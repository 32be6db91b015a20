"""Self-contained SVG line charts for the run report: no plotting library, no scripts, no external
files, so report.html opens anywhere (and a browser's print-to-PDF keeps the plots sharp).

    svg_chart([{"label": "dapt_ft", "color": "#1f77b4", "points": [(0, 3.2), (1000, 2.9)]}],
              title="loss", xlabel="tokens", ylabel="loss", logy=False)

A series may also set ``dash`` (an SVG stroke-dasharray) and ``markers``; points with ``y=None``
(or ``y <= 0`` on a log axis) are skipped rather than drawn as zero.
"""

from __future__ import annotations

import html
import math


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    for mults in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        ticks = [
            m * 10**e
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mults
            if lo <= m * 10**e <= hi
        ]
        if len(ticks) >= 4:
            return ticks
    if len(ticks) >= 3:
        return ticks
    return [t for t in _nice_ticks(lo, hi) if lo <= t <= hi] or sorted({lo, hi})  # a narrow range


def _short(v: float) -> str:
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    if a >= 10 or v == int(v):
        return f"{v:g}"
    return f"{v:.3g}"


def _y_scale(ys: list[float], logy: bool, top: float, ph: float):
    """The y axis: value -> pixel, and its ticks (log: 5% margin, widened to x1.2 at least; linear: 6%)."""
    if logy:
        y0, y1 = min(ys), max(ys)
        if y1 / y0 < 1.2:
            y0, y1 = y0 / 1.1, y1 * 1.1
        ly0, ly1 = math.log10(y0), math.log10(y1)
        pad = (ly1 - ly0) * 0.05
        ly0, ly1 = ly0 - pad, ly1 + pad
        fy = lambda y: top + ph - (math.log10(y) - ly0) / (ly1 - ly0) * ph  # noqa: E731
        yticks = _log_ticks(10**ly0, 10**ly1)
    else:
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.06 or abs(y1) * 0.05 or 1
        y0, y1 = y0 - pad, y1 + pad
        fy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
        yticks = [t for t in _nice_ticks(y0, y1) if y0 <= t <= y1]
    return fy, yticks


def _lines(series: list[dict], fx, fy, logy: bool) -> list[str]:
    """Each series as a polyline (markers when asked, or when it has one point)."""
    esc, out = html.escape, []
    for s in series:
        p = [(fx(x), fy(y)) for x, y in s["points"] if y is not None and (not logy or y > 0)]
        if not p:
            continue
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in p)
        out.append(
            f'<polyline points="{d}" fill="none" stroke="{s["color"]}" stroke-width="1.8"{dash}>'
            f"<title>{esc(s['label'])}</title></polyline>"
        )
        if s.get("markers") or len(p) == 1:
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.8" fill="{s["color"]}"/>' for x, y in p)
    return out


def _legend(series: list[dict], left: float, pw: float, height: int) -> list[str]:
    """Two columns of line samples and labels below the plot."""
    esc, out = html.escape, []
    for i, s in enumerate(series):
        col, row = i % 2, i // 2
        lx, ly = left + col * (pw / 2), height + 6 + row * 16
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(
            f'<line x1="{lx:.1f}" y1="{ly:.1f}" x2="{lx + 22:.1f}" y2="{ly:.1f}" stroke="{s["color"]}" stroke-width="2"{dash}/>'
        )
        label = s["label"] if len(s["label"]) <= 42 else s["label"][:40] + "…"
        out.append(f'<text x="{lx + 28:.1f}" y="{ly + 4:.1f}" font-size="11" fill="#222">{esc(label)}</text>')
    return out


def svg_chart(
    series: list[dict], *, title: str, xlabel: str, ylabel: str, logy: bool = False, width: int = 540, height: int = 300
) -> str:
    """A self-contained SVG line chart (axes, ticks, grid, legend below)."""
    esc = html.escape
    pts = [(x, y) for s in series for x, y in s["points"] if y is not None and (not logy or y > 0)]
    legend_rows = math.ceil(len(series) / 2)
    total_h = height + 4 + 16 * legend_rows
    if not pts:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" role="img">'
            f'<text x="10" y="30" font-size="13">{esc(title)}: no data</text></svg>'
        )
    left, right, top, bottom = 62, 14, 28, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    fy, yticks = _y_scale(ys, logy, top, ph)
    fx = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    xticks = [t for t in _nice_ticks(x0, x1) if x0 <= t <= x1]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}" '
        f'role="img" aria-label="{esc(title)}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect x="0" y="0" width="{width}" height="{total_h}" fill="#fff"/>',
        f'<text x="{left}" y="17" font-size="13" font-weight="bold" fill="#222">{esc(title)}</text>',
    ]
    for t in yticks:
        y = fy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10.5" text-anchor="end" fill="#444">{_short(t)}</text>'
        )
    for t in xticks:
        x = fx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 15}" font-size="10.5" text-anchor="middle" fill="#444">{_short(t)}</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{top + ph + 33}" font-size="11.5" text-anchor="middle" fill="#222">{esc(xlabel)}</text>'
    )
    out.append(
        f'<text transform="translate(14,{top + ph / 2:.1f}) rotate(-90)" font-size="11.5" text-anchor="middle" '
        f'fill="#222">{esc(ylabel)}{" (log scale)" if logy else ""}</text>'
    )
    out += _lines(series, fx, fy, logy)
    out += _legend(series, left, pw, height)
    out.append("</svg>")
    return "\n".join(out)
