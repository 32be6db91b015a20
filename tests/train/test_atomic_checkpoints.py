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
