"""The chunked LM loss equals the model's own loss and gradients (causal, MLM, instruction + LoRA),
and the Trainer hook gives the same training losses as the standard loss under gradient accumulation."""

import pytest
import torch

from helpers import tiny_bert, tiny_gpt2, tiny_llama
from lmadapt.config.base import ConfigError
from lmadapt.train.loss import LMHeadLoss, chunk_rows, linear_cross_entropy, resolve_loss

V = 301  # not a multiple of the hidden width nor of a chunk


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, inputs, labels, num_items=None, chunk=None):
    """Standard (model computes logits + loss) vs the fused path; returns the two losses."""
    kw = {"num_items_in_batch": num_items} if num_items is not None else {}
    model.zero_grad()
    ref = model(**inputs, labels=labels, **kw).loss
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad()
    fused = LMHeadLoss(model, "chunked")
    fused.chunk = chunk  # small: several chunks, the last one short
    with fused.hidden_out():  # as in the Trainer: forward and loss inside
        out = model(**inputs)
        loss = fused(out, labels, num_items_in_batch=num_items)
    assert out.logits.shape[-1] == model.get_output_embeddings().in_features  # the head was bypassed
    loss.backward()
    g = _grads(model)
    assert model(**inputs).logits.shape[-1] == V  # and is back afterwards
    assert torch.allclose(loss, ref, atol=1e-5, rtol=0), (loss.item(), ref.item())
    assert g.keys() == g_ref.keys() and g
    for name in g:
        assert torch.allclose(g[name], g_ref[name], atol=1e-5, rtol=1e-4), name
    return loss.item(), ref.item()


def _packed_batch(B=3, L=24, seed=0):
    """Causal document-mode batch: positions restart per document, first tokens and padding -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=g)
    pos = torch.cat([torch.arange(10), torch.arange(9), torch.arange(5)]).repeat(B, 1)
    labels = ids.masked_fill(pos == 0, -100)
    labels[-1, -4:] = -100
    return {"input_ids": ids, "position_ids": pos, "use_cache": False}, labels


@pytest.mark.parametrize(
    "build",
    [lambda: tiny_llama(V), lambda: tiny_llama(V, tie_word_embeddings=True), lambda: tiny_gpt2(V)],
    ids=["llama", "llama-tied", "gpt2-tied"],
)
def test_causal_matches_standard_loss_and_gradients(build):
    model = build().float()
    inputs, labels = _packed_batch()
    _compare(model, inputs, labels)
    _compare(model, inputs, labels, chunk=7)
    # gradient accumulation: the Trainer passes the count over all micro-batches
    _compare(model, inputs, labels, num_items=torch.tensor(123))


def test_masked_lm_with_ignored_positions():
    model = tiny_bert(V)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (4, 20), generator=g)
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=g) < 0.15
    picked[0, 3] = True
    labels[picked] = ids[picked]
    inputs = {"input_ids": ids.masked_fill(picked, 4), "attention_mask": torch.ones_like(ids)}
    _compare(model, inputs, labels)
    _compare(model, inputs, labels, chunk=3)


def test_instruction_masked_prompts_with_lora():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(V), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (3, 16), generator=g)
    labels = ids.clone()
    labels[:, :9] = -100  # the prompt
    labels[1, 12:] = -100  # right padding
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    _compare(model, {"input_ids": ids, "attention_mask": mask}, labels)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_function_matches_cross_entropy_with_bias_and_dtype():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 9, 8, generator=g, requires_grad=True)
    w = torch.randn(V, 8, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (2, 9), generator=g)
    labels[0, :4] = -100
    for shift in (True, False):
        for select in (True, False):
            loss = linear_cross_entropy(h, w, labels, bias=b, shift=shift, select_labelled=select, chunk=4)
            grads = torch.autograd.grad(loss, (h, w, b))
            t = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:] if shift else labels
            ref = torch.nn.functional.cross_entropy((h @ w.T + b).reshape(-1, V), t.reshape(-1))
            assert torch.allclose(loss, ref, atol=1e-5)
            for a, r in zip(grads, torch.autograd.grad(ref, (h, w, b))):
                assert torch.allclose(a, r, atol=1e-5)
    # no gradients wanted: the loss alone, nothing kept
    with torch.no_grad():
        assert torch.allclose(
            linear_cross_entropy(h, w, labels, bias=b),
            torch.nn.functional.cross_entropy((h @ w.T + b).reshape(-1, V), labels.reshape(-1)),
            atol=1e-5,
        )


def test_chunk_rule_and_resolution():
    assert chunk_rows(32 * 1024, 49152, 576) == 512  # ~85 chunks of a power of two
    assert chunk_rows(10, 100, 1000) == 256  # at least 256 rows
    assert chunk_rows(2048 * 1024, 128256, 2048) == 65536  # Llama-1B, 2M tokens: 32 chunks
    model = tiny_llama(V)
    assert resolve_loss("auto", model)[0] == "chunked"  # CPU: no Liger
    assert resolve_loss("standard", model)[0] == "standard"
    with pytest.raises(ConfigError, match="liger"):
        resolve_loss("liger", model)
    from transformers import LlamaConfig, LlamaForSequenceClassification

    clf = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=3
        )
    )
    assert resolve_loss("auto", clf)[0] == "standard"  # task heads keep their loss
    with pytest.raises(ConfigError, match="plain output head|language-model head"):
        resolve_loss("chunked", clf)
    softcapped = tiny_llama(V)
    softcapped.config.final_logit_softcapping = 30.0
    assert resolve_loss("auto", softcapped)[0] == "standard"


def test_trainer_losses_equal_with_gradient_accumulation(tmp_path):
    """run_training with train.loss chunked vs standard: the same logged losses step by step (the
    Trainer's num_items_in_batch scaling over 2 accumulated micro-batches included)."""
    from datasets import Dataset

    from lmadapt.config.train import TrainConfig
    from lmadapt.data.collators import CausalCollator
    from lmadapt.train.loop import run_training

    g = torch.Generator().manual_seed(4)
    rows = []
    for i in range(8):
        ids = torch.randint(0, V, (24,), generator=g)
        cut = 5 + i
        pos = torch.cat([torch.arange(cut), torch.arange(24 - cut)])
        rows.append(
            {"input_ids": ids.tolist(), "position_ids": pos.tolist(), "is_padding": [False] * (24 - i) + [True] * i}
        )
    ds = Dataset.from_list(rows)
    losses = {}
    for loss in ("standard", "chunked"):
        cfg = TrainConfig(
            output_dir=str(tmp_path / loss),
            max_steps=3,
            batch_size=2,
            grad_accum=2,
            lr=1e-2,
            log_every=1,
            report_to=[],
            warmup_steps=0,
            loss=loss,
            compile=False,
        )
        model = tiny_llama(V).train()
        widths = set()
        model.lm_head.register_forward_hook(lambda m, i, o: widths.add(o.shape[-1]))
        out = run_training(model, None, ds, CausalCollator("document"), cfg, tokens_per_example=24)
        losses[loss] = [r["loss"] for r in out.log_history if "loss" in r]
        assert widths == ({V} if loss == "standard" else {32})  # chunked: the head never made logits
        assert out.speed["loss"] == loss
    assert len(losses["chunked"]) == 3
    assert losses["chunked"] == pytest.approx(losses["standard"], abs=1e-5)
