"""Issue 19 item 2: a checkpoint is whole or absent; resume takes the newest complete one; the final
save never leaves a half-written model folder."""

import shutil

import pytest
import torch
from transformers import Trainer

from helpers import tiny_bpe_tokenizer, tiny_llama
from toy_training import train_toy, weights


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_save_killed_part_way_leaves_no_checkpoint_and_resume_uses_the_older_one(tmp_path, monkeypatch, capsys):
    _, full = train_toy(tmp_path / "full", save_every=4)
    expected = weights(full)

    real = Trainer._save_rng_state

    def killed_at_step_8(self, output_dir):
        if self.state.global_step == 8:
            raise KeyboardInterrupt("killed while saving")  # after weights + optimizer were written
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_toy(tmp_path / "int", save_every=4)
    monkeypatch.undo()
    ckpts = tmp_path / "int" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-4"], "no partial checkpoint-8"

    # A damaged newest checkpoint (older code, a full disk): only config.json, beside the complete one.
    (ckpts / "checkpoint-6").mkdir()
    shutil.copy(ckpts / "checkpoint-4" / "config.json", ckpts / "checkpoint-6")
    outcome, resumed = train_toy(tmp_path / "int", save_every=4, resume=True)
    assert outcome.resumed_from.endswith("checkpoint-4")
    printed = capsys.readouterr().out
    assert "skipped checkpoint-6 (no trainer_state.json)" in printed
    _same(weights(resumed), expected)  # bit-identical to the run that was never interrupted
    assert not (ckpts / "checkpoint-6").exists() and (ckpts / "incomplete-checkpoint-6").is_dir()


def test_a_truncated_optimizer_file_is_skipped(tmp_path, capsys):
    train_toy(tmp_path / "run", save_every=4)
    ckpts = tmp_path / "run" / "checkpoints"
    opt = ckpts / "checkpoint-8" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    outcome, _ = train_toy(tmp_path / "run", save_every=4, resume=True, max_steps=10)
    assert outcome.resumed_from.endswith("checkpoint-4") and outcome.global_step == 10
    assert "skipped checkpoint-8 (optimizer.pt is truncated or unreadable)" in capsys.readouterr().out


def test_the_final_save_is_all_or_nothing(tmp_path, monkeypatch):
    from lmadapt.models.lora import save_model

    tok = tiny_bpe_tokenizer()
    model = tiny_llama(len(tok))
    out = tmp_path / "model"
    out.mkdir()
    (out / "metrics.json").write_text("{}")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", disk_full)
    with pytest.raises(OSError):
        save_model(model, tok, out, merge=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"], "no weights without a tokenizer"
    monkeypatch.undo()
    save_model(model, tok, out, merge=False)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json"} <= names
    assert not [n for n in names if n.startswith(".saving")]


def _deepspeed_checkpoint(folder, ranks: int = 2):
    """A checkpoint in DeepSpeed's engine layout (ZeRO-3: no weights file, each process's
    partitions under the folder ``latest`` names), as the Trainer writes it under DeepSpeed."""
    import json

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (folder / "latest").write_text("global_step3")
    for name in ["scheduler.pt", *(f"rng_state_{r}.pth" for r in range(ranks))]:
        torch.save({"x": 1}, folder / name)
    step = folder / "global_step3"
    step.mkdir()
    for r in range(ranks):
        for part in ("model_states", "optim_states"):
            torch.save({"rank": r}, step / f"zero_pp_rank_{r}_mp_rank_00_{part}.pt")
    return step


def test_deepspeed_checkpoints_are_complete_or_say_what_is_missing(tmp_path):
    from lmadapt.train.checkpoints import checkpoint_problem

    step = _deepspeed_checkpoint(tmp_path / "checkpoint-3")
    assert checkpoint_problem(tmp_path / "checkpoint-3") is None  # before: "no model weights", set aside
    optim = step / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:40])
    assert checkpoint_problem(tmp_path / "checkpoint-3") == (
        "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt is truncated or unreadable"
    )
    optim.unlink()
    assert checkpoint_problem(tmp_path / "checkpoint-3") == "global_step3 holds 2 model and 1 optimizer partitions"
    (tmp_path / "checkpoint-3" / "latest").write_text("global_step9")
    assert (
        checkpoint_problem(tmp_path / "checkpoint-3") == "latest names 'global_step9', which is not in the checkpoint"
    )


def test_a_deepspeed_checkpoint_of_another_number_of_processes_is_refused_before_training(tmp_path):
    """DeepSpeed itself stops inside train() (ZeRORuntimeException, seen with 2 -> 1 processes)."""
    from lmadapt.config.base import ConfigError
    from lmadapt.train.checkpoints import resumable_by

    _deepspeed_checkpoint(tmp_path / "checkpoint-3", ranks=2)
    resumable_by(tmp_path / "checkpoint-3", 2)
    with pytest.raises(ConfigError, match="written by 2 processes and this launch has 1.*zero_to_fp32.py"):
        resumable_by(tmp_path / "checkpoint-3", 1)
    (tmp_path / "checkpoint-4").mkdir()  # not DeepSpeed's layout (FSDP2's checkpoints reshard)
    resumable_by(tmp_path / "checkpoint-4", 1)
