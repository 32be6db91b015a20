"""The fused LM loss on a model sharded by FSDP2 (train/fsdp.shard_model) on one process (gloo, a
group of one): computed inside the model's forward, where the root unit's weights are whole, it gives
the unsharded standard loss and its gradients (tied embeddings: one Parameter for input and head)."""

import pytest
import torch

from helpers import tiny_bert, tiny_llama
from lmadapt.train.loss import FusedLossMixin, LMHeadLoss

TOL = 1e-5


class _TrainerLike:
    """What the Trainer's compute_loss does with a compute_loss_func: labels popped, model, loss."""

    def __init__(self, loss):
        self.compute_loss_func = loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        return self.compute_loss_func(model(**inputs), labels, num_items_in_batch=num_items_in_batch)


class _Fused(FusedLossMixin, _TrainerLike):
    pass


@pytest.fixture()
def group():
    import torch.distributed as tdist

    # an earlier in-process test (fsdp._ensure_group) may have left a group of one: reuse it then
    created = not tdist.is_initialized()
    if created:
        tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    assert tdist.get_world_size() == 1
    try:
        yield
    finally:
        if created:
            tdist.destroy_process_group()


def _batch(model, arch):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    if arch == "bert":  # MLM: 20% of positions labelled
        labels[torch.rand(ids.shape, generator=g) > 0.2] = -100
    else:  # an ignored prompt span
        labels[:, :5] = -100
    return {"input_ids": ids, "labels": labels}


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@pytest.mark.parametrize("arch", ["llama_tied", "bert"])
def test_sharded_fused_loss_matches_unsharded_standard(group, arch):
    from lmadapt.config.train import TrainConfig
    from lmadapt.train.fsdp import shard_model

    build = (
        (lambda: tiny_llama(300, tie_word_embeddings=True))
        if arch == "llama_tied"
        else (lambda: tiny_bert(300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    )
    ref, model = build().train(), build().train()
    batch = _batch(ref, arch)
    n_items = torch.tensor(int((batch["labels"] != -100).sum()) + 7)  # as under accumulation: a larger count
    # reference: the model's own (standard) loss on full logits, unsharded
    standard = _TrainerLike(LMHeadLoss(ref, "chunked"))  # inactive: the model's loss function on real logits
    loss_ref = standard.compute_loss(ref, batch, num_items_in_batch=n_items)
    loss_ref.backward()
    head = LMHeadLoss(model, "chunked")
    if arch == "llama_tied":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    model = shard_model(model, TrainConfig(precision="fp32", sharding="fsdp"))
    assert type(head.head.weight).__name__ == "DTensor"  # sharded outside the forward
    seen = []
    inner = head._fused
    head._fused = lambda hidden, *a: (seen.append(type(head.head.weight).__name__), inner(hidden, *a))[1]
    loss = _Fused(head).compute_loss(model, batch, num_items_in_batch=n_items)
    assert seen == ["Parameter"]  # the fused loss ran inside the forward, on the gathered weight
    assert loss.dim() == 0 and abs(loss.item() - loss_ref.item()) <= TOL
    loss.backward()
    grads = {n: _full(p.grad) for n, p in model.named_parameters()}
    for n, p in ref.named_parameters():
        assert grads[n] is not None, n
        assert (grads[n] - p.grad).abs().max().item() <= TOL, n
    assert "forward" not in head.head.__dict__ and not head.active  # the head is itself again


def test_a_weight_still_sharded_in_the_forward_is_refused(monkeypatch):
    """No silent wrong gradients: a shard (DTensor) seen where the whole weight should be stops the run."""
    import lmadapt.train.loss as loss_mod

    model = tiny_llama(300).train()
    head = LMHeadLoss(model, "chunked")
    batch = _batch(model, "llama")
    monkeypatch.setattr(loss_mod, "_is_dtensor", lambda t: t is head.head.weight)
    with pytest.raises(RuntimeError, match="still sharded"), head.hidden_out(batch["labels"], sharded=True):
        model(input_ids=batch["input_ids"])
