"""A pretrain stage with vocabulary extension: mined tokens, new-rows-only first phase, per-word
perplexity, and output folders (full and LoRA) that load in plain transformers with the new rows."""

import json

import pytest
import torch

from helpers import tiny_bpe_tokenizer, tiny_llama
from lmadapt.config import PretrainConfig, load_recipe

WORD = "hyperparameterisation"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("pvocab")
    tok = tiny_bpe_tokenizer(d / "base")
    model = tiny_llama(len(tok))
    model.save_pretrained(d / "base")
    for name, n, k in (("train", 40, 0), ("valid", 4, 100)):
        rows = [{"text": f"The {WORD} of model {i + k} is slow; tune the {WORD} twice."} for i in range(n)]
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d, tok, model


def _recipe(d, out, **vocab):
    return {
        "model": {"path": str(d / "base")},
        "data": {
            "sources": [{"path": str(d / "train.jsonl")}],
            "eval_sources": [{"path": str(d / "valid.jsonl"), "name": "valid"}],
            "block_size": 32,
            "cache_dir": str(d / "cache"),
        },
        "train": {
            "output_dir": str(d / out),
            "max_steps": 3,
            "batch_size": 4,
            "lr": 1e-2,
            "warmup_steps": 0,
            "log_every": 1,
            "report_to": [],
            "seed": 0,
        },
        "vocab": {"min_frequency": 2, **vocab},
    }


def test_extension_trains_only_new_rows_first_and_saves_a_plain_folder(ws):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmadapt.stages.pretrain import run_pretrain

    d, tok, base = ws
    cfg = load_recipe(PretrainConfig, data=_recipe(d, "full", extend=4, warmup_steps=3, embedding_lr=5e-2))
    metrics = run_pretrain(cfg)
    v = metrics["vocab"]
    assert v["added"] == 4 and v["new_size"] == len(tok) + 4 and v["init"] == "mean"
    assert v["fragmentation"]["tokens_per_word_after"] < v["fragmentation"]["tokens_per_word_before"]
    held = metrics["heldout"]["valid"]
    for side in ("before", "after"):  # exp(total NLL / words): comparable across tokenizers
        m = held[side]
        assert m["words"] == 4 * len(f"The {WORD} of model 100 is slow; tune the {WORD} twice.".split())
        assert m["word_perplexity"] == pytest.approx(
            torch.tensor(m["loss"] * m["tokens"] / m["words"]).exp().item(), rel=1e-6
        )
    out = d / "full"
    plain = AutoModelForCausalLM.from_pretrained(out)
    ptok = AutoTokenizer.from_pretrained(out)
    ids = ptok(f"a {WORD}", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and ids[1] >= len(tok)
    emb, head = plain.get_input_embeddings().weight, plain.get_output_embeddings().weight
    assert emb.shape[0] == len(tok) + 4
    # all 3 steps were the new-rows-only phase: old rows and the rest of the model are unchanged ...
    old = dict(base.named_parameters())
    assert torch.equal(emb[: len(tok)], old["model.embed_tokens.weight"])
    assert torch.equal(head[: len(tok)], old["lm_head.weight"])
    assert torch.equal(plain.model.layers[0].mlp.up_proj.weight, old["model.layers.0.mlp.up_proj.weight"])
    # ... while the new rows moved away from their mean initialisation
    pieces = json.loads(json.dumps(v["tokens"]))[0]["pieces"]
    first = tok.convert_tokens_to_ids(pieces)
    assert not torch.allclose(emb[len(tok)], old["model.embed_tokens.weight"][first].mean(0))


def test_lora_with_extension_saves_the_grown_embeddings(ws):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmadapt.config.base import ConfigError
    from lmadapt.models.load import load_model
    from lmadapt.config.model import ModelConfig
    from lmadapt.stages.pretrain import run_pretrain

    d, tok, _ = ws
    data = _recipe(d, "lora", extend=3)
    data["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    with pytest.raises(ConfigError, match="lora.train_embeddings"):
        load_recipe(PretrainConfig, data=data)
    data["lora"]["train_embeddings"] = True
    run_pretrain(load_recipe(PretrainConfig, data=data))
    out = d / "lora"
    assert (out / "adapter_model.safetensors").is_file()
    # plain transformers + peft: resize the base to the saved tokenizer, then load the adapter
    ptok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(d / "base")
    base.resize_token_embeddings(len(ptok))
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    assert merged.get_input_embeddings().weight.shape[0] == len(tok) + 3
    # lmadapt's own loader does the resize itself
    loaded = load_model(ModelConfig(path=str(out)))
    assert torch.equal(loaded.model.get_input_embeddings().weight, merged.get_input_embeddings().weight)
    assert torch.equal(loaded.model.get_output_embeddings().weight, merged.get_output_embeddings().weight)
    # fine-tuning starts from the adapter folder: its trained new rows are used, not fresh ones
    from lmadapt.config.base import to_dict
    from lmadapt.config.finetune import FinetuneConfig
    from lmadapt.stages.finetune import run_finetune

    rows = [{"text": f"the {WORD} is {'fast' if i % 2 else 'slow'}", "label": "a" if i % 2 else "b"} for i in range(16)]
    (d / "ft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft = load_recipe(
        FinetuneConfig,
        data={
            "model": {"path": str(out), "max_length": 16},
            "data": {"train": str(d / "ft.jsonl"), "dev": str(d / "ft.jsonl")},
            "train": {"output_dir": str(d / "ft"), "epochs": 1, "batch_size": 8, "report_to": [], "torch_threads": 1},
        },
    )
    run_finetune(ft, to_dict(ft))
    from transformers import AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(d / "ft")
    assert clf.get_input_embeddings().weight.shape[0] == len(tok) + 3
    assert len(AutoTokenizer.from_pretrained(d / "ft")(f"a {WORD}", add_special_tokens=False)["input_ids"]) == 2


def test_masked_lm_with_wordpiece_extension(ws, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from helpers import tiny_bert, tiny_wordpiece_tokenizer
    from lmadapt.stages.pretrain import run_pretrain

    d, _, _ = ws
    tok = tiny_wordpiece_tokenizer(tmp_path / "bert")
    tiny_bert(len(tok)).save_pretrained(tmp_path / "bert")
    data = _recipe(d, tmp_path / "out", extend=2)
    data["model"] = {"path": str(tmp_path / "bert")}
    data["train"]["max_steps"] = 2
    metrics = run_pretrain(load_recipe(PretrainConfig, data=data))
    assert metrics["objective"] == "masked" and metrics["vocab"]["added"] == 2
    assert "word_perplexity" not in metrics["heldout"]["valid"]["after"]  # per word: causal models only
    ptok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert ptok.convert_ids_to_tokens(ptok(f"the {WORD}", add_special_tokens=False)["input_ids"]) == ["the", WORD]
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 2


def test_pretrain_with_a_tokenizer_folder_from_the_command(ws, tmp_path):
    from lmadapt.config.base import ConfigError
    from lmadapt.models.vocab import extend_tokenizer, mine_candidates
    from lmadapt.stages.pretrain import run_pretrain
    from helpers import tiny_wordpiece_tokenizer

    d, tok, base = ws
    texts = [f"a {WORD} here"] * 6
    cands = mine_candidates(tok, texts, add=1, min_frequency=2)
    extend_tokenizer(tok, cands, tmp_path / "ext")
    data = _recipe(d, tmp_path / "out", tokenizer=str(tmp_path / "ext"))
    data["train"]["max_steps"] = 1
    metrics = run_pretrain(load_recipe(PretrainConfig, data=data))
    assert metrics["vocab"]["source"] == str(tmp_path / "ext") and metrics["vocab"]["new_size"] == len(tok) + 1
    # a folder extending another tokenizer (here of the same size) is refused
    other = tiny_wordpiece_tokenizer(tmp_path / "wp")
    extend_tokenizer(other, mine_candidates(other, texts, add=1, min_frequency=2), tmp_path / "wrong")
    data = _recipe(d, tmp_path / "out2", tokenizer=str(tmp_path / "wrong"))
    with pytest.raises(ConfigError, match="extends another tokenizer"):
        run_pretrain(load_recipe(PretrainConfig, data=data))
