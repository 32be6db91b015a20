"""The memory planner's arithmetic: hand-computed bytes for a tiny Llama, the state bytes a real
Trainer step allocates, and the activation estimate against the tensors autograd keeps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers import tiny_bert, tiny_gpt2, tiny_llama
from lmadapt.models.memory_plan import (
    GIB,
    Setup,
    activation_bytes,
    gpus_needed,
    layer_bytes_per_token,
    model_shape,
    plan,
)

# tiny_llama(400): hidden 32, MLP 64, 2 layers, 4 heads / 2 kv heads (head_dim 8), untied head.
EMBED = 400 * 32
LAYER = 4 * 32 * 32 // 2 * 2 // 2 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32  # q,o 1024 each; k,v 512 each; MLP; norms
PARAMS = 2 * EMBED + 2 * LAYER + 32  # embeddings + head + layers + final norm
TENSORS = 1 + 2 * 9 + 1 + 1
LORA = 2 * 16 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3)  # r x (in + out) on q,k,v,o,gate,up,down


def test_shape_of_a_tiny_llama_by_hand():
    assert (LAYER, PARAMS, LORA) == (9280, 44192, 16384)
    s = model_shape(tiny_llama(400))
    assert (s.params, s.tensors, s.layers, s.hidden, s.intermediate, s.heads, s.kv_dim, s.vocab) == (
        PARAMS,
        TENSORS,
        2,
        32,
        64,
        4,
        16,
        400,
    )
    assert (s.layer_params, s.root_params, s.lora_params, s.lora_tensors) == (LAYER, PARAMS - 2 * LAYER, LORA, 28)
    # from the config alone (meta device): the same numbers, nothing allocated
    assert model_shape(tiny_llama(400).config) == s


def test_bytes_per_parameter_by_hand():
    s = model_shape(tiny_llama(400))
    full = plan(s, Setup())
    assert full.state == {"weights": 4 * PARAMS, "grads": 4 * PARAMS, "optimizer": 8 * PARAMS + 4 * TENSORS}
    assert full.bytes_per_param == pytest.approx(16, abs=0.01) and full.transient_bytes == 0
    dp = plan(s, Setup(processes=2))  # DDP: + gradient buckets
    assert dp.state["ddp_buckets"] == 4 * PARAMS and dp.bytes_per_param == pytest.approx(20, abs=0.01)
    mixed = plan(s, Setup(precision="bf16"))  # fp32 masters: same state, autocast copies
    assert mixed.state == full.state and mixed.transient_bytes == 2 * PARAMS
    pure = plan(s, Setup(precision="bf16", weights_dtype="bfloat16"))
    assert pure.state == {"weights": 2 * PARAMS, "grads": 2 * PARAMS, "optimizer": 4 * PARAMS + 4 * TENSORS}
    fsdp = plan(s, Setup(processes=2, sharding="fsdp"))
    assert fsdp.state == {"weights": 2 * PARAMS, "grads": 2 * PARAMS, "optimizer": 4 * PARAMS + 4 * TENSORS}
    # gathered: the root unit + two layers in fp32, plus one layer's unsharded gradient
    assert fsdp.transient_bytes == 4 * (PARAMS - 2 * LAYER) + 2 * 4 * LAYER + 4 * LAYER
    off = plan(s, Setup(processes=2, sharding="fsdp", cpu_offload=True))
    assert off.state == {} and off.host == fsdp.state
    assert off.device_bytes == off.transient_bytes + off.activation_bytes + off.logits_bytes
    # host: the whole model while it loads; under offload the optimizer step's fp32 temporaries (per
    # process) and rank 0's gathered state dict at save beside the offloaded state
    assert full.host_transient_bytes == 4 * PARAMS and full.host_peak_bytes == 4 * PARAMS
    assert off.host_transient_bytes == 4 * PARAMS // 2 + 4 * PARAMS
    assert off.host_peak_bytes == off.host_bytes + off.host_transient_bytes
    lora = plan(s, Setup(method="lora"))
    assert lora.state == {"weights": 4 * PARAMS + 4 * LORA, "grads": 4 * LORA, "optimizer": 8 * LORA + 4 * 28}
    lora2 = plan(s, Setup(method="lora", processes=2, sharding="fsdp"))
    assert lora2.state["weights"] == 2 * PARAMS + 2 * LORA


def test_gradients_and_activations_do_not_peak_together():
    """Gradients are None between steps (zero_grad), so one micro-batch's backward holds the larger of
    its activations and the gradients; under accumulation the gradients outlive the next forward."""
    s = model_shape(tiny_llama(400))
    small = plan(s, Setup(batch_size=1, block_size=1))  # activations < gradients
    big = plan(s, Setup(batch_size=4, block_size=256))  # activations > gradients
    for p in (small, big):
        live, grads = p.activation_bytes + p.logits_bytes, p.state["grads"]
        assert p.device_bytes == p.state_bytes - grads + p.transient_bytes + max(live, grads)
    assert small.device_bytes == small.state_bytes + small.transient_bytes
    accum = plan(s, Setup(batch_size=4, block_size=256, grad_accum=2))
    assert accum.device_bytes == big.device_bytes + big.state["grads"]


def test_activations_by_hand():
    s = model_shape(tiny_llama(400))
    setup = Setup(batch_size=2, block_size=128)
    per_layer = 4 * (8 * 32 + 2 * 4) + 4 * (4 * 64 + 2 * 16)
    assert layer_bytes_per_token(s, setup) == per_layer == 2208
    acts, logits = activation_bytes(s, setup)
    # lmadapt's chunked loss: 400 / 32 -> 13 chunks of 20 -> 32 rows of fp32 logits, the hidden
    # states' gradient (256 x 32 x 4) and the head's fp32 gradient (400 x 32 x 4)
    assert acts == 256 * (2 * per_layer + 3 * 32 * 4) and logits == 32 * 400 * 4 + 256 * 32 * 4 + 400 * 32 * 4
    assert activation_bytes(s, replace(setup, loss="standard"))[1] == 256 * 400 * 12
    assert activation_bytes(s, replace(setup, sharding="fsdp"))[1] == logits  # sharded: the same chunked loss
    # bf16 under FSDP2: the gathered weight is bf16 already (no cast copy), the hidden states' gradient bf16
    assert activation_bytes(s, replace(setup, sharding="fsdp", precision="bf16"))[1] == (
        32 * 400 * 4 + 256 * 32 * 2 + 400 * 32 * 4
    )
    assert activation_bytes(s, replace(setup, precision="bf16"))[1] == 32 * 400 * 4 + 256 * 32 * 4 + 400 * 32 * 6
    ck, _ = activation_bytes(s, replace(setup, gradient_checkpointing=True))
    assert ck == 256 * (2 * 32 * 4 + per_layer + 3 * 32 * 4)
    full = plan(s, setup)  # activations outweigh the gradients here: they replace them in the peak
    assert acts + logits > full.state["grads"]
    assert full.device_bytes == full.state_bytes - full.state["grads"] + acts + logits


def _saved_bytes(model, x) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (weights excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=x, labels=x)
    return sum(saved.values())


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiny_llama(400),
        lambda: tiny_llama(1000, hidden_size=64, intermediate_size=192, num_hidden_layers=3),
        lambda: tiny_gpt2(400),
        lambda: tiny_bert(400),
    ],
    ids=["llama", "llama-wide", "gpt2", "bert"],
)
def test_activation_estimate_matches_what_autograd_keeps(build):
    """Within 5% of the saved tensors of a real forward pass (fp32, sdpa): the layers, plus the
    logits' fp32 log-softmax (4 B per token per vocab entry; the planner's other 8 are transients)."""
    model = build()
    s = model_shape(model)
    setup = Setup(batch_size=2, block_size=128)
    x = torch.randint(5, 400, (2, 128), generator=torch.Generator().manual_seed(0))
    acts, _ = activation_bytes(s, setup)
    assert _saved_bytes(model, x) == pytest.approx(acts + 256 * s.vocab * 4, rel=0.05)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    ck, _ = activation_bytes(s, replace(setup, gradient_checkpointing=True))
    recompute = 256 * layer_bytes_per_token(s, setup)  # exists only during a layer's recompute in backward
    assert _saved_bytes(model, x) == pytest.approx(ck - recompute + 256 * s.vocab * 4, rel=0.05)


def test_chunked_loss_keeps_what_the_plan_says():
    """lmadapt's chunked LM loss keeps the hidden states' gradient and the head's fp32 gradient for
    backward (the planner's logits term less the one transient chunk of logits)."""
    from lmadapt.train.loss import linear_cross_entropy

    s = model_shape(tiny_llama(400))
    setup = Setup(batch_size=2, block_size=128)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(256, 32, generator=g, requires_grad=True)
    weight = torch.randn(400, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 400, (256,), generator=g)
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_cross_entropy(hidden, weight, labels)
    _, logits = activation_bytes(s, setup)
    assert sum(saved.values()) == pytest.approx(logits - 32 * 400 * 4, rel=0.05)


def test_measured_state_after_trainer_steps_equals_the_plan(tmp_path):
    """A real Trainer run (2 optimizer steps, fp32, full and LoRA): the parameter, gradient and AdamW
    state bytes present right after the optimizer step are exactly the planner's state bytes."""
    from transformers import TrainerCallback, default_data_collator

    from lmadapt.config.model import LoraConfig
    from lmadapt.config.train import TrainConfig
    from lmadapt.models.lora import apply_lora
    from lmadapt.train.loop import run_training

    class Count(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
            seen = {}
            for p in model.parameters():
                seen[id(p)] = p
            ps = list(seen.values())
            opt = sum(t.nbytes for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t))
            self.bytes = {
                "weights": sum(p.nbytes for p in ps),
                "grads": sum(p.grad.nbytes for p in ps if p.grad is not None),
                "optimizer": opt,
            }

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(5, 400, (16,), generator=g)), "labels": ids} for _ in range(8)]
    for method in ("full", "lora"):
        model = tiny_llama(400)
        shape = model_shape(model)
        if method == "lora":
            model = apply_lora(model, LoraConfig(enabled=True, r=16, dropout=0.0), "causal")
        counter = Count()
        cfg = TrainConfig(
            output_dir=str(tmp_path / method),
            max_steps=2,
            batch_size=2,
            precision="fp32",
            report_to=[],
            log_every=1,
            overwrite=True,
        )
        run_training(model, None, data, default_data_collator, cfg, callbacks=[counter])
        assert counter.bytes == plan(shape, Setup(method=method)).state, method


def test_gpus_needed_is_the_fewest_that_fit():
    from transformers import LlamaConfig

    # Llama-3-8B's shape on the meta device: 8.03B parameters
    s = model_shape(
        LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            tie_word_embeddings=False,
        )
    )
    assert 8.0e9 < s.params < 8.1e9
    setup = Setup(precision="bf16", batch_size=1, block_size=4096, gradient_checkpointing=True, sharding="fsdp")
    assert gpus_needed(s, replace(setup, sharding="none"), 80) is None  # 16 B/param: ~120 GiB
    n = gpus_needed(s, setup, 80)
    assert n is not None and n > 1
    fits = lambda k: plan(s, replace(setup, processes=k)).device_bytes <= 80 * GIB * 0.9  # noqa: E731
    assert fits(n) and not fits(n - 1)
    assert gpus_needed(s, setup, 24) > gpus_needed(s, setup, 40) >= n >= gpus_needed(s, setup, 141)
    assert gpus_needed(s, replace(setup, cpu_offload=True), 40) == 1  # the state lives in host RAM


def test_sharded_state_per_process_is_the_plans(monkeypatch):
    """FSDP2 over 2 processes, as lmadapt shards (train/fsdp.shard_model), one AdamW step: each process
    holds exactly the planner's 16/N B/param of weights, gradients and AdamW state (+ the unsharded
    step counters). Each rank is built in this process on torch's fake process group (collectives
    are no-ops; shapes, shards and allocations are real), so no two-process launch is needed."""
    import torch.distributed as tdist

    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")

    from lmadapt.config.train import TrainConfig
    from lmadapt.train.fsdp import shard_model

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this process's shard
        return t.numel() * t.element_size()

    s = model_shape(tiny_llama(400))
    per = plan(s, Setup(processes=2, sharding="fsdp")).state
    for rank in (0, 1):
        for key, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("LOCAL_RANK", str(rank))):
            monkeypatch.setenv(key, value)
        tdist.init_process_group("fake", store=fake_pg.FakeStore(), rank=rank, world_size=2)
        try:
            model = shard_model(tiny_llama(400).train(), TrainConfig(precision="fp32", sharding="fsdp"))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            ids = torch.randint(5, 400, (2, 16), generator=torch.Generator().manual_seed(0))
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            ps = list({id(p): p for p in model.parameters()}.values())
            measured = {
                "weights": sum(local_bytes(p) for p in ps),
                "grads": sum(local_bytes(p.grad) for p in ps),
                "optimizer": sum(
                    local_bytes(t) for st in opt.state.values() for t in st.values() if torch.is_tensor(t)
                ),
            }
        finally:
            tdist.destroy_process_group()
        assert measured == per, rank
