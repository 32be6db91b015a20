import pytest
import torch.nn as nn

from lmadapt.config.base import ConfigError
from lmadapt.models.registry import LORA_TARGETS, is_encoder, lora_targets, objective_for


def test_objective_for_rules(scratch):
    llama, bert = scratch("llama").model, scratch("bert").model
    assert objective_for(llama, "auto") == "causal" and objective_for(bert.config, "auto") == "masked"
    assert objective_for("gpt2", "causal") == "causal"
    with pytest.raises(ConfigError, match="masked LM needs an encoder.*'llama' is decoder-only"):
        objective_for(llama, "masked")
    with pytest.raises(ConfigError, match="'bert' is an encoder"):
        objective_for(bert, "causal")
    assert is_encoder(bert) and not is_encoder(llama.config)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_lora_targets_exist_in_model(scratch, arch):
    model = scratch(arch).model
    targets = lora_targets(model)
    assert targets == LORA_TARGETS[arch]
    leaves = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(targets) <= leaves


def test_lora_targets_fallback_all_linear_but_head():
    class Cfg:
        model_type = "mystery"

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Cfg()
            self.emb = nn.Embedding(10, 4)
            self.block = nn.ModuleDict({"mix": nn.Linear(4, 4), "ff": nn.Linear(4, 4)})
            self.lm_head = nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.lm_head

    assert lora_targets(Tiny()) == ["mix", "ff"]
