"""Held-out evaluation every N steps while the training corpus streams from a hub dataset (issue 19):
the stage reads a hub repo (here a local folder laid out like one, read through the same
``datasets.load_dataset`` code) with streaming, and logs the held-out loss at each eval step."""

import json

import pytest

from helpers import tiny_bpe_tokenizer
from lmadapt.config import PretrainConfig, load_recipe

pytest.importorskip("datasets")


def test_heldout_evaluation_every_n_steps_with_a_streamed_hub_corpus(tmp_path):
    from lmadapt.stages.pretrain import run_pretrain

    repo = tmp_path / "owner_corpus"
    (repo / "data").mkdir(parents=True)
    for split, n in (("train", 40), ("validation", 6)):
        (repo / "data" / f"{split}-00000-of-00001.jsonl").write_text(
            "".join(json.dumps({"text": f"the fox {i} jumps over the lazy dog {split}"}) + "\n" for i in range(n))
        )
    tok = tmp_path / "tok"
    tiny_bpe_tokenizer(tok)
    data = {
        "model": {
            "init": "scratch",
            "arch": "llama",
            "tokenizer": str(tok),
            "dims": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        },
        "data": {
            "sources": [{"path": str(repo), "format": "hub", "streaming": True}],
            "eval_sources": [
                {"path": str(repo), "format": "hub", "split": "validation", "streaming": True, "name": "held"}
            ],
            "block_size": 32,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 6,
            "batch_size": 4,
            "lr": 3e-3,
            "eval_every": 2,
            "log_every": 2,
            "report_to": [],
            "torch_threads": 1,
        },
    }
    run_pretrain(load_recipe(PretrainConfig, data=data))
    rows = [json.loads(line) for line in (tmp_path / "out" / "logs.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_held_loss"] for r in rows if "eval_held_loss" in r}
    assert sorted(evals) == [2, 4, 6], rows
    assert evals[6] < evals[2]
