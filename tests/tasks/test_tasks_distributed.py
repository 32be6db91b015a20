"""`lmadapt finetune` under torchrun with two CPU processes (gloo) for tasks scored outside the
Trainer (extraction, instruction): dev is scored at every epoch by TaskEvalCallback and dev/test
at the end, each process on its share. The metrics must equal one process scoring the saved model
on the whole split. (These few steps teach the tiny model little, so the scores cannot show a
misordered gather: tests/test_dist.py and the classification run in
tests/pipeline/test_pipeline_distributed.py check the order.)"""

import json
import random
import sys

import pytest
import yaml

from _tiny import marker_span_rows, write_jsonl
from helpers import tiny_bpe_tokenizer, tiny_llama, torchrun

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process runs on Linux")


def instruction_rows(n, seed):
    rng = random.Random(seed)
    words = "fox dog moon cell bread river galaxy server".split()
    return [{"prompt": f"copy: {w}", "response": w} for w in (rng.choice(words) for _ in range(n))]


TASKS = {
    "extraction": (marker_span_rows, {}, ("span_f1", "span_precision", "span_recall", "n")),
    "instruction": (
        instruction_rows,
        {"instruction": {"max_new_tokens": 4, "eval_generate_max": 7}},
        ("exact_match", "generated", "response_tokens", "n"),
    ),
}


@pytest.mark.parametrize("task, sharding", [(t, "none") for t in sorted(TASKS)] + [("instruction", "fsdp")])
def test_two_process_finetune_scores_like_one_process(tmp_path, task, sharding):
    """(fsdp: the model sharded over the two processes; the callback's and the final evaluation,
    generation included, then run in lockstep on every process.)"""
    from lmadapt.stages.finetune import read_splits
    from lmadapt.stages.predict import load_predictor

    rows, sections, exact_keys = TASKS[task]
    tok = tiny_bpe_tokenizer(tmp_path / "model")
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    data = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", rows(n, seed)))
        for seed, (split, n) in enumerate((("train", 32), ("dev", 11), ("test", 9)))
    }  # odd: uneven shares
    length = 64 if task == "instruction" else None
    recipe = {
        "model": {"path": str(tmp_path / "model"), "max_length": length},
        "data": data,
        "task": {"type": task},
        **sections,
        "train": {
            "output_dir": str(tmp_path / "out"),
            "epochs": 2,
            "batch_size": 4,
            "lr": 3e-3,
            "log_every": 1,
            "report_to": [],
            "torch_threads": 1,
            "sharding": sharding,
        },
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    proc = torchrun("-m", "lmadapt.cli", "finetune", str(tmp_path / "recipe.yaml"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(saved["selection"]["evaluated_epochs"]) == 2  # the callback scored dev after each epoch
    p = load_predictor(tmp_path / "out")
    splits, _, space = read_splits(p.task, p.cfg)
    for split in ("dev", "test"):
        again = p.task.evaluate(p.model, p.tokenizer, splits[split], space, p.cfg)
        for key in exact_keys:
            assert saved[split][key] == again[key], (split, key)
        if task == "instruction":
            assert saved[split]["response_loss"] == pytest.approx(again["response_loss"], rel=1e-5)
    assert saved["dev"]["n"] == 11 and saved["test"]["n"] == 9
