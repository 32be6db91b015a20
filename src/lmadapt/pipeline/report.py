"""report.md and report.html of a pipeline run, built from the run folder alone.

    lmadapt report runs/demo            # rebuilds runs/demo/report.md and runs/demo/report.html

Sources: ``results.jsonl`` (one row per arm, seed and stage), ``run_state.json``, ``pipeline.yaml``,
and each stage folder's ``metrics.json``, ``logs.jsonl`` and ``token_accounting.json``. The HTML
file is self-contained (inline CSS, inline SVG plots); report.md links the same plots as SVG files
in ``report_files/``.

The numbers come from compare.py (arms x columns, mean ± std, difference to the reference arm and
its noise rule) and verdict.py (did each adaptation pay off, at what cost), gathered by report_data.py
(tables and plot series); report_md.py and report_html.py render the two files, with the cells and
notes they share in report_cells.py. This module writes them, and prints the plain-text summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.outputs import atomic_write_text
from .compare import comparison, load_run, noise_rule
from .report_cells import baseline_note, fmt_diff, fmt_stat
from .report_data import build
from .report_html import render_html
from .report_md import ASSETS_DIR, render_markdown
from .verdict import sentence, verdicts

# baseline_note and the renderers stay importable from here, the report's front door.
__all__ = [
    "ASSETS_DIR",
    "baseline_note",
    "render_html",
    "render_markdown",
    "summary_table",
    "write_report",
    "add_report_arguments",
    "main_report",
]


# --- the plain-text summary (printed after `lmadapt run`) ------------------------------------------


def summary_table(run_dir: str | Path) -> str:
    """Plain-text comparison table (arms x metrics, mean ± std, diff to the reference arm)."""
    run = load_run(run_dir)
    comp = comparison(run)
    keys = [c.key for c in run.columns]
    lines = [["arm"] + [c.label for c in run.columns]]
    for row in comp["rows"]:
        lines.append(
            [row["arm"]] + [fmt_stat(row["cells"][k]["stat"], k).replace(" (n=", " n=").rstrip(")") for k in keys]
        )
    diff_lines = [["diff to " + comp["reference"]] + [c.label for c in run.columns]]
    for row in comp["rows"]:
        if row["arm"] == comp["reference"]:
            continue
        diff_lines.append(
            [row["arm"]] + [fmt_diff(row["cells"][k]["cmp"], k) if row["cells"][k]["cmp"] else "—" for k in keys]
        )

    def render(rows):
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    text = render(lines)
    if len(diff_lines) > 1:
        text += "\n\n" + render(diff_lines)
    answers = [sentence(v) for v in verdicts(run.rows, comp, run.columns)]
    if answers:
        text += "\n\nVerdict (did it pay off, and at what cost?):\n" + "\n".join(f"  {a}" for a in answers)
    return text + "\n\n" + noise_rule(run)


def write_report(run_dir: str | Path) -> dict:
    """(Re)build report.md, report.html and report_files/*.svg in ``run_dir``; returns their paths."""
    run = load_run(run_dir)
    b = build(run)
    folder = Path(run_dir)
    for name, svg in b["plots"].items():
        atomic_write_text(folder / ASSETS_DIR / f"{name}.svg", svg + "\n")
    md, page = folder / "report.md", folder / "report.html"
    atomic_write_text(md, render_markdown(run, b))
    atomic_write_text(page, render_html(run, b))
    return {"md": str(md), "html": str(page)}


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("run_dir", help="output_dir of `lmadapt run` (holds results.jsonl)")
    return parser


def main_report(args: argparse.Namespace) -> int:
    paths = write_report(args.run_dir)
    print(summary_table(args.run_dir))
    print(f"\nwrote {paths['md']} and {paths['html']}")
    return 0
