import pytest
import torch
from transformers import Trainer, TrainingArguments

from helpers import tiny_llama

from lmadapt.config.base import ConfigError
from lmadapt.config.train import TrainConfig
from lmadapt.data.collators import CausalCollator
from lmadapt.data.packing import pack_blocks
from lmadapt.train import micro_batch as M


def _oom_above(limit, calls, inner=lambda b: None):
    def trial(b):
        calls.append(b)
        if b > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} GiB")
        inner(b)

    return trial


def test_divisors_largest_fit_and_errors():
    assert M.divisors_desc(12) == [12, 6, 4, 3, 2, 1]
    calls = []
    assert M.find_micro_batch(_oom_above(3, calls), 12, say=lambda m: None) == 3
    assert calls == [12, 6, 4, 3]  # halving would have skipped 4 and 3
    with pytest.raises(RuntimeError, match="not even a micro-batch of 1"):
        M.find_micro_batch(_oom_above(0, []), 4, say=lambda m: None)

    def broken(b):
        raise ValueError("shape mismatch")  # not out of memory: raised, not retried

    with pytest.raises(ValueError, match="shape"):
        M.find_micro_batch(broken, 8)


def test_auto_refused_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    with pytest.raises(ConfigError, match="micro_batch: auto .*no GPU"):
        TrainConfig(micro_batch="auto")


def test_trainer_trial_and_tokens_per_step_kept(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model = tiny_llama(400)
    docs = [list(range(5 + i, 30 + i)) for i in range(12)]
    ds, _ = pack_blocks(docs, block_size=32, pad_id=1, mode="document")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=3,
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=CausalCollator("document"))
    real = M.trainer_trial(trainer, ds)
    seen = []
    real(2)  # a real forward + backward on CPU ...
    assert all(p.grad is None for p in model.parameters())  # ... its gradients dropped
    monkeypatch.setattr(M, "trainer_trial", lambda tr, d: _oom_above(2, seen, real))
    assert M.choose_micro_batch(trainer, ds, say=lambda m: None) == (2, 12)
    assert seen == [8, 4, 2]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8 * 3
    assert next(iter(trainer.get_train_dataloader()))["input_ids"].shape[0] == 2  # what train() will load
