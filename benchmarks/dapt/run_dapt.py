""""Don't Stop Pretraining", small: DAPT / TAPT / DAPT+TAPT vs plain fine-tuning on FOLDOC and licenses.

A small-scale replication of Gururangan et al. (2020), Table 5, with lmadapt's own stages
(``run_pretrain`` / ``run_finetune``) and the recipes in ``benchmarks/dapt/recipes/``:

    base       scratch Llama "8m" + byte-level BPE (8,192, trained on general text), pretrained on
               shared/data/general                                              (recipes/base.yaml)
    dapt       base, continued on shared/data/computing (no general replay)      (recipes/dapt.yaml)
    tapt       base, continued on FOLDOC train texts + foldoc/unlabeled          (recipes/tapt.yaml)
    dapt_tapt  dapt, continued like tapt                                         (recipes/tapt.yaml)
    ctrl       base, continued like dapt but on general text: the control that separates "domain"
               from "more pretraining tokens"                                    (recipes/ctrl.yaml)
    lic_dapt   base, continued on licenses/corpus (rule texts of train licences) (recipes/lic_dapt.yaml)
    dapt_replay / dapt_lowlr   diagnostics: dapt with 5% general replay / at a quarter of the lr

FOLDOC arms ft_only / dapt_ft / tapt_ft / dapt_tapt_ft / ctrl_ft fine-tune base / dapt / tapt /
dapt_tapt / ctrl (recipes/finetune.yaml) at label budgets 100 / 300 / 1000 / all; licenses arms
ft_only / dapt_ft fine-tune base / lic_dapt (recipes/finetune_licenses.yaml) at 300 / all. Seeds
0-2; the seed also picks the nested stratified label subset, identical across arms. Dev macro-F1
picks the epoch (early stopping); test is reported only. Every pretraining stage reports perplexity
on computing valid (domain), general valid (general), FOLDOC dev texts (task) and licenses dev
texts, before and after.

Subcommands:
    prepare    copy the data into a git-ignored folder that travels to the GPU machine (general
               subsampled by a hash of the text), train the tokenizer on that general text
    run        the whole experiment (stages as subprocesses, fine-tunes in a process pool sharing
               one GPU), writing results under --out as they arrive; --scale toy for a CPU check of
               the code paths, --scale cpu (with --plan cpu_diag / cpu_lr) for the diagnostic on CPU
    stage      one pretraining stage (used by `run`)
    tfidf      TF-IDF + LR at the same label budgets/subsets (CPU, sklearn; C chosen on dev)
    report     rebuild the tables from a results folder

    .venv/bin/python benchmarks/dapt/run_dapt.py prepare --data .benchdata/dapt
    .venv/bin/python benchmarks/dapt/run_dapt.py run --data .benchdata/dapt --scale toy --out /tmp/dapt_toy
    # GPU (one call): see benchmarks/dapt/RESULTS.md for the exact command
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared/data"
RECIPES = HERE / "recipes"
if str(REPO / "src") not in sys.path:          # also in spawned pool workers
    sys.path.insert(0, str(REPO / "src"))

STAGES = {  # name -> (recipe, parent stage)
    "base": ("base.yaml", None),
    "dapt": ("dapt.yaml", "base"),
    "tapt": ("tapt.yaml", "base"),
    "dapt_tapt": ("tapt.yaml", "dapt"),
    "lic_dapt": ("lic_dapt.yaml", "base"),
    "ctrl": ("ctrl.yaml", "base"),
    "dapt_replay": ("dapt_replay.yaml", "base"),
    "dapt_lowlr": ("dapt_lowlr.yaml", "base"),
}
# ctrl starts after dapt rather than beside it: fewer stages share the GPU at once, so dapt's
# time cap is not hit; its arm is the lowest priority anyway (OPTIONAL_ARMS).
NEXT_STAGES = {"base": ["dapt", "tapt", "lic_dapt"], "dapt": ["dapt_tapt", "ctrl"]}
# Each task: its fine-tuning recipe, label budgets and arms (arm -> the pretraining stage it
# fine-tunes). FOLDOC is the full Table-5 design; licenses ("also the licenses task with its own
# corpus") gets the baseline and DAPT on its own corpus (ScanCode rule texts of train licences).
TASKS = {
    "foldoc": {"recipe": "finetune.yaml", "budgets": ["100", "300", "1000", "all"],
               "arms": {"ft_only": "base", "dapt_ft": "dapt", "tapt_ft": "tapt", "dapt_tapt_ft": "dapt_tapt",
                        "ctrl_ft": "ctrl", "replay_ft": "dapt_replay", "lowlr_ft": "dapt_lowlr"},
               "readme_tfidf": {"accuracy": 0.7975, "macro_f1": 0.7798}},   # ../shared/data/README.md
    "licenses": {"recipe": "finetune_licenses.yaml", "budgets": ["300", "all"],
                 "arms": {"ft_only": "base", "dapt_ft": "lic_dapt"},
                 "readme_tfidf": {"accuracy": 0.6538, "macro_f1": 0.4396}},
}
SEEDS = [0, 1, 2]
ALL_ARMS = ["ft_only", "dapt_ft", "tapt_ft", "dapt_tapt_ft", "ctrl_ft", "replay_ft", "lowlr_ft"]
# The default plan (the paper's arms, the licenses pair and the ctrl diagnostic); replay_ft only on request:
# `run --plan diag` = why did DAPT not help? ft_only / dapt_ft / ctrl_ft / replay_ft at all labels.
DEFAULT_ARMS = ["ft_only", "dapt_ft", "tapt_ft", "dapt_tapt_ft", "ctrl_ft"]
PLANS = {"full": {"arms": DEFAULT_ARMS, "budgets": None, "tasks": "foldoc,licenses", "stagger": True},
         "diag": {"arms": ["ft_only", "dapt_ft", "ctrl_ft", "replay_ft"], "budgets": ["all"], "tasks": "foldoc",
                  "stagger": False},
         # The same question at --scale cpu, where few labels are what a small model can learn from
         # in a CPU hour, with tapt_ft as the positive control (it helped at every budget on the H100).
         "cpu_diag": {"arms": ["ft_only", "dapt_ft", "replay_ft", "ctrl_ft", "tapt_ft"], "budgets": ["300"],
                      "tasks": "foldoc", "stagger": False},
         # Learning rate as the cause: DAPT at a quarter of the lr (less movement, less forgetting).
         # Run with --reuse-stages on a cpu_diag work folder so that it continues the same base.
         "cpu_lr": {"arms": ["lowlr_ft"], "budgets": ["300"], "tasks": "foldoc", "stagger": False}}
# A diagnostic arm, queued after every fine-tune of the paper's arms: if time runs out, it is what is lost.
OPTIONAL_ARMS = {"ctrl_ft"}

# Caps on each pretraining stage's training loop (seconds): a guard against a slower GPU than
# planned, so one device call still returns results. A capped stage is flagged in the tables.
STAGE_TRAIN_CAP_S = {"base": 70, "dapt": 80, "tapt": 45, "dapt_tapt": 45, "lic_dapt": 45, "ctrl": 80,
                     "dapt_replay": 80, "dapt_lowlr": 80}

# --scale toy: a CPU check of every code path in minutes (tiny steps, few examples).
TOY = {
    "pretrain": {"data.block_size": 128, "data.max_eval_tokens": 3000, "data.num_proc": 1,
                 "train.max_tokens": None, "train.epochs": 1.0, "train.max_steps": 3, "train.batch_size": 4,
                 "train.torch_threads": 1},
    "schedule": {"epochs": 2, "batch_size": 8},
    "budgets": ["20"], "seeds": [0, 1], "workers": 2,
    "rows": {"train": 60, "dev": 40, "test": 40},
}
# --scale cpu: the real data and recipes, shrunk to what two CPU cores pretrain in ~25 minutes
# (Llama "1m" trains at ~2,900 tokens/s on one core here): 5 x 128 layers, 256-token blocks, the
# base on 2M general tokens, every continued stage on 1M tokens (its recipe's lr and schedule
# shape), 20k held-out tokens per perplexity set. Fine-tuning recipes are unchanged.
CPU = {
    "pretrain": {"data.block_size": 256, "data.max_eval_tokens": 20000, "data.num_proc": 1,
                 "train.batch_size": 16, "train.torch_threads": 1, "train.log_every": 10},
    "base_size": "1m",
    "max_tokens": {"base": 2_000_000, "other": 1_000_000},
    "stage_cap_s": 3000,
}


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def fill(template: str, **values) -> str:
    for k, v in values.items():
        template = template.replace("${" + k + "}", str(v))
    return template


def set_key(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    if value is None:
        d.pop(parts[-1], None)
    else:
        d[parts[-1]] = value


def recipe_dict(name: str, **values) -> dict:
    import yaml
    return yaml.safe_load(fill((RECIPES / name).read_text(), **values))


def now() -> float:
    return time.time()


# ------------------------------------------------------------------------------------------------
# prepare: data that travels + tokenizer
# ------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> None:
    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(args.shared)
    for rel in ["general/valid.jsonl.gz", "computing/train.jsonl.gz", "computing/valid.jsonl.gz",
                "foldoc/train.jsonl", "foldoc/dev.jsonl", "foldoc/test.jsonl", "foldoc/unlabeled.jsonl.gz",
                "licenses/corpus.jsonl.gz"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out / rel)
    for split in ("train", "dev", "test"):     # 14 MB of licence text: gzip it (lmadapt reads .jsonl.gz)
        write_jsonl(out / f"licenses/{split}.jsonl.gz", read_jsonl(src / f"licenses/{split}.jsonl"))
    # general/train: a deterministic subsample (sha256 of the text), to keep the carried tree small
    rows = read_jsonl(src / "general/train.jsonl.gz")
    keep = [r for r in rows
            if int(hashlib.sha256(r["text"].encode("utf-8")).hexdigest()[:8], 16) / 2**32 < args.general_fraction]
    write_jsonl(out / "general/train.jsonl.gz", keep)
    words = sum(len(r["text"].split()) for r in keep)
    print(f"general/train: kept {len(keep)} of {len(rows)} records, {words:,} words (fraction {args.general_fraction})")
    # tokenizer: byte-level BPE trained on the (carried) general training text only
    sys.path.insert(0, str(REPO / "src"))
    from lmadapt.models.tokenizers import train_tokenizer
    t0 = now()
    tok = train_tokenizer((r["text"] for r in keep), kind="bpe", vocab_size=args.vocab, output_dir=str(out / "tok"))
    print(f"tokenizer: bpe {len(tok):,} tokens in {now() - t0:.0f}s -> {out / 'tok'}")
    stats = {"general_fraction": args.general_fraction, "general_train_records": len(keep),
             "general_train_words": words, "vocab": len(tok)}
    for rel in ["general/train.jsonl.gz", "computing/train.jsonl.gz", "foldoc/train.jsonl", "foldoc/unlabeled.jsonl.gz",
                "licenses/corpus.jsonl.gz", "licenses/train.jsonl.gz"]:
        texts = [r["text"] for r in (keep if rel.startswith("general/train") else read_jsonl(out / rel))]
        enc = tok(texts, add_special_tokens=False)["input_ids"]
        stats[f"tokens:{rel}"] = sum(len(e) for e in enc)
        if rel == "foldoc/train.jsonl":
            stats["foldoc_train_over_256_tokens"] = sum(len(e) > 255 for e in enc)
        if rel == "licenses/train.jsonl.gz":
            stats["licenses_train_over_512_tokens"] = sum(len(e) > 511 for e in enc)
    print(json.dumps(stats, indent=1))
    (out / "prepare_stats.json").write_text(json.dumps(stats, indent=1))
    sizes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {sizes / 2**20:.1f} MiB")


def make_toy_data(data: Path, work: Path) -> Path:
    """A copy of the data with few rows (toy scale), same layout, same tokenizer."""
    toy = work / "toydata"
    if toy.exists():
        shutil.rmtree(toy)
    shutil.copytree(data / "tok", toy / "tok")
    for rel, n in [("general/train.jsonl.gz", 60), ("general/valid.jsonl.gz", 10), ("computing/train.jsonl.gz", 40),
                   ("computing/valid.jsonl.gz", 5), ("foldoc/unlabeled.jsonl.gz", 80),
                   ("licenses/corpus.jsonl.gz", 80)]:
        write_jsonl(toy / rel, read_jsonl(data / rel)[:n])
    for (task, split), n in [((t, sp), n) for t in ("foldoc", "licenses") for sp, n in TOY["rows"].items()]:
        suffix = ".jsonl" if task == "foldoc" else ".jsonl.gz"
        rows = read_jsonl(data / f"{task}/{split}{suffix}")
        # keep every label present (stratified-ish: round robin over labels)
        by = {}
        for r in rows:
            by.setdefault(r["label"], []).append(r)
        picked, i = [], 0
        while len(picked) < n:
            for lab in sorted(by):
                if i < len(by[lab]) and len(picked) < n:
                    picked.append(by[lab][i])
            i += 1
        write_jsonl(toy / f"{task}/{split}{suffix}", picked)
    return toy


# ------------------------------------------------------------------------------------------------
# one pretraining stage (own process)
# ------------------------------------------------------------------------------------------------
class TimeCap:
    """Trainer callback: stop training once ``deadline`` (epoch seconds) has passed."""

    def __new__(cls, deadline: float):
        from transformers import TrainerCallback

        class _Cap(TrainerCallback):
            capped = False

            def on_step_end(self, args, state, control, **kw):
                if time.time() > deadline:
                    control.should_training_stop = True
                    type(self).capped = True
                return control

        return _Cap()


def cmd_stage(args) -> None:
    import lmadapt.stages.pretrain as P
    from lmadapt.config.base import load_recipe
    from lmadapt.config.pretrain import PretrainConfig

    recipe, parent = STAGES[args.name]
    work = Path(args.work)
    d = recipe_dict(recipe, DATA=args.data, WORK=work, PARENT=work / parent if parent else "", STAGE=args.name)
    for k, v in {"toy": TOY, "cpu": CPU}.get(args.scale, {}).get("pretrain", {}).items():
        set_key(d, k, v)
    if args.scale == "cpu":
        set_key(d, "train.max_tokens", CPU["max_tokens"]["base" if parent is None else "other"])
        if parent is None:
            set_key(d, "model.size", CPU["base_size"])
    cap_holder = {}
    orig = P.run_training

    def run_training_capped(*a, callbacks=None, **kw):
        # the cap counts from the start of the training loop (setup and evaluation excluded)
        cap = TimeCap(time.time() + args.cap)
        cap_holder["cap"] = cap
        return orig(*a, callbacks=list(callbacks or []) + [cap], **kw)

    P.run_training = run_training_capped
    cfg = load_recipe(PretrainConfig, data=d)
    t0 = now()
    metrics = P.run_pretrain(cfg)
    cap = cap_holder.get("cap")
    planned = None
    if cfg.train.max_tokens:
        from lmadapt.train.loop import steps_for_tokens
        planned = steps_for_tokens(cfg.train.max_tokens, cfg.data.block_size, cfg.train)
    summary = {"stage": args.name, "parent": parent, "recipe": d, "wall_seconds": round(now() - t0, 1),
               "time_capped": bool(cap is not None and type(cap).capped), "planned_steps": planned,
               "cap_seconds": args.cap, "metrics": metrics}
    (work / args.name / "stage_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"[run_dapt] stage {args.name} done in {summary['wall_seconds']}s (capped: {summary['time_capped']})", flush=True)


# ------------------------------------------------------------------------------------------------
# fine-tuning jobs (process-pool workers sharing the GPU)
# ------------------------------------------------------------------------------------------------
def _worker_init(log_dir: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    log = open(Path(log_dir) / f"ft_worker_{os.getpid()}.log", "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    import torch  # noqa: F401  (import once per worker, not per job)
    torch.set_num_threads(1)
    import transformers
    import lmadapt.stages.finetune  # noqa: F401
    import lmadapt.train.loop as L
    transformers.logging.set_verbosity_error()
    # Checkpoints only need the weights (the best epoch is reloaded at the end); skipping the
    # optimizer state saves ~80 MB of writes per epoch per job. Nothing else changes.
    if not getattr(L, "_dapt_patched", False):
        TA = L.TrainingArguments

        def training_args_model_only(**kw):
            kw["save_only_model"] = True
            return TA(**kw)

        L.TrainingArguments = training_args_model_only
        L._dapt_patched = True


def ft_job(spec: dict) -> dict:
    """One fine-tune; returns the scalars we tabulate (the output folder is deleted)."""
    import lmadapt.stages.finetune as F
    from lmadapt.config.base import load_recipe
    from lmadapt.config.finetune import FinetuneConfig

    t0 = now()
    d = recipe_dict(TASKS[spec["task"]]["recipe"], MODEL=spec["model"], DATA=spec["data"], OUTDIR=spec["outdir"],
                    SEED=spec["seed"], BUDGET="null" if spec["budget"] == "all" else spec["budget"])
    schedule = d.pop("schedule")
    sched = dict(TOY["schedule"]) if spec["scale"] == "toy" else schedule[spec["budget"] if spec["budget"] in schedule else "all"]
    d["train"].update(sched)
    orig = F.run_training
    cap = TimeCap(spec["deadline"])

    def run_training_capped(*a, callbacks=None, **kw):
        return orig(*a, callbacks=list(callbacks or []) + [cap], **kw)

    F.run_training = run_training_capped
    try:
        cfg = load_recipe(FinetuneConfig, data=d)
        m = F.run_finetune(cfg, d)
    finally:
        F.run_training = orig
    shutil.rmtree(spec["outdir"], ignore_errors=True)
    row = {k: spec[k] for k in ("task", "arm", "budget", "seed")}
    row.update({
        "test_macro_f1": m["test"]["macro_f1"], "test_accuracy": m["test"]["accuracy"],
        "dev_macro_f1": m["dev"]["macro_f1"], "dev_accuracy": m["dev"]["accuracy"],
        "train_examples": m["data"]["examples"]["train"], "best_checkpoint": m["selection"]["best_checkpoint"],
        "epochs_evaluated": len(m["selection"]["evaluated_epochs"]), "epochs_planned": sched["epochs"],
        "steps": m["train"]["steps"], "stopped_early": m["train"]["stopped_early"],
        "time_capped": bool(type(cap).capped), "seconds": round(now() - t0, 1),
    })
    return row


# ------------------------------------------------------------------------------------------------
# the orchestrator
# ------------------------------------------------------------------------------------------------
def cmd_run(args) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    t_start = now()
    hard_deadline = t_start + args.deadline
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if work.exists() and not args.reuse_stages:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    if args.scale == "toy":
        data = make_toy_data(data, work)
    plan = PLANS[args.plan]
    tasks = [t for t in TASKS if t in plan["tasks"].split(",")]
    budgets = {t: args.budgets.split(",") if args.budgets else TOY["budgets"] if args.scale == "toy"
               else plan["budgets"] or TASKS[t]["budgets"] for t in tasks}
    plan_arms = args.arms.split(",") if args.arms else plan["arms"]
    unknown = sorted(set(plan_arms) - set(ALL_ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {ALL_ARMS}")
    arms_of = {t: {a: m for a, m in TASKS[t]["arms"].items() if a in plan_arms} for t in tasks}
    seeds = TOY["seeds"] if args.scale == "toy" else SEEDS
    workers = TOY["workers"] if args.scale == "toy" else args.workers
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               LMADAPT_CACHE=str(work / "tokcache"))
    os.environ["LMADAPT_CACHE"] = env["LMADAPT_CACHE"]
    events = open(out / "events.log", "a", buffering=1)

    def event(msg: str) -> None:
        line = f"[{now() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        events.write(line + "\n")

    def dump_env() -> None:
        info = {"scale": args.scale, "workers": workers, "deadline_s": args.deadline, "python": sys.version,
                "argv": sys.argv}
        try:
            import torch
            info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
            import transformers
            info["transformers"] = transformers.__version__
        except Exception as exc:  # noqa: BLE001
            info["env_error"] = repr(exc)
        (out / "env.json").write_text(json.dumps(info, indent=1))

    # --- pretraining stages as subprocesses ------------------------------------------------------
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    done_stages: dict[str, dict] = {}
    failed_stages: set[str] = set()

    def start_stage(name: str) -> None:
        cap = args.stage_cap if args.stage_cap is not None else {
            "full": STAGE_TRAIN_CAP_S.get(name), "cpu": CPU["stage_cap_s"], "toy": 600}[args.scale]
        cmd = [sys.executable, str(Path(__file__).resolve()), "stage", "--name", name, "--data", str(data),
               "--work", str(work), "--scale", args.scale, "--cap", str(cap)]
        log = open(out / "logs" / f"stage_{name}.log", "w")
        running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)), log)
        event(f"stage {name}: started")

    def finished_before(name: str) -> dict | None:
        """--reuse-stages: the summary of a stage an earlier run finished in this work folder."""
        summ = work / name / "stage_summary.json"
        if args.reuse_stages and summ.is_file() and (work / name / "config.json").is_file():
            return json.loads(summ.read_text())
        return None

    reused_base = finished_before("base")
    if reused_base is None:
        start_stage("base")

    # --- fine-tune pool (workers import torch/transformers while the base trains) ---------------
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_worker_init, initargs=(str(out / "logs"),))
    warm = [pool.submit(time.sleep, 0.01) for _ in range(workers)]
    dump_env()
    futures: dict = {}
    results: list[dict] = []
    failures: list[dict] = []
    res_path = out / "finetune_results.jsonl"
    res_path.write_text("")

    pending: list[dict] = []

    def submit_arms(stage: str) -> None:
        for task in tasks:
            for arm, model_stage in arms_of[task].items():
                if model_stage != stage:
                    continue
                for seed in seeds:
                    for b in budgets[task]:
                        pending.append({"task": task, "arm": arm, "budget": b, "seed": seed,
                                        "model": str(work / stage), "data": str(data),
                                        "outdir": str(work / "ft" / f"{task}_{arm}_{b}_{seed}"), "scale": args.scale,
                                        "deadline": hard_deadline - args.ft_margin})
                event(f"{task} arm {arm}: {len(seeds) * len(budgets[task])} fine-tunes queued")

    def fill_pool() -> None:
        # Not FIFO: lowest seed first (so that, if time runs out, what is missing is a whole seed
        # rather than a whole arm), then the longest job (all labels) first.
        pending.sort(key=lambda s: (s["arm"] in OPTIONAL_ARMS, s["seed"], -(10**9 if s["budget"] == "all" else int(s["budget"])),
                                    ALL_ARMS.index(s["arm"]), s["task"]))
        # While a pretraining stage runs, only a few fine-tunes share the GPU with it, so that
        # time-slicing does not starve (and time-cap) the stage.
        limit = min(workers, args.workers_during_pretrain) if running else workers
        while pending and len(futures) < limit:
            spec = pending.pop(0)
            futures[pool.submit(ft_job, spec)] = spec

    def write_report() -> None:
        report = build_report(results, done_stages, failures, failed_stages, budgets, seeds,
                              args.scale, now() - t_start)
        (out / "summary.json").write_text(json.dumps(report["summary"], indent=1))
        (out / "tables.md").write_text(report["markdown"])

    needed = {m for t in tasks for m in arms_of[t].values()}
    needed |= {STAGES[m][1] for m in needed if STAGES[m][1]}     # parents (dapt for dapt_tapt)

    def stage_done(name: str, s: dict, reused: bool = False) -> None:
        done_stages[name] = s
        (out / f"pretrain_{name}.json").write_text(json.dumps(s, indent=1))
        ho = s["metrics"]["heldout"]
        event(f"stage {name}: {'reused' if reused else 'done'} ({s['wall_seconds']}s, capped {s['time_capped']}); ppl "
              + ", ".join(f"{k} {v['after']['perplexity']:.1f}" for k, v in ho.items()))
        nexts = NEXT_STAGES.get(name, []) if plan["stagger"] else [
            c for c, (_, parent) in STAGES.items() if parent == name]
        for nxt in nexts:
            if nxt in needed and nxt not in running and nxt not in done_stages:
                if (prev := finished_before(nxt)) is not None:
                    stage_done(nxt, prev, reused=True)
                else:
                    start_stage(nxt)
        submit_arms(name)

    if reused_base is not None:
        stage_done("base", reused_base, reused=True)
    try:
        while (running or futures or pending) and now() < hard_deadline:
            for name, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                summ = work / name / "stage_summary.json"
                if proc.returncode == 0 and summ.is_file():
                    stage_done(name, json.loads(summ.read_text()))
                else:
                    failed_stages.add(name)
                    event(f"stage {name}: FAILED rc={proc.returncode} (see logs/stage_{name}.log)")
                write_report()
            fill_pool()
            finished, _ = cf.wait(list(futures), timeout=1.0, return_when=cf.FIRST_COMPLETED) if futures else (set(), None)
            if not futures:
                time.sleep(1.0)
            for f in finished:
                spec = futures.pop(f)
                try:
                    row = f.result()
                    results.append(row)
                    with open(res_path, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    event(f"ft {row['task']} {row['arm']} b={row['budget']} s={row['seed']}: test macro-F1 {row['test_macro_f1']:.4f} "
                          f"acc {row['test_accuracy']:.4f} ({row['seconds']}s, {row['steps']} steps)")
                except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others
                    failures.append({k: spec[k] for k in ("task", "arm", "budget", "seed")} | {"error": repr(exc)[:500]})
                    event(f"ft {spec['task']} {spec['arm']} b={spec['budget']} s={spec['seed']}: FAILED {exc!r}"[:300])
            if finished:
                write_report()
        if running or futures or pending:
            event(f"deadline reached: {len(running)} stages, {len(futures)} running and {len(pending)} queued "
                  "fine-tunes unfinished")
    finally:
        for name, (proc, log) in running.items():
            proc.kill()
        for f in futures:
            f.cancel()
        write_report()
        event(f"total {now() - t_start:.1f}s: {len(results)} fine-tunes, {len(failures)} failed, "
              f"stages {sorted(done_stages)}")
        events.close()
        procs = list(getattr(pool, "_processes", {}).values())
        if futures or running:
            for p in procs:
                p.kill()
            os._exit(0)
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def _task_tables(task: str, cell: dict, budgets: list[str], summary: dict, tfidf: dict | None) -> list[str]:
    """Macro-F1, accuracy and paired-difference tables of one task."""
    arms = [a for a in TASKS[task]["arms"] if any(k[:2] == (task, a) for k in cell)]   # arms with results
    readme = TASKS[task]["readme_tfidf"]
    lines = [f"## {task}: test macro-F1, mean ± std over seeds (n = seeds finished)", "",
             "| arm | " + " | ".join(f"{b} labels" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for arm in arms:
        row = []
        for b in budgets:
            rs = cell.get((task, arm, b), [])
            m, sd = _mean_std([r["test_macro_f1"] for r in rs])
            ma, sda = _mean_std([r["test_accuracy"] for r in rs])
            summary["cells"][f"{task}/{arm}/{b}"] = {"n": len(rs), "macro_f1_mean": m, "macro_f1_std": sd,
                                                     "accuracy_mean": ma, "accuracy_std": sda,
                                                     "seeds": sorted(r["seed"] for r in rs)}
            row.append("–" if not rs else f"{m:.3f} ± {sd:.3f} (n={len(rs)})" if len(rs) > 1 else f"{m:.3f} (n=1)")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    if tfidf:
        lines.append("| TF-IDF+LR (same subsets) | " + " | ".join(
            (f"{tfidf[b]['macro_f1_mean']:.3f} ± {tfidf[b]['macro_f1_std']:.3f}" if b in tfidf else "–") for b in budgets) + " |")
    lines += ["", f"TF-IDF+LR on all labels from shared/data/README.md: macro-F1 {readme['macro_f1']}, "
              f"accuracy {readme['accuracy']}.", ""]
    lines += [f"## {task}: test accuracy, mean ± std over seeds", "",
              "| arm | " + " | ".join(f"{b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for arm in arms:
        row = []
        for b in budgets:
            c = summary["cells"][f"{task}/{arm}/{b}"]
            row.append("–" if not c["n"] else f"{c['accuracy_mean']:.3f} ± {c['accuracy_std']:.3f}" if c["n"] > 1
                       else f"{c['accuracy_mean']:.3f}")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    if tfidf:
        lines.append("| TF-IDF+LR | " + " | ".join(
            (f"{tfidf[b]['accuracy_mean']:.3f} ± {tfidf[b]['accuracy_std']:.3f}" if b in tfidf else "–") for b in budgets) + " |")
    lines += ["", f"## {task}: difference to ft_only (test macro-F1), paired by seed (same label subset)", "",
              "Δ = mean of per-seed differences ± its std. 'yes' when |Δ| > 2 × SE of the paired differences "
              "and |Δ| > the ft_only std over seeds.", "",
              "| arm | " + " | ".join(f"{b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm in arms[1:]:
        row = []
        for b in budgets:
            base = {r["seed"]: r["test_macro_f1"] for r in cell.get((task, "ft_only", b), [])}
            other = {r["seed"]: r["test_macro_f1"] for r in cell.get((task, arm, b), [])}
            common = sorted(set(base) & set(other))
            diffs = [other[s] - base[s] for s in common]
            m, sd = _mean_std(diffs)
            noise = _mean_std(list(base.values()))[1]
            se = sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            beyond = bool(len(diffs) > 1 and abs(m) > 2 * se and abs(m) > noise)
            summary["paired"][f"{task}/{arm}/{b}"] = {"n": len(diffs), "diff_mean": m, "diff_std": sd,
                                                      "ft_only_std": noise, "beyond_noise": beyond}
            row.append("–" if not diffs else f"{m:+.3f} ± {sd:.3f} ({'yes' if beyond else 'no'})" if len(diffs) > 1
                       else f"{m:+.3f} (n=1)")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return lines + [""]


PPL_SETS = [("domain", "computing valid"), ("general", "general valid"), ("task", "FOLDOC dev texts"),
            ("licenses", "licenses dev texts")]


def build_report(results, stages, failures, failed_stages, budgets: dict, seeds, scale, elapsed,
                 tfidf: dict | None = None) -> dict:
    """``budgets``/``tfidf``: per task. Rows without a "task" (older results) are FOLDOC rows."""
    cell = {}
    for r in results:
        if r.get("time_capped"):          # cut short by the device deadline: not comparable, listed below
            continue
        cell.setdefault((r.get("task", "foldoc"), r["arm"], r["budget"]), []).append(r)
    summary = {"scale": scale, "elapsed_s": round(elapsed, 1), "cells": {}, "paired": {}, "stages": {},
               "failures": failures, "failed_stages": sorted(failed_stages)}
    lines = [f"# DAPT/TAPT small ({scale}); {len(results)} fine-tunes, {elapsed:.0f}s", ""]
    for task, bs in budgets.items():
        lines += _task_tables(task, cell, bs, summary, (tfidf or {}).get(task))
    lines += ["## Perplexity after each pretraining stage (held-out; ≤100k tokens each; in brackets: before the stage)", "",
              "| stage | parent | train tokens | steps | capped | " + " | ".join(f"{k} ({what})" for k, what in PPL_SETS) + " |",
              "|---|---|---:|---:|---|" + "---:|" * len(PPL_SETS)]
    for name in STAGES:
        s = stages.get(name)
        if not s:
            if name in failed_stages:
                lines.append(f"| {name} | | | | FAILED |" + " |" * len(PPL_SETS))
            continue
        ho = s["metrics"]["heldout"]
        tr = s["metrics"]["train"]
        summary["stages"][name] = {k: {"before": v["before"]["perplexity"], "after": v["after"]["perplexity"]}
                                   for k, v in ho.items()} | {"tokens_seen": tr["tokens_seen"], "steps": tr["steps"],
                                                              "time_capped": s["time_capped"],
                                                              "tokens_per_second": tr["tokens_per_second"]}
        ppl = {k: f"{v['after']['perplexity']:.1f} ({v['before']['perplexity']:.1f})" if name != "base"
               else f"{v['after']['perplexity']:.1f}" for k, v in ho.items()}
        lines.append(f"| {name} | {s['parent'] or 'scratch'} | {tr['tokens_seen']:,} | {tr['steps']} | "
                     f"{'yes' if s['time_capped'] else 'no'} | " + " | ".join(ppl.get(k, "") for k, _ in PPL_SETS) + " |")
    if failures:
        lines += ["", f"{len(failures)} fine-tunes failed: " + "; ".join(
            f"{f.get('task', 'foldoc')}/{f['arm']}/{f['budget']}/{f['seed']}: {f['error'][:120]}" for f in failures[:5])]
    capped = [r for r in results if r.get("time_capped")]
    if capped:
        lines += ["", f"{len(capped)} fine-tunes were stopped by the time cap and are left out of the means: " + ", ".join(
            f"{r.get('task', 'foldoc')}/{r['arm']}/{r['budget']}/{r['seed']}" for r in capped)]
    return {"summary": summary, "markdown": "\n".join(lines) + "\n"}


def cmd_report(args) -> None:
    res = Path(args.results)
    results = [json.loads(line) for line in (res / "finetune_results.jsonl").read_text().splitlines() if line.strip()]
    stages = {p.stem[len("pretrain_"):]: json.loads(p.read_text()) for p in sorted(res.glob("pretrain_*.json"))}
    tfidf = {t: json.loads(tfidf_path(t).read_text())["budgets"] for t in TASKS if tfidf_path(t).is_file()}
    summ = json.loads((res / "summary.json").read_text()) if (res / "summary.json").is_file() else {}
    budgets = {}
    for r in results:
        budgets.setdefault(r.get("task", "foldoc"), set()).add(r["budget"])
    budgets = {t: sorted(bs, key=lambda b: 10**9 if b == "all" else int(b)) for t, bs in budgets.items()}
    seeds = sorted({r["seed"] for r in results})
    rep = build_report(results, stages, summ.get("failures", []), set(summ.get("failed_stages", [])), budgets, seeds,
                       summ.get("scale", "?"), summ.get("elapsed_s", 0.0), tfidf=tfidf)
    Path(args.markdown).write_text(rep["markdown"])
    print(rep["markdown"])


# ------------------------------------------------------------------------------------------------
# TF-IDF + LR at the same budgets and subsets (CPU)
# ------------------------------------------------------------------------------------------------
def tfidf_path(task: str) -> Path:
    return HERE / ("results/tfidf_budgets.json" if task == "foldoc" else f"results/tfidf_budgets_{task}.json")


def cmd_tfidf(args) -> None:
    from lmadapt.pipeline.baseline import tfidf_baseline

    spec = TASKS[args.task]
    out = {"method": "word 1-2-gram TF-IDF (sublinear tf, min_df 2 (1 for <=200 texts), <=200k features) + "
                     "LogisticRegression(max_iter 3000), C in {0.1, 1, 10} by dev macro-F1 "
                     "(lmadapt.pipeline.baseline.tfidf_baseline); subsets from lmadapt's read_splits "
                     "(data.max_examples + data.subset_seed = seed), i.e. the fine-tuning subsets", "budgets": {}}
    for b in spec["budgets"]:
        runs = []
        for seed in SEEDS if b != "all" else [0]:
            d = recipe_dict(spec["recipe"], MODEL="unused", DATA=args.data, OUTDIR="/tmp/unused", SEED=seed,
                            BUDGET="null" if b == "all" else b)
            d.pop("schedule")
            # min_df 2 drops one-off n-grams; a tiny training set keeps them (min_df 2 would leave too few)
            r = tfidf_baseline(d, Cs=(0.1, 1, 10), max_features=200_000,
                               min_df=2 if b == "all" or int(b) > 200 else 1)
            runs.append({"seed": seed, "n": r["examples"]["train"], "C": r["C"], "dev_macro_f1": r["dev"]["macro_f1"],
                         "macro_f1": r["test"]["macro_f1"], "accuracy": r["test"]["accuracy"]})
        m, sd = _mean_std([r["macro_f1"] for r in runs])
        ma, sda = _mean_std([r["accuracy"] for r in runs])
        out["budgets"][b] = {"runs": runs, "macro_f1_mean": m, "macro_f1_std": sd if len(runs) > 1 else 0.0,
                             "accuracy_mean": ma, "accuracy_std": sda if len(runs) > 1 else 0.0}
        print(b, json.dumps(out["budgets"][b]))
    path = Path(args.json) if args.json else tfidf_path(args.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", default=str(REPO / ".benchdata/dapt"))
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--general-fraction", type=float, default=0.75)
    p.add_argument("--vocab", type=int, default=8192)
    p = sub.add_parser("run")
    p.add_argument("--data", default=str(REPO / ".benchdata/dapt"))
    p.add_argument("--work", default="/tmp/dapt_work")
    p.add_argument("--out", required=True)
    p.add_argument("--scale", choices=["full", "cpu", "toy"], default="full")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--workers-during-pretrain", type=int, default=4)
    p.add_argument("--stage-cap", type=float, default=None, help="override every stage's training-time cap (s)")
    p.add_argument("--plan", choices=list(PLANS), default="full",
                   help="full: every task, arm and budget; diag: why DAPT did not help (controls, all labels); "
                        "cpu_diag: the same at 300 labels with tapt_ft, for --scale cpu")
    p.add_argument("--deadline", type=float, default=280.0, help="seconds: stop everything and write the tables")
    p.add_argument("--ft-margin", type=float, default=12.0, help="fine-tunes stop training this long before the deadline")
    p.add_argument("--budgets", default=None, help="override the plan's label budgets, e.g. 100,300 (or all)")
    p.add_argument("--arms", default=None, help="override the plan's arms, e.g. ft_only,dapt_ft")
    p.add_argument("--reuse-stages", action="store_true",
                   help="keep --work and reuse the pretraining stages an earlier run finished there (same recipes)")
    p = sub.add_parser("stage")
    p.add_argument("--name", choices=list(STAGES), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--scale", choices=["full", "cpu", "toy"], default="full")
    p.add_argument("--cap", type=float, default=600.0)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--markdown", required=True)
    p = sub.add_parser("tfidf")
    p.add_argument("--data", default=str(REPO / ".benchdata/dapt"))
    p.add_argument("--task", choices=list(TASKS), default="foldoc")
    p.add_argument("--json", default=None, help="default: results/tfidf_budgets[_TASK].json")
    args = ap.parse_args()
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    {"prepare": cmd_prepare, "run": cmd_run, "stage": cmd_stage, "report": cmd_report, "tfidf": cmd_tfidf}[args.cmd](args)


if __name__ == "__main__":
    main()
