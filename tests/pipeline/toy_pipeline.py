"""The miniature pipeline the pipeline tests share: a toy corpus, a keyword task, two arms.

The model is a scratch Llama (hidden 32, 2 layers) on the tiny test tokenizer; every stage runs a
few steps.
"""

import json
import random
from pathlib import Path

from helpers import CORPUS, tiny_bpe_tokenizer

KEYWORDS = {"pos": "over", "neg": "was"}
FILLER = "the quick brown fox jumps lazy dog a journey of thousand miles begins single step".split()


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def toy_rows(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(KEYWORDS))
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(len(words) + 1), KEYWORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    return rows


def make_workspace(d: Path) -> dict:
    """Corpora, held-out sets and a keyword classification task under ``d``."""
    tok = d / "tok"
    tiny_bpe_tokenizer(tok)
    general = write_jsonl(d / "general.jsonl", [{"text": " ".join(CORPUS[i : i + 4])} for i in range(0, 40, 2)])
    domain = write_jsonl(d / "domain.jsonl", [{"text": " ".join(CORPUS[i : i + 3])} for i in range(20, 52, 2)])
    gval = write_jsonl(d / "general_valid.jsonl", [{"text": " ".join(CORPUS[:6])}])
    dval = write_jsonl(d / "domain_valid.jsonl", [{"text": " ".join(CORPUS[40:46])}])
    task = {
        s: write_jsonl(d / f"{s}.jsonl", toy_rows(n, i))
        for i, (s, n) in enumerate((("train", 48), ("dev", 20), ("test", 20)))
    }
    return {"dir": d, "tok": str(tok), "general": general, "domain": domain, "gval": gval, "dval": dval, **task}


def pipeline_dict(ws, out: Path) -> dict:
    return {
        "output_dir": str(out),
        "seeds": [0, 1],
        "seeded_kinds": ["finetune"],
        # The resume tests take DONE away from finished stages, as if they had died after their last
        # checkpoint; a finished stage's checkpoints are otherwise deleted (test_pipeline_rerun.py).
        "keep_checkpoints": True,
        "vars": {"data": str(ws["dir"])},
        "evaluation": {"lm_sets": {"domain": ws["dval"], "general": ws["gval"]}, "block_size": 32, "max_tokens": 400},
        "baseline": {"tfidf": True},
        "defaults": {
            "pretrain": {
                "data": {
                    "block_size": 32,
                    "cache_dir": str(ws["dir"] / "cache"),
                    "eval_sources": [
                        {"path": ws["dval"], "name": "domain_valid"},
                        {"path": ws["gval"], "name": "general_valid"},
                    ],
                },
                "train": {
                    "max_steps": 4,
                    "batch_size": 4,
                    "lr": 3e-3,
                    "warmup_steps": 1,
                    "log_every": 1,
                    "eval_every": 2,
                    "save_every": 2,
                    "report_to": [],
                    "torch_threads": 1,
                },
            },
            "finetune": {
                "model": {"max_length": 32},
                "data": {"train": "${data}/train.jsonl", "dev": ws["dev"], "test": ws["test"]},
                "train": {
                    "epochs": 1,
                    "batch_size": 16,
                    "lr": 5e-3,
                    "warmup_ratio": 0.0,
                    "log_every": 1,
                    "report_to": [],
                    "torch_threads": 1,
                },
            },
        },
        "stages": {
            "base": {
                "kind": "pretrain",
                "recipe": {
                    "model": {
                        "init": "scratch",
                        "arch": "llama",
                        "tokenizer": ws["tok"],
                        "dims": {
                            "hidden_size": 32,
                            "intermediate_size": 64,
                            "num_hidden_layers": 2,
                            "num_attention_heads": 4,
                            "num_key_value_heads": 2,
                        },
                    },
                    "data": {"sources": [{"path": ws["general"], "name": "general"}]},
                },
            },
            "dapt": {
                "kind": "pretrain",
                "recipe": {
                    "model": {"path": "@previous"},
                    "data": {
                        "sources": [
                            {"path": ws["domain"], "name": "domain"},
                            {"path": ws["general"], "name": "general", "share": 0.1},
                        ]
                    },
                },
            },
            "ft": {"kind": "finetune", "recipe": {}},
        },
        "arms": {
            "ft_only": ["base", "ft"],
            "dapt_ft": [
                "base",
                "dapt",
                {"kind": "evaluate", "recipe": {"data": {"domain": ws["dval"]}, "block_size": 32}},
                "ft",
            ],
        },
    }
