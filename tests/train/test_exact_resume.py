"""A run killed at random points (mid-epoch too) and resumed each time ends with the uninterrupted run's
weights, bit for bit: a length-grouped fine-tune and whole-word masked-LM pretraining (issue 19.4).

A kill is simulated in-process: a callback raises at a chosen step (after the checkpoints before it are
written, before anything after it), as SIGKILL would leave the folder; the next run resumes
(``train.resume=true``). benchmarks/kill_resume.py does the same with real SIGKILLs.
"""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import tiny_bert, tiny_wordpiece_tokenizer
from lmadapt.config import PretrainConfig, load_recipe
from lmadapt.config.finetune import FinetuneConfig


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def run_with_kills(monkeypatch, module, run, kills: list[int]):
    """``run(resume)`` once per kill (each killed at its step), then once to the end; returns its metrics."""
    real = module.run_training
    for i, step in enumerate(kills):

        def killing(*a, callbacks=None, _step=step, **k):
            return real(*a, callbacks=[*(callbacks or []), KillAt(_step)], **k)

        monkeypatch.setattr(module, "run_training", killing)
        with pytest.raises(Killed):
            run(resume=i > 0)
    monkeypatch.setattr(module, "run_training", real)
    return run(resume=True)


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def log_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def check_whole_run(full: dict, resumed: dict, out_full: Path, out_resumed: Path):
    """metrics.json covers the whole run; logs.jsonl holds each step once, as the uninterrupted run's."""
    assert resumed["train"]["parts"] > 1 and full["train"]["parts"] == 1
    assert resumed["train"]["steps"] == full["train"]["steps"]
    assert resumed["train"]["train_loss"] == pytest.approx(full["train"]["train_loss"], rel=1e-5)
    assert log_steps(out_resumed) == log_steps(out_full)


# --- fine-tuning: length-grouped batches, several epochs, dropout on, no dev (checkpoints mid-epoch) -----

WORDS = "the quick brown fox jumps lazy dog a journey of thousand miles begins single step".split()


def write_rows(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(WORDS, rng.randint(2, 9))  # varied lengths: length grouping matters
            words.insert(rng.randrange(len(words) + 1), "over" if label == "pos" else "was")
            fh.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    tok = tiny_wordpiece_tokenizer(folder)
    tiny_bert(len(tok)).save_pretrained(folder)
    return folder


def test_length_grouped_finetune_resumes_bit_identically(bert_folder, tmp_path, monkeypatch):
    from lmadapt.stages import finetune

    train = write_rows(tmp_path / "train.jsonl", 24, 0)

    def run(out, resume=False):
        cfg = load_recipe(
            FinetuneConfig,
            data={
                "model": {"path": str(bert_folder), "max_length": 24},
                "data": {"train": train, "dev_fraction": 0.0},
                "train": {
                    "output_dir": str(tmp_path / out),
                    "epochs": 3,
                    "lr": 3e-3,
                    "batch_size": 4,
                    "group_by_length": True,
                    "save_every": 4,
                    "save_total_limit": 2,
                    "log_every": 2,
                    "report_to": [],
                    "torch_threads": 1,
                    "seed": 3,
                    "resume": resume,
                },
            },
        )
        return finetune.run_finetune(cfg)

    full = run("full")
    assert full["train"]["steps"] == 18
    kills = sorted(random.Random(7).sample(range(5, 18), 2))  # 6 steps an epoch: mid-epoch, later epochs
    resumed = run_with_kills(monkeypatch, finetune, lambda resume: run("killed", resume), kills)
    assert resumed["train"]["resumed_from"].endswith(f"checkpoint-{kills[-1] // 4 * 4}")
    assert_same_weights(tmp_path / "full", tmp_path / "killed")
    check_whole_run(full, resumed, tmp_path / "full", tmp_path / "killed")


# --- masked-LM pretraining: fresh masks each epoch, kills mid-epoch -------------------------------------


def test_masked_lm_pretraining_resumes_bit_identically(tmp_path, monkeypatch):
    from lmadapt.stages import pretrain

    tok_dir = tmp_path / "wp"
    tiny_wordpiece_tokenizer(tok_dir)
    rng = random.Random(0)
    with (tmp_path / "train.jsonl").open("w") as fh:
        for _ in range(16):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))}) + "\n")

    def run(out, resume=False):
        return pretrain.run_pretrain(
            load_recipe(
                PretrainConfig,
                data={
                    "model": {
                        "init": "scratch",
                        "arch": "bert",
                        "tokenizer": str(tok_dir),
                        "dims": {
                            "hidden_size": 32,
                            "intermediate_size": 64,
                            "num_hidden_layers": 2,
                            "num_attention_heads": 4,
                        },
                    },
                    "data": {
                        "sources": [{"path": str(tmp_path / "train.jsonl")}],
                        "block_size": 32,
                        "cache_dir": str(tmp_path / "cache"),
                    },
                    "train": {
                        "output_dir": str(tmp_path / out),
                        "epochs": 3,
                        "batch_size": 4,
                        "lr": 3e-3,
                        "warmup_steps": 2,
                        "save_every": 3,
                        "save_total_limit": 2,
                        "log_every": 2,
                        "report_to": [],
                        "seed": 0,
                        "torch_threads": 1,
                        "resume": resume,
                    },
                },
            )
        )

    full = run("full")
    steps = full["train"]["steps"]
    assert steps >= 9, steps  # several epochs of a few steps each
    assert full["train"]["tokens_seen"] > 0  # a 4D attention mask once made it hugely negative
    kills = sorted(random.Random(1).sample(range(4, steps), 2))
    resumed = run_with_kills(monkeypatch, pretrain, lambda resume: run("killed", resume), kills)
    assert_same_weights(tmp_path / "full", tmp_path / "killed")
    assert resumed["train"]["tokens_seen"] == full["train"]["tokens_seen"]
    # tokens/s over the whole run: the parts before the last count (their time up to their last checkpoint)
    assert resumed["train"]["train_seconds"] > resumed["phase_seconds"]["train"] + 0.01
    check_whole_run(full, resumed, tmp_path / "full", tmp_path / "killed")


# --- the pure functions underneath (no training) --------------------------------------------------------


def test_sampler_order_depends_on_seed_and_epoch_only():
    from lmadapt.train.samplers import EpochLengthGroupedSampler, EpochWeightedSampler

    lengths = [random.Random(i).randint(3, 40) for i in range(64)]
    for build in (
        lambda: EpochLengthGroupedSampler(8, lengths=lengths, seed=5),
        lambda: EpochWeightedSampler([1.0 + i % 3 for i in range(64)], num_samples=64, seed=5),
    ):
        ran = build()
        orders = []
        for epoch in range(3):
            ran.set_epoch(epoch)
            orders.append(list(ran))
        fresh = build()  # a resumed run builds its sampler anew, in epoch 2
        fresh.set_epoch(2)
        assert list(fresh) == orders[2]
        assert orders[0] != orders[1] != orders[2]  # still a new order every epoch


def test_masks_depend_on_seed_epoch_and_example_only():
    from lmadapt.data.collators import WholeWordMLMCollator
    from lmadapt.data.mask_seeds import MaskSeeded

    tok = tiny_wordpiece_tokenizer()
    rng = random.Random(0)
    rows = []
    for _ in range(6):
        ids = tok(" ".join(rng.choice(WORDS) for _ in range(20)), add_special_tokens=False)["input_ids"][:24]
        ids += [tok.pad_token_id] * (24 - len(ids))
        rows.append(
            {
                "input_ids": ids,
                "position_ids": list(range(24)),
                "word_starts": [1] * 24,
                "is_padding": [int(i == tok.pad_token_id) for i in ids],
            }
        )
    data = MaskSeeded(rows, seed=0)
    collate = WholeWordMLMCollator(tok, mlm_probability=0.3)
    torch.manual_seed(1)
    together = collate([data[i] for i in range(6)])
    torch.manual_seed(2)  # other global RNG state, other batch company, other order
    alone = collate([data[4], data[1]])
    assert torch.equal(alone["input_ids"][0], together["input_ids"][4])
    assert torch.equal(alone["labels"][1], together["labels"][1])
    data.set_epoch(1)
    assert not torch.equal(collate([data[4]])["labels"][0], together["labels"][4])  # fresh masks next epoch


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    """A run killed after its last step (in its final evaluation or save) resumes from its last checkpoint:
    the Trainer once trained one step more there (41 of a 40-step run)."""
    from toy_training import train_toy, weights

    done, model = train_toy(tmp_path, max_steps=6, save_every=3)  # 16 steps an epoch: ends mid-epoch
    again, model2 = train_toy(tmp_path, max_steps=6, save_every=3, resume=True)
    assert again.resumed_from.endswith("checkpoint-6") and again.global_step == 6
    w1, w2 = weights(model), weights(model2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert again.run["parts"] == 2 and again.train_loss == pytest.approx(done.train_loss)
