import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from lmadapt.config.base import ConfigError
from lmadapt.config.model import LoraConfig, ModelConfig
from lmadapt.models.load import load_model
from lmadapt.models.lora import apply_lora, save_model


def _perturb(model):
    """Fresh LoRA B matrices are zero: give every trainable tensor a random nudge so adapters matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("arch,train_embeddings", [("llama", True), ("gpt2", False), ("bert", False)])
def test_adapter_save_load_and_merge_give_same_logits(scratch, tmp_path, arch, train_embeddings):
    lm = scratch(arch)
    model = apply_lora(
        lm.model, LoraConfig(enabled=True, r=4, dropout=0.0, train_embeddings=train_embeddings), lm.objective
    )
    _perturb(model)
    ids = torch.randint(5, len(lm.tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    ref = _logits(model, ids)
    assert not torch.allclose(ref, _logits(scratch(arch).model, ids))  # the adapters change the model

    save_model(model, lm.tokenizer, tmp_path / "adapter", merge=False)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    reloaded = PeftModel.from_pretrained(scratch(arch).model, str(tmp_path / "adapter"))
    assert torch.allclose(_logits(reloaded, ids), ref, atol=1e-5)

    save_model(model, lm.tokenizer, tmp_path / "merged", merge=True)
    assert "adapter_config.json" not in {p.name for p in (tmp_path / "merged").iterdir()}
    auto = AutoModelForMaskedLM if lm.objective == "masked" else AutoModelForCausalLM
    merged = auto.from_pretrained(str(tmp_path / "merged"))
    assert torch.allclose(_logits(merged, ids), ref, atol=1e-4, rtol=1e-4)


def test_bert_head_is_not_adapted_and_gpt2_conv1d_handled(scratch):
    bert = apply_lora(scratch("bert").model, LoraConfig(enabled=True, r=2), "masked")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in bert.named_parameters() if ".lora_A." in n}
    assert any(".attention.output.dense" in n for n in adapted)
    assert not any(".cls." in f".{n}" for n in adapted)
    gpt2 = apply_lora(scratch("gpt2").model, LoraConfig(enabled=True, r=2), "causal")
    assert gpt2.peft_config["default"].fan_in_fan_out is True
    assert gpt2.peft_config["default"].task_type == "CAUSAL_LM"


def test_tied_embeddings_stay_tied_when_trained(scratch):
    model = apply_lora(scratch("llama").model, LoraConfig(enabled=True, r=2, train_embeddings=True), "causal")
    _perturb(model)
    emb = model.get_input_embeddings().modules_to_save["default"].weight
    head = model.get_output_embeddings()
    head_w = head.modules_to_save["default"].weight if hasattr(head, "modules_to_save") else head.weight
    assert torch.equal(emb, head_w)


def test_unknown_target_module_is_named(scratch):
    with pytest.raises(ConfigError, match=r"'qkv' not found in LlamaForCausalLM; its linear layers are: .*q_proj"):
        apply_lora(scratch("llama").model, LoraConfig(enabled=True, target_modules=["qkv"]), "causal")


def test_adapter_folder_loads_as_merged_model(scratch, tmp_path):
    base = scratch("llama")
    save_model(base.model, base.tokenizer, tmp_path / "base", merge=False)
    lm = load_model(ModelConfig(path=str(tmp_path / "base")))
    model = apply_lora(lm.model, LoraConfig(enabled=True, r=4, dropout=0.0), "causal")
    _perturb(model)
    ids = torch.randint(5, len(lm.tokenizer), (1, 10), generator=torch.Generator().manual_seed(2))
    ref = _logits(model, ids)
    save_model(model, lm.tokenizer, tmp_path / "adapter", merge=False)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tmp_path / "base")
    loaded = load_model(ModelConfig(path=str(tmp_path / "adapter")))
    assert not isinstance(loaded.model, PeftModel) and "LoRA merged" in loaded.source
    assert torch.allclose(_logits(loaded.model, ids), ref, atol=1e-4, rtol=1e-4)


def test_all_linear_shorthand(scratch):
    model = apply_lora(scratch("bert").model, LoraConfig(enabled=True, r=2, target_modules=["all-linear"]), "masked")
    adapted = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert {"query", "key", "value", "dense"} <= adapted
    assert not any(".cls." in f".{n}" for n, _ in model.named_parameters() if ".lora_A." in n)
