"""`lmadapt advise`: which adaptation to do, decided from measurements of the user's own data and model.

    lmadapt advise models/base --goal classify --domain notes/ --task-train train.jsonl \\
        --output advice.json --pipeline pipeline.yaml

Two halves, kept apart so the rules are testable without a model:

* :func:`measure` (``measure.py``) samples the inputs and the base model: domain shift (perplexity of
  the domain vs the shipped general-English reference), vocabulary overlap and tokenizer
  fragmentation, volume, label counts and lengths, and cost (FLOPs, a timed training probe, memory).
* :func:`recommend` (``rules.py``) turns that dict and the goal into an :class:`Advice`: the plan
  (continued pretraining / task-adaptive pretraining / fine-tuning, LoRA or full), every reason with
  its measured number and threshold, a confidence, and the pipeline arms that would confirm it.

:func:`build_pipeline` (``pipeline.py``) writes those arms as a YAML for ``lmadapt run``.

Output JSON (``--output``)::

    {"format": "lmadapt-advice/1", "goal": ..., "inputs": {model, domain, task_train, ...},
     "advice": {goal, recommendation, steps, method, confidence, summary,
                reasons: [{rule, finding, value, threshold, supports}], missing, warnings, arms,
                train_embeddings, vocabulary_candidates, thresholds},
     "measurements": {model, reference, domain, task, shift, vocabulary, cost, timing},
     "pipeline": "pipeline.yaml" | null}

``--measurements advice.json`` decides again from saved measurements (e.g. for another goal) without
loading the model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .measure import DEFAULT_REFERENCE, measure
from .memory import render_advise_plan
from .pipeline import build_pipeline, pipeline_yaml, write_pipeline
from .rules import GOALS, THRESHOLDS, Advice, recommend

FORMAT = "lmadapt-advice/1"

__all__ = [
    "Advice",
    "DEFAULT_REFERENCE",
    "FORMAT",
    "GOALS",
    "THRESHOLDS",
    "add_arguments",
    "build_pipeline",
    "main",
    "measure",
    "pipeline_yaml",
    "recommend",
    "render",
    "write_pipeline",
]


def add_arguments(parser) -> None:
    """Arguments of `lmadapt advise` (the lead's cli.py adds a subparser and calls this)."""
    parser.add_argument("model", nargs="?", help="base model folder (or hub id); not needed with --measurements")
    parser.add_argument(
        "--goal",
        required=True,
        choices=GOALS,
        help="generate/understand domain language, or classify/extract/instruct in the domain",
    )
    g = parser.add_argument_group("unlabeled domain text")
    g.add_argument(
        "--domain",
        help="domain corpus: file, directory, glob, datasets folder (any corpus format) or hub:owner/name[subset]:split",
    )
    g.add_argument("--text-field", default="text", help="text field of the domain corpus (jsonl/csv/parquet)")
    g.add_argument(
        "--split-docs",
        default="file",
        choices=["file", "blank_line", "line"],
        help="how .txt/.md files split into documents",
    )
    g.add_argument(
        "--domain-valid",
        help="held-out domain text for the pipeline's pretraining evaluation (default: a 2%% hash split of --domain)",
    )
    t = parser.add_argument_group("labeled task data")
    t.add_argument("--task-train", help="labeled training data (.jsonl/.csv/.tsv/.parquet)")
    t.add_argument("--task-dev", help="dev file for the pipeline (default: 10%% of --task-train)")
    t.add_argument("--task-test", help="test file for the pipeline (default: 20%% of --task-train)")
    t.add_argument("--task-text-field", default="text", help="text field of the labeled data")
    t.add_argument("--label-field", default="label", help="label field of the labeled data")
    _add_measuring_output_arguments(parser)


def _add_measuring_output_arguments(parser) -> None:
    m = parser.add_argument_group("measuring")
    m.add_argument(
        "--reference",
        default=None,
        help=f"general-English reference text (default: the shipped {DEFAULT_REFERENCE.name})",
    )
    m.add_argument(
        "--time-budget", type=float, default=40.0, help="seconds for the model work (perplexity + training probe)"
    )
    m.add_argument("--max-eval-tokens", type=int, default=16384, help="most tokens scored per text set")
    m.add_argument(
        "--sample-chars", type=int, default=250_000, help="characters sampled from each text for words and perplexity"
    )
    m.add_argument(
        "--no-probe", action="store_true", help="skip the timed training steps (estimate speed from scoring)"
    )
    m.add_argument(
        "--device",
        default="auto",
        choices=["cpu", "cuda", "auto"],
        help="device for scoring and the probe (auto: the GPU when there is one, so the budgets fit it)",
    )
    m.add_argument(
        "--measurements", help="decide from the measurements in this advice/measurements JSON instead of measuring"
    )
    o = parser.add_argument_group("output")
    o.add_argument("--output", help="write the advice (and measurements) as JSON here")
    o.add_argument("--pipeline", help="write a pipeline YAML for `lmadapt run` here")
    o.add_argument("--pipeline-output-dir", default="runs/advise", help="output_dir written into the pipeline")
    o.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds written into the pipeline")
    o.add_argument(
        "--train-hours",
        type=float,
        default=2.0,
        help="time budget per pretraining stage in the pipeline (caps train.max_tokens using the probe)",
    )


def _read_measurements(path: str) -> dict:
    """The measurements of a saved advice (or bare measurements) JSON; anything else is one clear line."""
    from ..config.base import ConfigError

    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--measurements: {path} is not JSON ({exc}); give the file `lmadapt advise --output` wrote"
        ) from None
    measurements = saved.get("measurements", saved) if isinstance(saved, dict) else None
    if not isinstance(measurements, dict) or not isinstance(measurements.get("model"), dict):
        raise ConfigError(
            f"--measurements: {path} holds no measurements (no 'model' section); give the file "
            "`lmadapt advise --output` wrote"
        )
    return measurements


def main(args) -> int:
    """Run `lmadapt advise` from parsed ``args``; prints the table, writes --output/--pipeline. Returns 0."""
    from ..runtime.folders import check_output_file

    for flag, path in (("--output", args.output), ("--pipeline", args.pipeline)):
        if path:
            check_output_file(path, flag)  # before minutes of measuring, not after
    measurements = _read_measurements(args.measurements) if args.measurements else _measure(args)
    advice = recommend(measurements, args.goal)
    pipeline_path, notes = _pipeline(args, advice, measurements) if args.pipeline else (None, [])
    print(render(advice, measurements, notes))
    if args.output:
        _write_output(args, advice, measurements, pipeline_path)
    return 0


def _measure(args) -> dict:
    if not args.model:
        raise FileNotFoundError("advise: give the base model folder (or --measurements FILE)")
    if not args.domain and not args.task_train:
        print("advise: no --domain and no --task-train: measuring the model only", file=sys.stderr)
    return measure(
        args.model,
        domain=args.domain,
        text_field=args.text_field,
        split_docs=args.split_docs,
        task_train=args.task_train,
        task_text_field=args.task_text_field,
        label_field=args.label_field,
        reference=args.reference,
        sample_chars=args.sample_chars,
        max_eval_tokens=args.max_eval_tokens,
        time_budget=args.time_budget,
        probe=not args.no_probe,
        device=args.device,
        progress=lambda msg: print(f"advise: {msg}", file=sys.stderr),
    )


def _pipeline(args, advice: Advice, measurements: dict) -> tuple[str | None, list[str]]:
    """Writes --pipeline when the advice has arms to compare; (its path or None, the builder's notes)."""
    if not advice.arms:
        print("advise: no pipeline written: there is nothing to compare yet (see 'missing')", file=sys.stderr)
        return None, []
    pipe, notes = build_pipeline(
        advice,
        measurements,
        model_dir=args.model or measurements["model"]["path"],
        domain=args.domain or (measurements.get("domain") or {}).get("path"),
        text_field=args.text_field,
        split_docs=args.split_docs,
        domain_valid=args.domain_valid,
        reference=args.reference or str(DEFAULT_REFERENCE),
        task_train=args.task_train or (measurements.get("task") or {}).get("path"),
        task_dev=args.task_dev,
        task_test=args.task_test,
        task_text_field=args.task_text_field,
        label_field=args.label_field,
        seeds=args.seeds,
        output_dir=args.pipeline_output_dir,
        train_hours=args.train_hours,
    )
    write_pipeline(args.pipeline, pipe, advice, notes)
    return str(args.pipeline), notes


def _write_output(args, advice: Advice, measurements: dict, pipeline_path: str | None) -> None:
    out = {
        "format": FORMAT,
        "goal": args.goal,
        "inputs": {
            k: getattr(args, k, None)
            for k in (
                "model",
                "domain",
                "text_field",
                "task_train",
                "task_dev",
                "task_test",
                "task_text_field",
                "label_field",
                "reference",
            )
        },
        "advice": advice.to_dict(),
        "measurements": measurements,
        "pipeline": pipeline_path,
    }
    from ..runtime.outputs import atomic_write_text

    atomic_write_text(args.output, json.dumps(out, indent=2, default=str) + "\n")


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    return str(x)


def _table(rows: list[tuple], headers: tuple) -> list[str]:
    cells = [tuple(str(c) for c in r) for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render(advice: Advice, m: dict, notes: list[str] | None = None) -> str:
    """The human-readable report: recommendation, reasons with numbers and thresholds, key measurements."""
    out = [
        f"recommendation: {advice.recommendation}" + (f" ({advice.method})" if advice.method else ""),
        f"confidence:     {advice.confidence}",
        f"goal:           {advice.goal}",
        "",
        advice.summary,
        "",
    ]
    if advice.reasons:
        rows = [
            (r["rule"], r["finding"], _num(r["value"]), _num(r["threshold"]), r["supports"] or "-")
            for r in advice.reasons
        ]
        out += _table(rows, ("rule", "finding", "value", "threshold", "supports")) + [""]
    vo, cost = m.get("vocabulary") or {}, m.get("cost") or {}
    meas = _data_rows(m) + _cost_rows(vo, cost)
    if meas:
        out += _table(meas, ("measurement", "value")) + [""]
    mem = cost.get("memory") or {}
    plan_lines = render_advise_plan(mem.get("plan"))
    if plan_lines:
        out += plan_lines + [""]
    if vo.get("candidates"):
        out.append(
            "domain terms most over-represented vs general text (vocabulary candidates): "
            + ", ".join(f"{c['word']} ({c['pieces']})" if c.get("pieces") else c["word"] for c in vo["candidates"])
        )
    for w in advice.warnings:
        out.append(f"warning: {w}")
    for x in advice.missing:
        out.append(f"missing: {x}")
    for n in notes or []:
        out.append(f"note: {n}")
    if advice.arms:
        out.append("pipeline arms to confirm: " + ", ".join(advice.arms))
    return "\n".join(out).rstrip() + "\n"


def _data_rows(m: dict) -> list[tuple[str, str]]:
    """The measurement table's rows about the texts and the model: volume, lengths, classes, context, shift."""
    sh, dom, task = (m.get(k) or {} for k in ("shift", "domain", "task"))
    meas = []
    if dom:
        meas += [
            ("domain documents / chars", f"{_num(dom.get('documents'))} / {_num(dom.get('chars'))}"),
            ("domain tokens (estimated)", _num(dom.get("estimated_tokens"))),
            (
                "domain length p50 / p95 tokens",
                f"{_num(dom.get('length_tokens_p50'))} / {_num(dom.get('length_tokens_p95'))}",
            ),
        ]
    if task:
        meas.append(("labeled examples", _num(task.get("examples"))))
        if task.get("classes"):
            meas.append(
                (
                    "classes; per class min / median",
                    f"{task['classes']}; {task['per_class_min']} / {_num(task['per_class_median'])}",
                )
            )
        meas.append(
            (
                "task length p50 / p95 tokens",
                f"{_num(task.get('length_tokens_p50'))} / {_num(task.get('length_tokens_p95'))}",
            )
        )
    if (m.get("model") or {}).get("max_position_embeddings"):
        meas.append(("model context (tokens)", _num(m["model"]["max_position_embeddings"])))
    for text in ("domain", "task"):
        if sh.get(text):
            x, ref = sh[text], sh["reference"]
            meas.append(
                (
                    f"{sh['metric']} {text} / general",
                    f"{x['perplexity']:.3g} / {ref['perplexity']:.3g} "
                    f"(ratio {x['ratio']:.2f}; {x['tokens']:,} / {ref['tokens']:,} tokens)",
                )
            )
    return meas


def _cost_rows(vo: dict, cost: dict) -> list[tuple[str, str]]:
    """The measurement table's rows about the vocabulary and the cost (FLOPs, time, memory)."""
    meas = []
    if vo:
        meas.append(("vocabulary overlap (top-k)", f"{_num(vo.get('overlap'))} (k={vo.get('top_k')})"))
        meas.append(
            (
                ">=3-piece share of top 1k words",
                f"{_num(vo.get('domain_split3_share'))} vs general {_num(vo.get('reference_split3_share'))}",
            )
        )
    if cost.get("flops_per_epoch"):
        meas.append(("FLOPs per epoch (6 N D)", f"{cost['flops_per_epoch']:.3g}"))
    if cost.get("seconds_per_epoch"):
        probe = cost.get("probe") or {}
        meas.append(
            (
                "time per epoch",
                f"{cost['seconds_per_epoch'] / 3600:.2f} h at {_num(probe.get('tokens_per_second'))} tokens/s ({probe.get('device')})",
            )
        )
    mem = cost.get("memory") or {}
    if mem.get("full_bytes"):
        gib = 2**30
        avail = f" of {mem['available_bytes'] / gib:.1f} GiB" if mem.get("available_bytes") else ""
        meas.append(
            ("memory full / LoRA r=16", f"{mem['full_bytes'] / gib:.2f} / {mem['lora_bytes'] / gib:.2f} GiB{avail}")
        )
    return meas
