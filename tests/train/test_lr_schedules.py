"""Schedules for long continued pretraining: warmup-stable-decay, cosine to a floor, and extending a
wsd run from its stable phase (the extended run is the run planned that long from the start)."""

import json

import pytest
import torch

from toy_training import train_toy, weights

PEAK = 1e-2


def lrs(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}


def test_wsd_and_cosine_to_a_floor(tmp_path):
    train_toy(
        tmp_path / "wsd",
        scheduler="wsd",
        decay_fraction=0.25,
        min_lr_ratio=0.1,
        warmup_steps=2,
        max_steps=12,
        log_every=1,
    )
    lr = lrs(tmp_path / "wsd")
    assert lr[1] < PEAK and all(lr[s] == pytest.approx(PEAK) for s in range(3, 10)), lr  # stable to step 9
    assert lr[10] > lr[11] > lr[12] >= 0.1 * PEAK - 1e-9  # then decays
    assert (tmp_path / "wsd" / "checkpoints" / "checkpoint-9").is_dir(), "kept: the end of the stable phase"

    outcome, _ = train_toy(
        tmp_path / "cos", scheduler="cosine", min_lr_ratio=0.2, warmup_steps=1, max_steps=12, log_every=1
    )
    lr = lrs(tmp_path / "cos")
    assert lr[6] > lr[12] > 0.2 * PEAK
    assert outcome.trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.2 * PEAK)  # the floor, not zero


def test_a_wsd_run_extended_from_its_stable_phase_equals_the_longer_run(tmp_path, capsys):
    _, longer = train_toy(tmp_path / "long", scheduler="wsd", decay_fraction=0.2, max_steps=20, save_every=5)
    # A 10-step run, finished (decayed), then extended to 20 steps: it resumes from its stable end
    # (step 8), not from its decayed final checkpoint, and follows the 20-step schedule from there.
    train_toy(tmp_path / "ext", scheduler="wsd", decay_fraction=0.2, max_steps=10, save_every=5)
    assert sorted(p.name for p in (tmp_path / "ext" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-8",
    ]
    outcome, extended = train_toy(
        tmp_path / "ext", scheduler="wsd", decay_fraction=0.2, max_steps=20, save_every=5, resume=True, log_every=1
    )
    assert outcome.resumed_from.endswith("checkpoint-8")
    assert "extending a wsd run from 10 to 20 steps: from checkpoint-8" in capsys.readouterr().out
    lr = lrs(tmp_path / "ext")
    assert lr[12] == pytest.approx(PEAK) and lr[16] == pytest.approx(PEAK)
    a, b = weights(extended), weights(longer)
    assert all(torch.equal(a[k], b[k]) for k in a)
