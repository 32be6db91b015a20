"""Shared helpers of the extraction, qa and instruction tests: recipes, JSONL files, a toy rule, a short Trainer run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lmadapt.config.base import from_dict
from lmadapt.config.finetune import FinetuneConfig

# Words that are whole tokens (or few pieces) in the helpers' tiny tokenizers.
FILLER = [
    "the",
    "court",
    "held",
    "that",
    "contract",
    "was",
    "patient",
    "bank",
    "rates",
    "energy",
    "light",
    "time",
    "over",
    "with",
    "and",
    "for",
    "model",
    "data",
    "text",
    "new",
]
NAMES = ["fox", "dog", "moon", "cell", "bread", "river", "galaxy", "server"]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe(
    tmp: Path,
    task: str,
    *,
    train: Path | None = None,
    sections: dict | None = None,
    data: dict | None = None,
    train_cfg: dict | None = None,
    max_length: int | None = None,
) -> FinetuneConfig:
    """A FinetuneConfig (not validated: paths need not exist) for ``task``."""
    raw = {
        "model": {"path": str(tmp / "model"), "max_length": max_length},
        "data": {"train": str(train or tmp / "train.jsonl"), **(data or {})},
        "task": {"type": task},
        "train": {"output_dir": str(tmp / "out"), "report_to": [], "eval_batch_size": 16, **(train_cfg or {})},
    }
    raw.update(sections or {})
    return from_dict(FinetuneConfig, raw)


def marker_sentence(rng: random.Random, marker: str = "court", n: int = 6) -> tuple[str, tuple[int, int]]:
    """Filler words with ``marker NAME`` at a random place; returns the text and NAME's char span."""
    words = [rng.choice([w for w in FILLER if w != marker]) for _ in range(n)]
    pos = rng.randrange(n + 1)
    name = rng.choice(NAMES)
    words[pos:pos] = [marker, name]
    text = " ".join(words)
    start = len(" ".join(words[: pos + 1])) + 1
    return text, (start, start + len(name))


def marker_span_rows(n: int, seed: int = 0) -> list[dict]:
    """Extraction records: the word after "court" is a NAME span."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, (s, e) = marker_sentence(rng)
        rows.append({"text": text, "spans": [{"start": s, "end": e, "label": "NAME"}]})
    return rows


def train(model, tokenizer, dataset, collator, tmp: Path, *, steps: int, lr: float, batch_size: int = 16):
    """A short transformers.Trainer run on CPU; returns the logged training losses."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer)
    trainer.train()
    model.eval()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]
