import pytest
import torch

from lmadapt.config.base import ConfigError, from_dict
from lmadapt.config.model import LoraConfig
from lmadapt.models import quantize
from lmadapt.models.lora import apply_lora


def test_qlora_refused_clearly_without_a_gpu_and_in_bad_combinations(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"lora: quantize: 4bit .*needs a CUDA GPU"):
            from_dict(LoraConfig, {"enabled": True, "quantize": "4bit"}, prefix="lora")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert LoraConfig(enabled=True, quantize="4bit").quantize == "4bit"
    with pytest.raises(ConfigError, match="set lora.enabled: true"):
        LoraConfig(quantize="4bit")
    with pytest.raises(ConfigError, match="merge: not with quantize"):
        LoraConfig(enabled=True, quantize="4bit", merge=True)
    with pytest.raises(ConfigError, match="quantize"):
        from_dict(LoraConfig, {"enabled": True, "quantize": "8bit"})


def test_nf4_settings_and_missing_package(monkeypatch):
    q = quantize.bnb_config("4bit")
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantize.bnb_config("none") is None and quantize.quantized_load_kwargs("none") == {}
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ConfigError, match=r"bitsandbytes.*lmadapt\[speed\]"):
        quantize.quantized_load_kwargs("4bit")


def test_scratch_model_cannot_be_quantized(scratch):
    from lmadapt.config.model import ModelConfig
    from lmadapt.models.load import load_model

    cfg = ModelConfig(init="scratch", arch="llama", size="tiny", tokenizer="unused")
    with pytest.raises(ConfigError, match="scratch model has none"):
        load_model(cfg, quantize="4bit")


def test_lora_on_a_quantized_base_prepares_it_and_trains_only_adapters(scratch):
    """apply_lora runs peft's k-bit preparation for a quantised base (here a CPU model flagged as one:
    bitsandbytes' kernels need CUDA): base frozen, input gradients on, adapters trainable."""
    model = scratch("llama").model
    model.is_loaded_in_4bit = True
    assert quantize.is_quantized(model)
    peft_model = apply_lora(model, LoraConfig(enabled=True, r=2), "causal")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(5, 300, (2, 12))
    emb_out = {}
    peft_model.get_input_embeddings().register_forward_hook(lambda m, i, o: emb_out.setdefault("o", o))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert emb_out["o"].requires_grad  # enable_input_require_grads: checkpointing has a graph to follow
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)
