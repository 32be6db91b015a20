import pytest
import torch

from helpers import tiny_llama

from lmadapt.config.base import ConfigError, from_dict
from lmadapt.config.model import ModelConfig
from lmadapt.models import attention
from lmadapt.models.attention import document_attention_fraction, resolve_attention
from lmadapt.models.load import supports_document_packing


def test_auto_resolves_by_machine_objective_and_flash_attn(monkeypatch):
    monkeypatch.setattr(attention, "flash_attention_available", lambda: False)
    assert resolve_attention("auto", causal=True, cuda=False) == "sdpa"
    assert resolve_attention("auto", causal=True, cuda=True) == "sdpa"  # no flash-attn package
    monkeypatch.setattr(attention, "flash_attention_available", lambda: True)
    assert resolve_attention("auto", causal=True, cuda=True) == "flash_attention_2"
    assert resolve_attention("auto", causal=True, cuda=False) == "sdpa"
    assert resolve_attention("auto", causal=False, cuda=True) == "sdpa"  # encoders: 4D document masks
    assert resolve_attention("eager", causal=True, cuda=True) == "eager"  # an explicit choice stays
    assert resolve_attention(None, causal=True, cuda=True) is None
    with pytest.raises(ConfigError, match="flex_attention needs a GPU to train"):
        resolve_attention("flex_attention", causal=True, cuda=False)
    assert resolve_attention("flex_attention", causal=True, cuda=True) == "flex_attention"


def test_recipe_key_default_and_unknown_value():
    assert ModelConfig(path="m").attn_implementation == "auto"
    with pytest.raises(ConfigError, match="attn_implementation"):
        from_dict(ModelConfig, {"path": "m", "attn_implementation": "flash"})


def test_scratch_auto_loads_sdpa_on_cpu(scratch):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert scratch("llama").model.config._attn_implementation == "sdpa"


def test_document_attention_fraction():
    # documents 3, 2, 4 in a block of 9; a second row of one document: (9 + 4 + 16) / 81 and 1
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], list(range(9))])
    assert document_attention_fraction(pos) == pytest.approx(((9 + 4 + 16) / 81 + 1) / 2)
    assert document_attention_fraction(torch.tensor([0, 0, 0])) == pytest.approx(1 / 3)


def test_flex_attention_keeps_packed_documents_apart(monkeypatch):
    """flex_attention's forward runs on CPU (torch 2.13; no backward, so training with it is GPU-only),
    but compiling its kernel and block mask takes 20-60 s here; the isolation comes from transformers'
    packed-sequence BlockMask, which the uncompiled kernel applies the same way, so the probe runs
    uncompiled."""
    import transformers.integrations.flex_attention as fa
    import transformers.masking_utils as mu
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    monkeypatch.setattr(fa.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    monkeypatch.setattr(mu, "create_block_mask", lambda *a, **k: create_block_mask(*a, **{**k, "_compile": False}))
    model = tiny_llama(400, "flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    assert supports_document_packing(model, "causal") is True
