"""Memory of continued-pretraining data preparation on a large corpus: lmadapt vs baselines, one run.

Every variant prepares the same corpus for training (read, tokenize, pack into blocks of
``--block-size``) in a fresh subprocess, then reads 2,000 random blocks the way the Trainer does.
Measured per variant, in the same run:
  peak RSS     the most resident memory the process ever had (ru_maxrss), mapped file pages included
  peak anon    the most anonymous memory (the process's own, which the kernel cannot drop), sampled
               every 0.1 s from /proc/PID/smaps_rollup
  anon MB      the process's own memory once the data is ready (smaps Anonymous): what each further
               process of a torchrun job adds on the same node
  file MB      resident pages of memory-mapped files (RSS - Anonymous): page cache, held once per
               node however many processes map the same files
Variants:
  idle              imports only (torch, transformers, datasets, lmadapt): the floor under every row
  hf_run_clm        transformers' run_clm.py recipe: load_dataset("json") -> map(tokenize) ->
                    map(group_texts), datasets' cache files on disk (no document separators, each
                    1,000-document batch's remainder dropped)
  lmadapt_before    lmadapt from another checkout (``--baseline-src``, e.g. a git worktree of an
                    older commit), cold (empty tokenization cache) and warm (cache hit: a rerun, a
                    resume; with an older checkout, also every process but a node's first under
                    torchrun, which now never reads the text)
  lmadapt           this checkout, cold and warm

The corpus of the README's numbers (271 MB: shared/data's computing and general training text,
three times over, each copy's documents prefixed so that deduplication keeps them):

    git worktree add /tmp/lmadapt-before 1deeb37     # 2c66e3f: before the memory work (stop 11's run)
    python benchmarks/pretrain_memory.py --make-corpus ../shared/data --copies 3 --data /tmp/big/corpus.jsonl \\
        --tokenizer .benchdata/dapt/tok --baseline-src /tmp/lmadapt-before/src
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def smaps(pid: int | str = "self") -> dict:
    """/proc/PID/smaps_rollup in MB, field by field ({} when the process is gone)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except OSError:
        pass
    return fields


def memory() -> dict:
    fields = smaps()
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_mb": round(fields.get("Rss", 0)),
            "anon_mb": round(fields.get("Anonymous", 0)),
            "file_mb": round(fields.get("Rss", 0) - fields.get("Anonymous", 0))}


def recipe(args, cache: str, out: str, **train) -> dict:
    """The pretrain recipe every lmadapt variant runs: a 1M scratch Llama on the corpus, no held-out set."""
    return {"model": {"init": "scratch", "arch": "llama", "size": "1m", "tokenizer": args.tokenizer},
            "data": {"sources": [{"path": args.data, "name": "corpus"}], "block_size": args.block_size,
                     "cache_dir": str(Path(cache) / "tokenized"), "eval_fraction": 0},
            "train": {"output_dir": str(Path(cache) / out), "overwrite": True, "report_to": [], **train}}


def child_env(src: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_blocks(ds, n: int = 2000) -> float:
    """Random block reads, as the Trainer's shuffled sampler does; returns seconds."""
    t = time.perf_counter()
    for i in np.random.default_rng(0).integers(0, len(ds), n):
        row = ds[int(i)]
        assert len(row["input_ids"]) > 0
    return time.perf_counter() - t


def child_hf(args) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    os.environ["HF_DATASETS_CACHE"] = args.cache
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    L = args.block_size
    raw = datasets.load_dataset("json", data_files=args.data, split="train", cache_dir=args.cache)
    tokenized = raw.map(lambda b: tok(b["text"]), batched=True, remove_columns=raw.column_names)

    def group_texts(examples):  # as run_clm.py has it
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = len(concatenated["input_ids"]) // L * L
        result = {k: [t[i:i + L] for i in range(0, total, L)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    blocks = tokenized.map(group_texts, batched=True)
    blocks = blocks.with_format("numpy")
    import pyarrow.compute as pc
    tokens = int(pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py())  # no copy to Python
    return {"tokens": tokens, "blocks": len(blocks),
            "tokens_in_blocks": len(blocks) * L, "dataset": blocks}


def child_lmadapt(args) -> dict:
    from lmadapt.config.base import load_recipe
    from lmadapt.config.pretrain import PretrainConfig
    from lmadapt.models.load import load_model
    from lmadapt.stages import pretrain

    cfg = load_recipe(PretrainConfig, data=recipe(args, args.cache, "out", max_steps=1))
    out = Path(cfg.train.output_dir)
    if hasattr(pretrain, "prepare_stage_data"):   # this checkout: the stage's own data path
        read = pretrain.read_stage_corpus
        corpus = read(cfg, out) if "out" in inspect.signature(read).parameters else read(cfg)
        tok = load_model(cfg.model).tokenizer
        data = pretrain.prepare_stage_data(corpus, tok, "causal", "document", cfg, out)
        del corpus
        blocks, accounting = data.train, data.accounting
    else:                                         # an older checkout (--baseline-src)
        corpus = pretrain.read_corpus(cfg.data)
        tok = load_model(cfg.model).tokenizer
        build = pretrain.build_train_blocks
        extra = (out,) if "out" in inspect.signature(build).parameters else ()
        blocks, accounting, _ = build(corpus, tok, "causal", "document", cfg, *extra)
        del corpus
    return {"tokens": accounting.tokens, "blocks": accounting.blocks,
            "tokens_in_blocks": accounting.tokens - accounting.tokens_dropped, "dataset": blocks}


def child_idle(args) -> dict:
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    from lmadapt.stages import pretrain  # noqa: F401

    return {"tokens": 0, "blocks": 0, "tokens_in_blocks": 0, "dataset": None}


def make_corpus(data_dir: str, copies: int, out: str) -> None:
    import gzip
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for k in range(copies):
            for name in ("computing", "general"):
                with gzip.open(Path(data_dir) / name / "train.jsonl.gz", "rt", encoding="utf-8") as src:
                    for line in src:
                        fh.write(json.dumps({"text": f"copy {k}: " + json.loads(line)["text"]}) + "\n")
    os.replace(tmp, out)


def child(args) -> None:
    t = time.perf_counter()
    res = {"hf_run_clm": child_hf, "idle": child_idle}.get(args.child, child_lmadapt)(args)
    prepare = time.perf_counter() - t
    ds = res.pop("dataset")
    res.update(memory(), prepare_seconds=round(prepare, 1),
               read_2000_blocks_seconds=round(read_blocks(ds), 2) if ds is not None else 0.0)
    print("RESULT " + json.dumps(res), flush=True)


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found += kids
        frontier = kids
    return found


def torchrun_node_memory(src: str, args, cache: str, procs: int) -> dict:
    """``lmadapt pretrain`` (2 steps) under torchrun with ``procs`` processes on the warm cache; the
    node's memory is the largest sum of PSS over the job's processes (PSS splits a shared page
    between the processes that map it, so the sum counts the page cache once)."""
    import yaml

    path = Path(cache) / f"torchrun{procs}.yaml"
    path.write_text(yaml.safe_dump(recipe(args, cache, f"torchrun{procs}", max_steps=2, batch_size=2)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
           "-m", "lmadapt.cli", "pretrain", str(path)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, peak_each, peak_anon = 0.0, 0.0, 0.0
    while proc.poll() is None:
        fields = [smaps(p) for p in _descendants(proc.pid)]
        pss = [f.get("Pss", 0.0) for f in fields]
        workers = sorted(pss)[-procs:]  # the training processes (the launcher is the smallest)
        peak, peak_each = max(peak, sum(pss)), max(peak_each, max(workers, default=0.0))
        peak_anon = max(peak_anon, sum(f.get("Anonymous", 0.0) for f in fields))
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{err[-3000:]}")
    return {"node_pss_mb": round(peak), "largest_process_pss_mb": round(peak_each), "node_anon_mb": round(peak_anon),
            "seconds": round(time.perf_counter() - t, 1)}


def run_child(variant: str, src: str | None, args, cache: str) -> dict:
    """One variant in a fresh process; its peak anonymous memory is sampled from here every 0.1 s
    (peak RSS also counts pages of memory-mapped or recently read files that the kernel can drop)."""
    cmd = [sys.executable, __file__, "--child", variant, "--data", args.data, "--tokenizer", args.tokenizer,
           "--block-size", str(args.block_size), "--cache", cache]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=child_env(src), stdout=out, stderr=err, text=True)
        peak_anon = 0.0
        while proc.poll() is None:
            peak_anon = max(peak_anon, smaps(proc.pid).get("Anonymous", 0.0))
            time.sleep(0.1)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "peak_anon_mb": round(peak_anon)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a jsonl file with a text field")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--baseline-src", help="the src/ folder of another lmadapt checkout to compare with")
    ap.add_argument("--skip-hf", action="store_true", help="leave out the run_clm variant")
    ap.add_argument("--make-corpus", metavar="DATA_DIR", help="first write --data from DATA_DIR/{computing,general}")
    ap.add_argument("--copies", type=int, default=3, help="with --make-corpus: copies of the text")
    ap.add_argument("--torchrun", type=int, default=2, metavar="N",
                    help="also run pretrain under torchrun with N processes on the warm cache (0: skip)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.make_corpus and not os.path.exists(args.data):
        make_corpus(args.make_corpus, args.copies, args.data)

    print(f"corpus {args.data}: {os.path.getsize(args.data) / 2**20:,.0f} MB; block size {args.block_size}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    plan = [("idle", str(ROOT / "src"), "-")] + ([] if args.skip_hf else [("hf_run_clm", None, "cold")])
    if args.baseline_src:
        plan += [("lmadapt_before", args.baseline_src, "cold"), ("lmadapt_before", args.baseline_src, "warm")]
    plan += [("lmadapt", str(ROOT / "src"), "cold"), ("lmadapt", str(ROOT / "src"), "warm")]
    rows, caches = [], {}
    try:
        for variant, src, state in plan:
            if variant not in caches:
                caches[variant] = tempfile.mkdtemp(prefix=f"mem-{variant}-")
            res = run_child("lmadapt" if variant.startswith("lmadapt") else variant, src, args, caches[variant])
            res.update(variant=variant, state=state)
            rows.append(res)
            print(json.dumps(res), flush=True)
        node = {}
        for variant, src in ((v, s) for v, s, state in plan if state == "warm") if args.torchrun else ():
            node[variant] = torchrun_node_memory(src, args, caches[variant], args.torchrun)
            print(json.dumps({"variant": variant, "torchrun": args.torchrun, **node[variant]}), flush=True)
    finally:
        for path in caches.values():
            shutil.rmtree(path, ignore_errors=True)

    print()
    print("| variant | cache | peak RSS MB | peak anon MB | anon MB after | file MB after | prepare s | "
          "2,000 random blocks s | tokens | tokens in blocks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['state']} | {r['peak_rss_mb']:,} | {r['peak_anon_mb']:,} | {r['anon_mb']:,} | {r['file_mb']:,} | "
              f"{r['prepare_seconds']} | {r['read_2000_blocks_seconds']} | {r['tokens']:,} | {r['tokens_in_blocks']:,} |")
    new = {r["state"]: r for r in rows if r["variant"] == "lmadapt"}
    for other in ("lmadapt_before", "hf_run_clm"):
        for state in ("cold", "warm"):
            old = next((r for r in rows if r["variant"] == other and r["state"] == state), None)
            if old is None or state not in new:
                continue
            print(f"{other} ({state}) / lmadapt ({state}): peak RSS {old['peak_rss_mb'] / new[state]['peak_rss_mb']:.2f}x, "
                  f"peak anon {old['peak_anon_mb'] / max(new[state]['peak_anon_mb'], 1):.2f}x, "
                  f"anon {old['anon_mb'] / max(new[state]['anon_mb'], 1):.2f}x, "
                  f"prepare time {old['prepare_seconds'] / max(new[state]['prepare_seconds'], 0.1):.2f}x")
    if node:
        print()
        print("| variant | torchrun processes | node memory MB (max sum of PSS) | max sum of anon MB | "
              "largest process PSS MB | wall s |")
        print("|---|---:|---:|---:|---:|---:|")
        for variant, r in node.items():
            print(f"| {variant} | {args.torchrun} | {r['node_pss_mb']:,} | {r['node_anon_mb']:,} | "
                  f"{r['largest_process_pss_mb']:,} | {r['seconds']} |")
        if "lmadapt_before" in node and "lmadapt" in node:
            print(f"lmadapt_before / lmadapt under torchrun x{args.torchrun}: node memory "
                  f"{node['lmadapt_before']['node_pss_mb'] / node['lmadapt']['node_pss_mb']:.2f}x, anon "
                  f"{node['lmadapt_before']['node_anon_mb'] / max(node['lmadapt']['node_anon_mb'], 1):.2f}x")


if __name__ == "__main__":
    main()
