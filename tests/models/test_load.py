import warnings

import pytest
import torch

from lmadapt.config.base import ConfigError
from lmadapt.config.model import ModelConfig
from lmadapt.models.load import (
    ModelLoadError,
    block_diagonal_mask,
    load_model,
    load_tokenizer,
    supports_document_packing,
)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_scratch_is_seeded_and_leaves_global_rng_alone(scratch):
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a = scratch("llama", seed=1)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    b, c = scratch("llama", seed=1), scratch("llama", seed=2)
    assert _same_weights(a.model, b.model) and not _same_weights(a.model, c.model)
    assert a.objective == "causal" and a.model_type == "llama" and a.source == "scratch:llama:1m"
    assert a.model.config.use_cache is False  # a KV cache would disable packed-document masking


@pytest.mark.parametrize(
    "arch,impl,objective",
    [
        ("llama", "sdpa", "causal"),
        ("llama", "eager", "causal"),
        ("gpt2", "sdpa", "causal"),
        ("gpt2", "eager", "causal"),
        ("bert", "sdpa", "masked"),
        ("bert", "eager", "masked"),
    ],
)
def test_document_packing_probe(scratch, arch, impl, objective):
    model = scratch(arch, attn_implementation=impl).model
    model.train()
    assert supports_document_packing(model, objective) is True
    assert model.training  # mode restored
    if arch == "bert":  # eager BERT *adds* the 4D mask to the scores: the boolean form is wrong there
        assert supports_document_packing(model, objective, additive_mask=False) is (impl == "sdpa")


def test_document_packing_probe_sees_a_kv_cache(scratch):
    """With use_cache on (transformers' default) packed position_ids are ignored: documents leak."""
    model = scratch("llama").model
    model.config.use_cache = True
    model.eval()
    g = torch.Generator().manual_seed(0)
    a, a2, b = (torch.randint(5, 300, (n,), generator=g) for n in (7, 7, 9))
    pos = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():
        leak = (
            (
                model(input_ids=torch.cat([a, b])[None], position_ids=pos).logits[0, 7:]
                - model(input_ids=torch.cat([a2, b])[None], position_ids=pos).logits[0, 7:]
            )
            .abs()
            .max()
        )
        kept = (
            (
                model(input_ids=torch.cat([a, b])[None], position_ids=pos, use_cache=False).logits[0, 7:]
                - model(input_ids=torch.cat([a2, b])[None], position_ids=pos, use_cache=False).logits[0, 7:]
            )
            .abs()
            .max()
        )
    assert leak > 1e-3 and kept < 1e-5


def test_block_diagonal_mask():
    seg = torch.tensor([[0, 0, 1, 1, 1]])
    m = block_diagonal_mask(seg)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    assert m[0, 0, 0, 1] and not m[0, 0, 1, 2] and m[0, 0, 4, 2]
    add = block_diagonal_mask(seg, additive=True)
    assert add[0, 0, 0, 1] == 0 and add[0, 0, 1, 2] == torch.finfo(torch.float32).min


def test_pretrained_folder_round_trip_and_attn_fallback(scratch, tmp_path):
    from lmadapt.models.lora import save_model

    lm = scratch("gpt2")
    save_model(lm.model, lm.tokenizer, tmp_path / "m", merge=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = load_model(ModelConfig(path=str(tmp_path / "m"), attn_implementation="flash_attention_2"))
    assert again.model.config._attn_implementation in ("sdpa", "eager")
    assert any("flash_attention_2" in str(w.message) for w in caught)
    assert again.objective == "causal" and again.source == str(tmp_path / "m")
    assert _same_weights(lm.model, again.model)
    with pytest.raises(ConfigError, match="masked LM needs an encoder"):
        load_model(ModelConfig(path=str(tmp_path / "m")), objective="masked")


def test_pad_token_fallback_to_eos(bpe_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    loaded = load_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token == loaded.eos_token == "<|endoftext|>"


def test_clear_errors_for_missing_model_and_unreachable_hub(monkeypatch):
    import huggingface_hub.constants as hub_constants

    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(ModelConfig(path="./definitely/not/here"))
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_tokenizer("/definitely/not/here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"could not load model 'no-such-org/no-such-model': not a local folder"):
        load_model(ModelConfig(path="no-such-org/no-such-model"))
    with pytest.raises(NotImplementedError):
        load_model(ModelConfig(path="x"), for_task="classification")
