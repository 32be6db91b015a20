"""Issue 19 item 3: a non-finite loss stops the run naming the first bad step (nothing of it saved,
metrics valid JSON, the pipeline never caches the stage); opted in, bad steps are skipped and K of them
roll the run back to its last complete checkpoint."""

import json
import math

import pytest
import torch
from transformers import Trainer

from toy_training import train_toy, weights


def poison(monkeypatch, steps):
    """The loss of the given optimizer steps (1-based) is NaN, as a diverging run's would be."""
    real = Trainer.compute_loss

    def compute_loss(self, model, inputs, *a, **k):
        out = real(self, model, inputs, *a, **k)
        if self.state.global_step + 1 in steps:
            out = out * float("nan") if isinstance(out, torch.Tensor) else (out[0] * float("nan"), *out[1:])
        return out

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)


def test_a_nan_loss_stops_the_run_at_the_next_check_naming_the_first_bad_step(tmp_path, monkeypatch):
    from lmadapt.train.guard import TrainingDiverged

    poison(monkeypatch, {3})
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 3, the first bad step: loss nan"):
        train_toy(tmp_path / "run", log_every=4, save_every=4)  # checked at step 4, before that save
    assert not list((tmp_path / "run" / "checkpoints").glob("checkpoint-*")), "a NaN model was checkpointed"


def test_a_too_high_lr_stops_and_the_pipeline_does_not_cache_the_stage(tmp_path):
    from helpers import tiny_bpe_tokenizer
    from lmadapt.cli import main
    from lmadapt.pipeline import cache

    tok = tmp_path / "tok"
    tiny_bpe_tokenizer(tok)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"the fox {i} jumps over the lazy dog"}) + "\n" for i in range(40)))
    pipeline = {
        "output_dir": str(tmp_path / "p"),
        "seeds": [0],
        "baseline": {"tfidf": False},
        "stages": {
            "base": {
                "kind": "pretrain",
                "recipe": {
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
                        "sources": [{"path": str(corpus)}],
                        "block_size": 32,
                        "cache_dir": str(tmp_path / "cache"),
                    },
                    "train": {
                        "max_steps": 12,
                        "batch_size": 4,
                        "lr": 1000.0,
                        "warmup_steps": 0,
                        "max_grad_norm": 0.0,
                        "log_every": 12,
                        "report_to": [],
                        "torch_threads": 1,
                    },
                },
            }
        },
        "arms": {"a": ["base"]},
    }
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    assert main(["run", str(tmp_path / "p.yaml"), "--no-report"]) == 2
    folders = list((tmp_path / "p" / "stages").iterdir())
    assert len(folders) == 1 and not cache.is_done(folders[0]), "a diverged stage got DONE"
    assert not (folders[0] / "model.safetensors").exists()
    state = json.loads((tmp_path / "p" / "run_state.json").read_text())
    assert state["status"] == "failed" and "first bad step" in state["error"]


def test_skip_policy_drops_bad_updates_and_rolls_back_after_k(tmp_path, monkeypatch, capsys):
    # Skipped: the weights after a bad step are those before it (AdamW moments untouched too).
    poison(monkeypatch, {6})
    outcome, model = train_toy(tmp_path / "skip", nan_policy="skip", max_steps=8, save_every=4)
    assert outcome.global_step == 8 and outcome.trainer.guard.skipped == [6]
    assert all(torch.isfinite(v).all() for v in weights(model).values())
    assert math.isfinite(outcome.train_loss)
    assert "step 6: loss nan and gradient norm nan (not finite); its update was skipped" in capsys.readouterr().out

    # Two bad steps with max_bad_steps 2: back to checkpoint-4, steps 5-7 replayed without updates.
    monkeypatch.undo()
    poison(monkeypatch, {6, 7})
    outcome, model = train_toy(tmp_path / "rollback", nan_policy="skip", max_bad_steps=2, max_steps=10, save_every=4)
    printed = capsys.readouterr().out
    assert "rolling back to checkpoint-4 after 2 bad steps; the batches of steps 5-7 are skipped" in printed
    assert outcome.global_step == 10 and outcome.trainer.guard.skipped == [6, 7]
    assert all(torch.isfinite(v).all() for v in weights(model).values())


def test_metrics_are_always_valid_json(tmp_path):
    from lmadapt.runtime.outputs import read_json, update_metrics

    update_metrics(tmp_path, {"train": {"train_loss": float("nan"), "steps": 3}, "ppl": float("inf")})
    text = (tmp_path / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    m = read_json(tmp_path / "metrics.json")
    assert m["train"]["train_loss"] is None and m["ppl"] is None
    assert sorted(m["non_finite"]) == ["ppl", "train.train_loss"]


def test_a_loss_spike_is_a_bad_step_when_asked():
    from lmadapt.train.guard import StepGuard, TrainingDiverged

    guard = StepGuard("stop", spike_factor=3.0)
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0, 2.0, 2.1, 9.0, 2.0], start=1):
        guard.add_loss(torch.tensor(loss))
        guard.end_step(step, torch.tensor(1.0), model=None)
    with pytest.raises(TrainingDiverged, match=r"step 7, the first bad step: loss spike: 9 > train.spike_factor 3"):
        guard.check()
    quiet = StepGuard("stop")  # off by default: a high but finite loss is not an error
    for step, loss in enumerate([2.0, 2.0, 2.0, 2.0, 2.0, 9.0], start=1):
        quiet.add_loss(torch.tensor(loss))
        quiet.end_step(step, torch.tensor(1.0), model=None)
    quiet.check()
