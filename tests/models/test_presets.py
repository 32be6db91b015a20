import pytest

from lmadapt.config.base import ConfigError
from lmadapt.models.presets import ARCHS, PRESETS, count_params, describe_presets, scratch_config


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", ["1m", "tiny"])
def test_scratch_model_matches_preset_size(scratch, arch, size):
    lm = scratch(arch, size)
    nominal = PRESETS[size]["nominal_params"]
    n_block = count_params(lm.model, non_embedding=True)
    assert 0.75 * nominal <= n_block <= 1.25 * nominal, (arch, size, n_block)
    # counting from the config (meta device) agrees with the allocated model
    assert count_params(lm.model.config) == count_params(lm.model)
    assert count_params(lm.model.config, non_embedding=True) == n_block
    # embeddings come on top: vocab x hidden, tied head counted once
    hidden = lm.model.config.hidden_size
    assert count_params(lm.model) - n_block >= len(lm.tokenizer) * hidden


@pytest.mark.parametrize("size", ["8m", "30m", "100m"])
def test_larger_presets_sized_without_allocating(size, bpe_dir, wordpiece_dir):
    from transformers import AutoTokenizer

    nominal = PRESETS[size]["nominal_params"]
    for arch in ARCHS:
        tok = AutoTokenizer.from_pretrained(wordpiece_dir if arch == "bert" else bpe_dir)
        n = count_params(scratch_config(arch, size, {}, tok), non_embedding=True)
        assert 0.75 * nominal <= n <= 1.25 * nominal, (arch, size, n)


def test_config_takes_vocab_and_special_ids_from_tokenizer(scratch):
    lm = scratch("llama")
    cfg, tok = lm.model.config, lm.tokenizer
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert cfg.tie_word_embeddings is True
    bert = scratch("bert")
    assert bert.model.config.pad_token_id == bert.tokenizer.pad_token_id


def test_dims_override_preset_and_unknown_key_is_named(bpe_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    cfg = scratch_config("gpt2", "1m", {"num_hidden_layers": 2, "intermediate_size": 256, "n_positions": 128}, tok)
    assert (cfg.n_layer, cfg.n_inner, cfg.n_positions, cfg.n_embd) == (2, 256, 128, 128)
    cfg = scratch_config(
        "llama",
        None,
        {
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 128,
        },
        tok,
    )
    assert cfg.num_key_value_heads == 1 and cfg.hidden_size == 64
    with pytest.raises(ConfigError, match=r"model\.dims\.hiden_size.*did you mean 'hidden_size'"):
        scratch_config("llama", "1m", {"hiden_size": 64}, tok)
    with pytest.raises(ConfigError, match=r"model\.dims\.num_key_value_heads.*gpt2 has no such option"):
        scratch_config("gpt2", "1m", {"num_key_value_heads": 2}, tok)
    with pytest.raises(ConfigError, match="unknown preset 'tiniest'.*did you mean 'tiny'"):
        scratch_config("llama", "tiniest", {}, tok)
    with pytest.raises(ConfigError, match="not divisible"):
        scratch_config("bert", "1m", {"num_attention_heads": 3}, tok)


def test_count_params_on_meta_allocates_nothing(bpe_dir):
    from transformers import AutoTokenizer

    cfg = scratch_config("llama", "100m", {}, AutoTokenizer.from_pretrained(bpe_dir))
    assert count_params(cfg) > 95_000_000  # built on the meta device: instant, no memory


def test_describe_presets_rows():
    rows = describe_presets()
    assert {r["size"] for r in rows} == set(PRESETS) and {r["arch"] for r in rows} == set(ARCHS)
    assert all(r["hidden_size"] and r["num_hidden_layers"] for r in rows)
