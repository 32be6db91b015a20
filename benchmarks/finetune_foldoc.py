"""Fine-tuning on FOLDOC (entry -> category, 10 classes): throughput and quality, one run.

Part A, throughput. Same model (fresh copy with the same initial weights per arm), same training
examples, same batch size, same plain AdamW loop, same number of timed steps after warm-up; only
the batch layout differs:
  (i)   lmadapt: the classification task's ``encode`` + its collator (dynamic padding to the longest
        row of the batch) + the length-grouped sampler that ``stages/finetune.py``'s
        ``FinetuneTrainer`` builds (``train.group_by_length: true``, the default);
  (ii)  the same batches (the same example ids), padded every time to the model's maximum length
        (``DataCollatorWithPadding(padding="max_length")``), as many fine-tuning scripts do;
  (iii) for reference: dynamic padding without length grouping (the Trainer's random sampler).
The timed batches are spread evenly over one epoch of the sampler (the sampler puts the longest
batch first; timing only the first steps would be biased), and the arms run interleaved in rounds
so that load from other processes on the machine hits all arms alike. Prints examples/s of each,
the ratio (i)/(ii) (target >= 2x), and the mean padded length per batch (timed batches and whole epoch).

Part B, quality. Fine-tunes a small model through the real stage (``run_finetune`` with
``benchmarks/recipes/finetune_foldoc.yaml``: full train set, dev macro-F1 picks the epoch and
drives early stopping) and reports test accuracy / macro-F1 beside TF-IDF + logistic regression,
fitted here with the recipe of ../shared/data/README.md (word 1-2-grams, sublinear tf, min_df 2,
<= 200k features, C in {0.1, 1, 10} by dev macro-F1).

The model: ``--model FOLDER`` (e.g. a `lmadapt pretrain` output), else a scratch BERT preset
(``--arch/--size``) with a WordPiece tokenizer trained on the foldoc *train* texts only; it is
saved to ``--workdir`` so that the stage can load it like any model folder.

    .venv/bin/python benchmarks/finetune_foldoc.py --json benchmarks/results/finetune_foldoc_cpu.json
    .venv/bin/python benchmarks/finetune_foldoc.py --skip-b --steps 12        # throughput only
    .venv/bin/python benchmarks/finetune_foldoc.py --skip-a train.epochs=3    # recipe overrides last
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/data/foldoc"
DEFAULT_RECIPE = REPO / "benchmarks/recipes/finetune_foldoc.yaml"
DEFAULT_WORKDIR = Path(os.environ.get("LMADAPT_BENCH_CACHE", "/tmp/lmadapt_bench")) / "finetune_foldoc"
README_BASELINE = {"accuracy": 0.7975, "macro_f1": 0.7798, "C": 10, "source": "../shared/data/README.md"}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --- the model folder --------------------------------------------------------------------------

def build_scratch_model(data: Path, workdir: Path, arch: str, size: str, vocab: int, seed: int) -> Path:
    """A randomly initialised ``arch``/``size`` model + a tokenizer trained on the train texts, saved
    as a plain model folder (what `lmadapt finetune` reads)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lmadapt.models.presets import count_params, scratch_config
    from lmadapt.models.tokenizers import train_tokenizer

    out = workdir / f"scratch_{arch}_{size}"
    texts = [r["text"] for r in read_jsonl(data / "train.jsonl")]
    kind = "wordpiece" if arch == "bert" else "bpe"
    tokenizer = train_tokenizer(texts, kind=kind, vocab_size=vocab, output_dir=str(workdir / f"tok_{kind}{vocab}"),
                                lowercase=(kind == "wordpiece"), model_max_length=2048)
    config = scratch_config(arch, size, {}, tokenizer)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if arch == "bert" else AutoModelForCausalLM
    model = auto.from_config(config)
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    print(f"model: scratch {arch} {size}: {count_params(model) / 1e6:.2f}M parameters "
          f"({count_params(model, non_embedding=True) / 1e6:.2f}M non-embedding), {kind} vocab {len(tokenizer)}; "
          f"no pretraining -> {out}", flush=True)
    return out


def load_cfg(recipe: Path, model_dir: Path, data: Path, workdir: Path, overrides: list[str]):
    from lmadapt.config.base import load_recipe
    from lmadapt.config.finetune import FinetuneConfig

    fixed = [f"model.path={model_dir}", f"data.train={data / 'train.jsonl'}", f"data.dev={data / 'dev.jsonl'}",
             f"data.test={data / 'test.jsonl'}", f"train.output_dir={workdir / 'finetune'}"]
    return load_recipe(FinetuneConfig, str(recipe), fixed + list(overrides))


# --- part A: throughput ------------------------------------------------------------------------

def part_a(cfg, args) -> dict:
    import copy

    from transformers import DataCollatorWithPadding

    from lmadapt.stages.finetune import (FinetuneTrainer, align_pad_token, load_tokenizer, read_splits,
                                         resolve_source)
    from lmadapt.tasks import TASKS
    from lmadapt.train.loop import training_arguments

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = TASKS["classification"]
    cfg = copy.deepcopy(cfg)
    src = resolve_source(cfg)
    tokenizer = load_tokenizer(src.tokenizer, cfg)

    from transformers import AutoConfig
    model_max = int(getattr(AutoConfig.from_pretrained(src.base), "max_position_embeddings", 512))
    L = args.max_length or model_max
    cfg.model.max_length = L
    cfg.data.allow_truncation = True          # both arms see exactly the same (cut) token ids
    cfg.train.batch_size = args.batch_size
    cfg.train.grad_accum = 1
    splits, reports, space = read_splits(task, cfg)
    train = splits["train"]

    def fresh_model():
        torch.manual_seed(0)
        m = task.load_model(src.base, space, cfg)
        align_pad_token(tokenizer, m)
        m.train()
        return m

    train_ds = task.encode(train, tokenizer, space, cfg, reports["train"])
    lengths = list(train_ds["length"])
    collate_dyn = task.collator(tokenizer, cfg)                    # lmadapt: PaddingCollator
    pad_max = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=L)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in train_ds.column_names]

    def collate_max(rows):
        return pad_max([{**{k: r[k] for k in keys}, "labels": r["labels"]} for r in rows])

    # The samplers exactly as the stage builds them: FinetuneTrainer._get_train_sampler().
    tmp = tempfile.mkdtemp(prefix="ftbench-")
    tcfg = copy.deepcopy(cfg.train)
    tcfg.output_dir, tcfg.report_to = tmp, []

    def stage_trainer(group: bool):
        return FinetuneTrainer(model=fresh_model(), args=training_arguments(tcfg), train_dataset=train_ds,
                               data_collator=collate_dyn, processing_class=tokenizer, group_by_length=group)

    grouped_trainer = stage_trainer(True)
    sampler = grouped_trainer._get_train_sampler()
    assert type(sampler).__name__ == "LengthGroupedSampler", type(sampler)
    order_grouped = list(iter(sampler))
    # check: these are the batches the stage's own train dataloader yields (fresh trainer, same seed)
    first = next(iter(stage_trainer(True).get_train_dataloader()))
    mine = collate_dyn([train_ds[i] for i in order_grouped[:args.batch_size]])
    assert all(torch.equal(first[k].cpu(), mine[k]) for k in mine), "sampler/collator differ from the stage's"
    random_trainer = stage_trainer(False)
    torch.manual_seed(cfg.train.seed)
    order_random = list(iter(random_trainer._get_train_sampler()))
    del grouped_trainer, random_trainer

    B = args.batch_size

    def batches(order):
        return [order[i:i + B] for i in range(0, len(order), B)]

    ep_grouped, ep_random = batches(order_grouped), batches(order_random)

    def epoch_stats(eps, fixed=None):
        widths = [fixed or max(lengths[i] for i in b) for b in eps]
        real = sum(lengths[i] for b in eps for i in b)
        padded = sum(w * len(b) for w, b in zip(widths, eps))
        return {"batches": len(eps), "mean_padded_length": float(np.mean(widths)), "non_pad_fraction": real / padded}

    epoch = {"i_lmadapt_dynamic_grouped": epoch_stats(ep_grouped),
             "ii_pad_to_max_length": epoch_stats(ep_grouped, fixed=L),
             "iii_dynamic_random_order": epoch_stats(ep_random)}

    def pick(eps, n, warm):
        full = [j for j, b in enumerate(eps) if len(b) == B]
        timed = [full[int(k)] for k in np.linspace(0, len(full) - 1, n).round()]
        rest = [j for j in full if j not in timed]
        return [eps[j] for j in timed], [eps[j] for j in rest[:warm]]

    timed_g, warm_g = pick(ep_grouped, args.steps, args.warmup)
    timed_r, warm_r = pick(ep_random, args.steps, args.warmup)
    arms = {
        "i_lmadapt_dynamic_grouped": (timed_g, warm_g, collate_dyn),
        "ii_pad_to_max_length": (timed_g, warm_g, collate_max),       # the same example ids as (i)
    }
    if not args.no_random_arm:
        arms["iii_dynamic_random_order"] = (timed_r, warm_r, collate_dyn)

    rows_cache = {}

    def rows_of(idx):
        return [rows_cache.setdefault(i, train_ds[i]) for i in idx]

    state = {}
    for name, (timed, warm, collate) in arms.items():
        model = fresh_model().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        state[name] = {"model": model, "opt": opt, "secs": 0.0, "cpu_secs": 0.0, "examples": 0, "tokens": 0, "real": 0,
                       "widths": [], "losses": []}

    def step(name, idx, collate, timed: bool):
        s = state[name]
        rows = rows_of(idx)
        t0, c0 = time.perf_counter(), time.process_time()
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        out = s["model"](**batch)
        out.loss.backward()
        s["opt"].step()
        s["opt"].zero_grad(set_to_none=True)
        loss = out.loss.item()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if timed:
            s["secs"] += dt
            s["cpu_secs"] += dc
            s["examples"] += len(idx)
            s["tokens"] += batch["input_ids"].numel()
            s["real"] += int(batch["attention_mask"].sum())
            s["widths"].append(batch["input_ids"].shape[1])
            s["losses"].append(loss)

    n_params = sum(p.numel() for p in state["i_lmadapt_dynamic_grouped"]["model"].parameters())
    print(f"\n== part A: throughput ({n_params / 1e6:.2f}M params, {args.threads} thread(s), batch {B}, "
          f"max_length {L}, {args.steps} timed steps per arm after {args.warmup} warm-up, "
          f"{args.rounds} interleaved rounds)", flush=True)
    for name, (timed, warm, collate) in arms.items():
        for idx in warm:
            step(name, idx, collate, timed=False)
    chunks = np.array_split(np.arange(args.steps), args.rounds)
    for r, chunk in enumerate(chunks):
        names = list(arms) if r % 2 == 0 else list(arms)[::-1]     # alternate who goes first
        for name in names:
            timed, _, collate = arms[name]
            for k in chunk:
                step(name, timed[k], collate, timed=True)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {state[n]['examples'] / state[n]['secs']:.1f} ex/s" for n in arms), flush=True)

    results = {}
    for name in arms:
        s = state[name]
        results[name] = {
            "examples_per_s": s["examples"] / s["secs"], "tokens_per_s": s["tokens"] / s["secs"],
            "real_tokens_per_s": s["real"] / s["secs"], "timed_seconds": s["secs"], "timed_examples": s["examples"],
            "examples_per_cpu_s": s["examples"] / s["cpu_secs"], "timed_cpu_seconds": s["cpu_secs"],
            "mean_padded_length_timed": float(np.mean(s["widths"])), "non_pad_fraction_timed": s["real"] / s["tokens"],
            "mean_padded_length_epoch": epoch[name]["mean_padded_length"],
            "non_pad_fraction_epoch": epoch[name]["non_pad_fraction"],
            "mean_loss_timed": float(np.mean(s["losses"])),
        }
    ratio = results["i_lmadapt_dynamic_grouped"]["examples_per_s"] / results["ii_pad_to_max_length"]["examples_per_s"]
    ratio_cpu = (results["i_lmadapt_dynamic_grouped"]["examples_per_cpu_s"]
                 / results["ii_pad_to_max_length"]["examples_per_cpu_s"])
    L_arr = np.array(lengths)
    return {
        "model": str(src.base), "parameters": n_params, "device": args.device, "threads": args.threads, "batch_size": B, "max_length": L,
        "model_max_position_embeddings": model_max, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "rounds": args.rounds, "train_examples": len(train_ds), "truncated_at_max_length": reports["train"].truncated,
        "token_length": {"mean": float(L_arr.mean()), "median": float(np.median(L_arr)),
                         "p90": float(np.percentile(L_arr, 90)), "max": int(L_arr.max())},
        "sampler_check": "first batch equals FinetuneTrainer.get_train_dataloader()'s",
        "arms": results, "epoch_padding": epoch,
        "ratio_examples_per_s_lmadapt_vs_pad_to_max": ratio, "target_ratio": 2.0, "meets_target": ratio >= 2.0,
        "ratio_examples_per_cpu_s_lmadapt_vs_pad_to_max": ratio_cpu,
    }


def print_part_a(a: dict) -> None:
    print(f"\n  {'arm':<28} {'examples/s':>10} {'ex/CPU-s':>9} {'tokens/s':>9} {'mean padded len (timed / epoch)':>32} {'non-pad':>8}")
    for name, r in a["arms"].items():
        print(f"  {name:<28} {r['examples_per_s']:>10.2f} {r['examples_per_cpu_s']:>9.2f} {r['tokens_per_s']:>9,.0f} "
              f"{r['mean_padded_length_timed']:>20.1f} / {r['mean_padded_length_epoch']:<9.1f} "
              f"{r['non_pad_fraction_timed']:>8.1%}")
    print(f"  examples/s ratio, lmadapt (dynamic + length-grouped) / padded to {a['max_length']}: "
          f"{a['ratio_examples_per_s_lmadapt_vs_pad_to_max']:.2f}x (target >= 2x: "
          f"{'met' if a['meets_target'] else 'NOT met'}); per CPU-second of this process: "
          f"{a['ratio_examples_per_cpu_s_lmadapt_vs_pad_to_max']:.2f}x", flush=True)


# --- part B: quality ---------------------------------------------------------------------------

def tfidf_baseline(data: Path) -> dict:
    """The shared/data README's definition (min_df 2, <=200k features), through lmadapt's own baseline."""
    from lmadapt.pipeline.baseline import tfidf_baseline as lmadapt_tfidf

    recipe = {"data": {s: str(data / f"{s}.jsonl") for s in ("train", "dev", "test")},
              "task": {"type": "classification"}}
    r = lmadapt_tfidf(recipe, Cs=(0.1, 1, 10), max_features=200_000, min_df=2)
    return {"accuracy": r["test"]["accuracy"], "macro_f1": r["test"]["macro_f1"], "C": r["C"],
            "dev_macro_f1_by_C": {str(t["C"]): t["dev_macro_f1"] for t in r["tried"]}, "features": r["features"],
            "seconds": r["seconds"]}


def part_b(cfg, data: Path) -> dict:
    from lmadapt.config.base import to_dict
    from lmadapt.stages.finetune import run_finetune

    print("\n== part B: fine-tuning through the stage (run_finetune)", flush=True)
    print(f"  model {cfg.model.path}, max_length {cfg.model.max_length}, lr {cfg.train.lr}, batch {cfg.train.batch_size}, "
          f"<= {cfg.train.epochs:g} epochs, early stopping patience {cfg.train.early_stopping_patience} on dev "
          f"{cfg.train.metric}", flush=True)
    m = run_finetune(cfg, to_dict(cfg))
    keep = ("n", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "truncated")
    print("\n== part B: TF-IDF + logistic regression (same run)", flush=True)
    base = tfidf_baseline(data)
    return {
        "recipe": to_dict(cfg),
        "finetuned": {"dev": {k: m["dev"].get(k) for k in keep}, "test": {k: m["test"].get(k) for k in keep},
                      "test_per_class_f1": {lab: v.get("f1") for lab, v in m["test"].get("per_class", {}).items()}
                      if isinstance(m["test"].get("per_class"), dict) else m["test"].get("per_class"),
                      "selection": m["selection"], "train": m["train"],
                      "truncated": {k: v.get("truncated") for k, v in m["data"]["reports"].items()}},
        "tfidf_lr_this_run": base,
        "tfidf_lr_readme": README_BASELINE,
    }


def print_part_b(b: dict) -> None:
    f, t, r = b["finetuned"], b["tfidf_lr_this_run"], b["tfidf_lr_readme"]
    model = Path(b["recipe"]["model"]["path"]).name
    print(f"\n  {'FOLDOC test (953)':<44} {'accuracy':>9} {'macro-F1':>9}")
    print(f"  {'fine-tuned ' + model + ' (best dev epoch)':<44} {f['test']['accuracy']:>9.4f} {f['test']['macro_f1']:>9.4f}")
    print(f"  {'TF-IDF + LR, this run (C=' + str(t['C']) + ')':<44} {t['accuracy']:>9.4f} {t['macro_f1']:>9.4f}")
    print(f"  {'TF-IDF + LR, shared/data/README.md (C=10)':<44} {r['accuracy']:>9.4f} {r['macro_f1']:>9.4f}")
    tr = f["train"]
    print(f"  fine-tuning: {tr['steps']} steps, {tr['epochs']:.2f} epochs, {tr['train_seconds']:.0f}s training, "
          f"dev epochs evaluated {f['selection']['evaluated_epochs']}, best dev {f['selection']['metric']} "
          f"{f['selection']['best_value']:.4f} ({f['selection']['best_checkpoint']}), stopped early: "
          f"{tr['stopped_early']}", flush=True)


# --- main --------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides for part B (and the shared model/data keys)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train/dev/test.jsonl")
    ap.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: build a scratch model)")
    ap.add_argument("--arch", default="bert", choices=("bert", "llama", "gpt2"))
    ap.add_argument("--size", default="1m", help="scratch preset (lmadapt presets)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--batch-size", type=int, default=16, help="part A")
    ap.add_argument("--max-length", type=int, default=None, help="part A: pad-to length (default: the model's max positions)")
    ap.add_argument("--steps", type=int, default=16, help="part A: timed steps per arm")
    ap.add_argument("--warmup", type=int, default=2, help="part A: untimed steps per arm first")
    ap.add_argument("--rounds", type=int, default=3, help="part A: interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="part A: torch threads (1: on a shared 2-core machine, "
                                                           "2 threads ran ~10x slower than 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="part A")
    ap.add_argument("--no-random-arm", action="store_true", help="part A: skip arm (iii)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (merged into an existing file)")
    args = ap.parse_args()

    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or build_scratch_model(args.data, args.workdir, args.arch, args.size, args.vocab, seed=0)
    cfg = load_cfg(args.recipe, model_dir, args.data, args.workdir, args.overrides)

    import sklearn
    import transformers
    out: dict = {"benchmark": "finetune_foldoc", "command": " ".join([Path(sys.executable).name] + sys.argv),
                 "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                             "cpu_count": os.cpu_count(), "torch": torch.__version__,
                             "transformers": transformers.__version__, "sklearn": sklearn.__version__,
                             "device": args.device},
                 "data": str(args.data)}
    if args.json and args.json.is_file():
        prev = json.loads(args.json.read_text())
        out = {**prev, **out}
    if not args.skip_a:
        out["part_a_throughput"] = part_a(cfg, args)
        print_part_a(out["part_a_throughput"])
    if not args.skip_b:
        out["part_b_quality"] = part_b(cfg, args.data)
        print_part_b(out["part_b_quality"])
    out["wall_seconds_this_run"] = round(time.time() - t0, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
