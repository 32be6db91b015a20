"""`lmadapt demo`: the whole workflow on the bundled sample, on CPU, in minutes.

    lmadapt demo [--output runs/demo] [--quick] [--seeds 0 1 2] [key=value ...]

1. train a byte-level BPE tokenizer on the general sample (cached in OUTPUT/tokenizer);
2. `lmadapt run` on recipes/demo.yaml with ${tokenizer} and ${sample_data} filled in:
   base  = a small Llama pretrained from scratch on general text,
   dapt  = base + continued pretraining on computing docs with 5% general replay,
   merge = dapt's weights interpolated back toward base, the weight chosen on held-out domain and
           general text (most of the domain gain within a 5% forgetting budget),
   ft    = FOLDOC category classification fine-tuned on base (ft_only), on dapt (dapt_ft) and on
           merge (dapt_merge_ft), plus a TF-IDF + logistic regression reference row;
3. print the side-by-side table and point to report.html.

Everything goes through the pipeline's stage cache: a second `lmadapt demo` reuses every stage.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import as_file, files
from pathlib import Path

from ..config.pipeline import load_pipeline, sample_data_dir
from ..runtime.dist import is_main_process, main_first
from ..runtime.dist import log as dist_log

TOKENIZER_SETTINGS = {"kind": "bpe", "vocab_size": 4096, "data": "general/train.jsonl.gz", "min_frequency": 2}
# --quick: the same pipeline with budgets cut ~5x (a smoke run of the machinery, a minute or two).
QUICK_VARS = {"base_tokens": 60000, "dapt_tokens": 40000, "eval_every": 5, "ft_epochs": 1, "ft_max_examples": 300}


def log(msg: str) -> None:
    dist_log(msg, "lmadapt demo")


def demo_recipe_path():
    """The shipped demo.yaml (a context manager yields a real file path)."""
    return as_file(files("lmadapt") / "recipes" / "demo.yaml")


def ensure_tokenizer(folder: Path, sample: str) -> Path:
    """Train the demo tokenizer once; reuse it while its settings match."""
    marker = folder / "lmadapt_demo_tokenizer.json"
    if marker.is_file() and (folder / "tokenizer.json").is_file():
        try:
            if json.loads(marker.read_text()) == TOKENIZER_SETTINGS:
                return folder
        except ValueError:
            pass
    from ..config.data import SourceConfig
    from ..data.sources import read_source
    from ..models.tokenizers import train_tokenizer
    from ..runtime.outputs import write_json

    t0 = time.time()
    docs, _ = read_source(SourceConfig(path=str(Path(sample) / TOKENIZER_SETTINGS["data"])))
    tok = train_tokenizer(
        [d.text for d in docs],
        kind=TOKENIZER_SETTINGS["kind"],
        vocab_size=TOKENIZER_SETTINGS["vocab_size"],
        output_dir=str(folder),
        min_frequency=TOKENIZER_SETTINGS["min_frequency"],
        overwrite=True,
    )  # the demo's own subfolder (its settings marker is not in the manifest)
    write_json(marker, TOKENIZER_SETTINGS)
    log(f"trained a {len(tok):,}-token BPE tokenizer on {len(docs)} general documents in {time.time() - t0:.1f}s")
    return folder


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("overrides", nargs="*", help="key=value overrides of demo.yaml, e.g. vars.ft_epochs=2")
    parser.add_argument("--output", default="runs/demo", help="run folder (stage cache, results, report)")
    parser.add_argument(
        "--quick", action="store_true", help="~5x smaller budgets: a minute or two, for checking the machinery"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="fine-tuning seeds (each adds one fine-tune per arm; the pretrained models are shared)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run up to N independent stages at once (see `lmadapt run --jobs`)",
    )
    return parser


def demo_overrides(args: argparse.Namespace) -> list[str]:
    over = [f"output_dir={args.output}", f"seeds=[{', '.join(str(s) for s in args.seeds)}]"]
    if args.quick:
        over += [f"vars.{k}={'null' if v is None else v}" for k, v in QUICK_VARS.items()]
    return over + list(args.overrides or [])


def main_demo(args: argparse.Namespace) -> int:
    from .report import summary_table
    from .run import run_pipeline

    t0 = time.time()
    out = Path(args.output)
    sample = sample_data_dir()
    log(f"sample data: {sample}")
    # Under torchrun the main process trains the tokenizer into the (shared) output folder first.
    tokenizer = main_first(
        lambda: ensure_tokenizer(out / "tokenizer", sample), "training the demo tokenizer", per_node=False
    )
    with demo_recipe_path() as recipe:
        cfg = load_pipeline(recipe, demo_overrides(args), variables={"tokenizer": str(tokenizer.resolve())})
        summary = run_pipeline(cfg, pipeline_file=str(recipe), jobs=args.jobs)
    if not is_main_process():
        return 0
    print()
    print(summary_table(cfg.output_dir))
    print()
    log(
        "a ~2M-parameter model pretrained on well under a million tokens: expect TF-IDF to win and small, noisy "
        "differences between arms; this shows the workflow and its evidence, not a result (the fine-tuning "
        "seeds give the noise estimate)"
    )
    log(f"report: {summary['report']['html']} (and report.md beside it)")
    log(
        f"finished in {time.time() - t0:.0f}s ({len(summary['executed'])} stage(s) run, "
        f"{len(summary['reused'])} reused from the cache)"
    )
    return 0
