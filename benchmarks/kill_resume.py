"""Kill-and-resume: does a run SIGKILLed 10 times at random points, resumed after each kill, end with the
weights of the uninterrupted run, bit for bit? One row per stage kind (tiny models, CPU, a few minutes).

For each kind (causal pretraining, whole-word masked-LM pretraining, classification fine-tuning without
and with a dev set, instruction fine-tuning) the script runs the stage once to the end, then runs it again into
another folder with ``train.resume=true``, SIGKILLing it 10 times: most kills when the log shows a
randomly drawn step was reached (plus 0-40 ms, so the kill lands anywhere in a step, a checkpoint save,
an evaluation), some at a random moment of the start-up (data preparation, evaluation before training).
Each run is a forked child of this process (torch, transformers and lmadapt are imported once, so a
start costs ~0.1 s instead of ~5 s), killed with SIGKILL: nothing of it gets to clean up.
It compares the final ``model.safetensors``, the steps in ``logs.jsonl`` (each once, the same as the
uninterrupted run's), ``tokens_seen`` and the whole-run ``train_loss`` of ``metrics.json``.

    python benchmarks/kill_resume.py --seed 0 | tee benchmarks/results/kill_resume.txt

Tiny models and tokenizers come from tests/helpers.py (random weights, fixed seeds); the text is generated.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import multiprocessing as mp  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from helpers import tiny_bert, tiny_bpe_tokenizer, tiny_llama, tiny_wordpiece_tokenizer  # noqa: E402
from lmadapt.cli import main as lmadapt_main  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
import lmadapt.commands, lmadapt.stages.finetune, lmadapt.stages.pretrain  # noqa: E401,E402,F401  (imported once, before the forks)

WORDS = ("the fox dog cat bird jumps over runs past sleeps near looks at lazy quick brown river moon "
         "court held contract bank rates energy light time model data text new").split()
COMMON_TRAIN = {"report_to": [], "seed": 0, "torch_threads": 1, "log_every": 1, "save_total_limit": 2}


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def texts(n: int, seed: int, lo: int = 8, hi: int = 40) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))} for _ in range(n)]


def setup(work: Path) -> dict[str, tuple[str, dict]]:
    """{kind: (command, recipe)} with every input written under ``work``."""
    bpe, wp = work / "bpe", work / "wordpiece"
    tiny_bpe_tokenizer(bpe)
    tiny_wordpiece_tokenizer(wp)
    llama, bert = work / "llama", work / "bert"
    tok = tiny_bpe_tokenizer(llama)
    tiny_llama(len(tok)).save_pretrained(llama)
    tok = tiny_wordpiece_tokenizer(bert)
    tiny_bert(len(tok)).save_pretrained(bert)
    corpus = write_jsonl(work / "corpus.jsonl", texts(160, 0))
    small = write_jsonl(work / "small.jsonl", texts(48, 3))     # masked LM: several short epochs
    valid = write_jsonl(work / "valid.jsonl", texts(12, 1))
    rng = random.Random(2)
    cls_rows = []
    for _ in range(120):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(WORDS, rng.randint(3, 12))
        words.insert(rng.randrange(len(words) + 1), "over" if label == "pos" else "was")
        cls_rows.append({"text": " ".join(words), "label": label})
    cls_train = write_jsonl(work / "cls_train.jsonl", cls_rows[:64])
    cls_dev = write_jsonl(work / "cls_dev.jsonl", cls_rows[96:])
    inst = write_jsonl(work / "inst.jsonl", [{"prompt": f"copy: {' '.join(w)}", "response": " ".join(w)}
                                             for w in (rng.sample(WORDS, rng.randint(1, 4)) for _ in range(160))])
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    pretrain_data = {"sources": [{"path": corpus}], "eval_sources": [{"path": valid, "name": "valid"}],
                     "block_size": 64, "cache_dir": str(work / "cache")}
    return {
        "causal_pretrain": ("pretrain", {
            "model": {"init": "scratch", "arch": "llama", "tokenizer": str(bpe), "dims": {**dims, "num_key_value_heads": 2}},
            "data": pretrain_data,
            "train": {**COMMON_TRAIN, "max_steps": 40, "batch_size": 4, "lr": 3e-3, "warmup_steps": 3, "save_every": 4}}),
        "mlm_pretrain": ("pretrain", {
            "model": {"init": "scratch", "arch": "bert", "tokenizer": str(wp), "dims": dims},
            "data": {**pretrain_data, "sources": [{"path": small}]},
            "train": {**COMMON_TRAIN, "epochs": 3, "batch_size": 4, "lr": 3e-3, "warmup_steps": 3, "save_every": 4}}),
        "classification": ("finetune", {   # no dev set: the final weights are the last step's; checkpoints mid-epoch
            "model": {"path": str(bert), "max_length": 32},
            "data": {"train": cls_train, "dev_fraction": 0.0},
            "train": {**COMMON_TRAIN, "epochs": 4, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0,
                      "group_by_length": True, "save_every": 3}}),
        # A dev set: evaluation and checkpoints at each epoch's end, early stopping, the best epoch's weights
        # saved (so runs that part after the best epoch can still end alike: the kind above is the stricter).
        "classification_dev": ("finetune", {
            "model": {"path": str(bert), "max_length": 32},
            "data": {"train": cls_train, "dev": cls_dev},
            "train": {**COMMON_TRAIN, "epochs": 4, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0,
                      "group_by_length": True, "early_stopping_patience": 3}}),
        "instruction": ("finetune", {
            "model": {"path": str(llama)},
            "task": {"type": "instruction"},
            "instruction": {"template": "plain", "max_length": 128, "eval_generate_max": 4, "max_new_tokens": 4},
            "data": {"train": inst, "dev_fraction": 0.0},
            "train": {**COMMON_TRAIN, "epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0, "save_every": 4}}),
    }


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    os._exit(lmadapt_main(argv))


def start(command: str, recipe: Path, out: Path, *extra: str) -> mp.Process:
    proc = mp.get_context("fork").Process(target=_child, args=([command, str(recipe), f"train.output_dir={out}", *extra],
                                                              str(out.parent / f"{out.name}.log")))
    proc.start()
    return proc


def last_step(out: Path) -> int:
    try:
        lines = (out / "logs.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return -1
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1


def error_of(out: Path) -> str:
    """The last error line of a run's log."""
    lines = Path(f"{out}.log").read_text(encoding="utf-8", errors="replace").splitlines()
    said = [line for line in lines if "rror" in line]
    return (said or lines or ["(no output)"])[-1][-300:]


def run_killed(command: str, recipe: Path, out: Path, total_steps: int, kills: int, rng: random.Random) -> list[str]:
    """``kills`` SIGKILLs at random points, each run resuming the last; then a run to the end. Where each kill landed."""
    plan = [("step", t) for t in sorted(rng.sample(range(1, total_steps), kills - kills // 5))]
    for _ in range(kills // 5):   # a fifth of the kills land in the start-up of a resumed run
        plan.insert(rng.randrange(len(plan) + 1), ("startup", rng.uniform(0.2, 2.5)))
    landed = []
    for kind, at in plan:
        proc = start(command, recipe, out, "train.resume=true")
        t0 = time.time()
        while proc.is_alive():
            if (kind == "startup" and time.time() - t0 >= at) or (kind == "step" and last_step(out) >= at):
                time.sleep(rng.uniform(0.0, 0.04))
                break
            time.sleep(0.005)
        if not proc.is_alive():
            proc.join()
            landed.append(f"{kind} {at:.0f}: " + ("finished before the kill" if proc.exitcode == 0 else
                                                   f"FAILED on its own (exit {proc.exitcode}: {error_of(out)})"))
            continue
        step = last_step(out)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        landed.append(f"t+{time.time() - t0:.1f}s step {step}" if kind == "step" else f"start-up t+{at:.1f}s (step {step})")
    proc = start(command, recipe, out, "train.resume=true")
    proc.join()
    if proc.exitcode != 0:
        landed.append(f"the final resumed run FAILED (exit {proc.exitcode}: {error_of(out)})")
    return landed


def compare(full: Path, killed: Path) -> dict:
    if not (killed / "metrics.json").is_file():
        return {"identical": False, "duplicated_steps": None, "error": "no finished run to compare"}
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    differ = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    ma, mb = (json.loads((p / "metrics.json").read_text())["train"] for p in (full, killed))
    steps = [[json.loads(line)["step"] for line in (p / "logs.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)] for p in (full, killed)]
    return {"identical": not differ and wa.keys() == wb.keys(), "tensors_differ": len(differ), "tensors": len(wa),
            "logs_same_steps": steps[0] == steps[1], "duplicated_steps": len(steps[1]) - len(set(steps[1])),
            "tokens_seen": (ma.get("tokens_seen"), mb.get("tokens_seen")),
            "train_loss": (ma["train_loss"], mb["train_loss"]), "parts": mb.get("parts"),
            "steps": (ma["steps"], mb["steps"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="draws the kill points")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--kinds", default="causal_pretrain,mlm_pretrain,classification,classification_dev,instruction")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed; kept anyway when a kind differs)")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="lmadapt_kill_resume_"))
    rows, t_all = [], time.time()
    try:
        stages = setup(work)
        for kind in args.kinds.split(","):
            command, recipe = stages[kind]
            path = work / f"{kind}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            t0 = time.time()
            full = work / f"{kind}-full"
            proc = start(command, path, full)
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"{kind}: the uninterrupted run failed; see {full}.log")
            total = json.loads((full / "metrics.json").read_text())["train"]["steps"]
            t_full = time.time() - t0
            landed = run_killed(command, path, work / f"{kind}-killed", total, args.kills,
                                random.Random(f"{args.seed}:{kind}"))
            result = compare(full, work / f"{kind}-killed")
            rows.append((kind, result))
            print(f"{kind}: {total} steps, uninterrupted {t_full:.1f} s, with {args.kills} kills {time.time() - t0 - t_full:.1f} s")
            print("  kills: " + "; ".join(landed))
            print("  " + json.dumps(result))
            sys.stdout.flush()
    finally:
        if args.keep or not all(r["identical"] for _, r in rows):   # what went wrong stays to be read
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    same = sum(r["identical"] for _, r in rows)
    print(f"\nbit-identical finishes: {same}/{len(rows)} stage kinds ({args.kills} SIGKILLs each, seed {args.seed}); "
          f"logs without duplicated steps: {sum(r['duplicated_steps'] == 0 for _, r in rows)}/{len(rows)}; "
          f"total {time.time() - t_all:.0f} s")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
