"""FLOP counter against hand-computed numbers (tiny Llama, full and LoRA), the peak table and MFU;
torch.compile per block: the same losses as eager, no recompilation when documents move."""

import copy

import pytest
import torch

from helpers import tiny_llama
from lmadapt.train import flops as F
from lmadapt.train.speed import compile_blocks, prepare_speed, resolve_switch, transformer_blocks

V = 301
# tiny_llama: hidden 32, MLP 64, 2 layers, 4 query heads / 2 kv heads of width 8
H, I, LAYERS, KV = 32, 64, 2, 16
PER_LAYER = H * H + H * KV + H * KV + H * H + 3 * H * I + 2 * H  # q, k, v, o, gate/up/down, 2 norms
N = LAYERS * PER_LAYER + H + V * H  # + final norm + head (9632)


def test_full_training_flops_by_hand():
    assert N == 28224
    seq = 24
    attention = 12 * LAYERS * H * seq
    for tied in (False, True):  # a tied head is counted once, as the head
        model = tiny_llama(V, tie_word_embeddings=tied)
        assert F.matmul_params(model) == (0, N)
        assert F.flops_per_token(model, seq) == 6 * N + attention == 187776
    assert F.flops_per_token(model, None) == 6 * N  # no sequence length: attention left out


def test_lora_flops_by_hand():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(V), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora = LAYERS * ((H * 4 + 4 * H) + (H * 4 + 4 * KV))  # A and B of q_proj and v_proj
    assert lora == 896
    assert F.matmul_params(model) == (N, lora)
    # forward 2N + input gradients 2N on the frozen weights, 6 per trainable weight, attention as in full
    assert F.flops_per_token(model, 24) == 4 * N + 6 * lora + 12 * LAYERS * H * 24 == 136704


def test_peak_table_mfu_and_cpu_cache(tmp_path, monkeypatch):
    assert F.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert F.gpu_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert F.gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert F.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert F.gpu_peak_flops("Some Future GPU", "bf16") is None
    assert F.mfu(1000.0, 6e9, 989e12) == pytest.approx(1000 * 6e9 / 989e12)
    assert F.mfu(1000.0, 6e9, None) is None
    measure = F.measure_cpu_peak
    monkeypatch.setattr(F, "_CPU_PEAK", {})
    monkeypatch.setattr(F, "measure_cpu_peak", lambda: 5e10)
    cache = tmp_path / "peak.json"
    assert F.cpu_peak_flops(cache) == 5e10 and cache.is_file()
    monkeypatch.setattr(F, "_CPU_PEAK", {})
    monkeypatch.setattr(F, "measure_cpu_peak", lambda: pytest.fail("measured again despite the cache"))
    assert F.cpu_peak_flops(cache) == 5e10
    assert 1e8 < measure(n=128, seconds=0.05) < 1e14  # a real, plausible number


def _batches():
    g = torch.Generator().manual_seed(0)
    for cuts in [(10, 9, 5), (3, 12, 9), (20, 4), (1, 1, 22), (24,)]:
        ids = torch.randint(0, V, (2, 24), generator=g)
        pos = torch.cat([torch.arange(c) for c in cuts]).repeat(2, 1)
        yield {"input_ids": ids, "position_ids": pos, "labels": ids.masked_fill(pos == 0, -100), "use_cache": False}


def test_compiled_blocks_same_losses_without_recompiling():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = tiny_llama(V).train()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    # aot_eager: dynamo + AOT autograd tracing without code generation (inductor takes minutes on CPU)
    assert compile_blocks(compiled, backend="aot_eager") == LAYERS == len(transformer_blocks(compiled))
    assert list(compiled.state_dict()) == keys  # in place: checkpoints and saving unchanged
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    graphs = []
    for batch in _batches():
        losses = []
        for model, opt in zip((eager, compiled), opts):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    # one graph for packed blocks (a block-diagonal mask) whatever the document boundaries, one for a
    # block holding a single document (no mask); never one per batch
    assert graphs[:4] == [graphs[0]] * 4 and graphs[-1] <= graphs[0] + 1, graphs


def test_switches_and_plan_on_cpu():
    from lmadapt.config.base import ConfigError
    from lmadapt.config.train import TrainConfig

    assert resolve_switch("auto", "compile") is False  # CPU
    assert resolve_switch(True, "compile") is True
    with pytest.raises(ConfigError):
        resolve_switch("yes", "compile")
    plan = prepare_speed(tiny_llama(V), TrainConfig())
    assert plan.summary() == {"loss": "chunked", "compiled_blocks": 0, "liger_kernels": False}
    with pytest.raises(ConfigError, match="liger"):
        prepare_speed(tiny_llama(V), TrainConfig(liger_kernels=True))
    # FSDP: the fused loss too (run inside the sharded forward); standard still selectable
    sharded = prepare_speed(tiny_llama(V), TrainConfig(), sharded=True)
    assert sharded.loss == "chunked" and "inside the sharded forward" in sharded.notes[0]
    assert prepare_speed(tiny_llama(V), TrainConfig(loss="chunked"), sharded=True).loss == "chunked"
    assert prepare_speed(tiny_llama(V), TrainConfig(loss="standard"), sharded=True).loss == "standard"
    with pytest.raises(ConfigError, match="liger"):  # liger still needs CUDA, sharded or not
        prepare_speed(tiny_llama(V), TrainConfig(loss="liger"), sharded=True)


def test_liger_kernels_auto_stay_off_under_compile(monkeypatch):
    """auto = Liger's kernels only where blocks stay eager (under compile they measured 16% vs 44% MFU on
    an H200); an explicit true still applies them. Liger is faked available: this machine has no CUDA."""
    from lmadapt.config.train import TrainConfig
    from lmadapt.train import loss as L
    from lmadapt.train import speed as S

    applied = []
    monkeypatch.setattr(L, "liger_available", lambda: True)
    monkeypatch.setattr(S, "apply_liger_kernels", lambda model: applied.append(model) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto resolves as on a GPU
    monkeypatch.setattr(S, "compile_blocks", lambda model, backend=None: 2)
    plan = prepare_speed(tiny_llama(V), TrainConfig(loss="chunked"))  # compile auto -> on
    assert (plan.compiled_blocks, plan.liger_kernels, applied) == (2, False, [])
    assert any("off under compile" in n for n in plan.notes)
    plan = prepare_speed(tiny_llama(V), TrainConfig(loss="chunked", compile=False))  # eager blocks: auto -> on
    assert plan.liger_kernels is True and len(applied) == 1
    plan = prepare_speed(tiny_llama(V), TrainConfig(loss="chunked", liger_kernels=True))  # asked for: applied
    assert plan.liger_kernels is True and len(applied) == 2


def test_token_count_deferred_until_log(tmp_path):
    """The GPU path of the token count (forced here): nothing read per micro-batch, the exact count
    (non-padding, as the stock method counts) once the Trainer logs."""
    from transformers import Trainer, TrainingArguments

    from lmadapt.train.speed import fast_trainer_class

    cls = fast_trainer_class(Trainer)
    trainer = cls(
        model=tiny_llama(V),
        args=TrainingArguments(
            output_dir=str(tmp_path), report_to="none", include_num_input_tokens_seen="non_padding", use_cpu=True
        ),
    )
    trainer._defer_token_count = lambda ids: True
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for _ in range(3):
        trainer._track_num_input_tokens({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask})
    assert trainer.state.num_input_tokens_seen == 0  # not read yet: no host sync per micro-batch
    trainer.log({"loss": 1.0})
    assert trainer.state.num_input_tokens_seen == 15  # 3 x 5 non-padding tokens
    del trainer._defer_token_count
    trainer._track_num_input_tokens({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask})
    assert trainer.state.num_input_tokens_seen == 20  # CPU: the stock count, at once
