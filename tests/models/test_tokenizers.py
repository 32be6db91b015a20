import pytest
from transformers import AutoTokenizer

from lmadapt.config.base import ConfigError
from lmadapt.models.tokenizers import train_tokenizer


def test_bpe_round_trip(bpe_dir):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert tok.model_max_length == 2048
    text = "Ölfeld café: the quick brown fox, 42 times!"
    ids = tok(text)["input_ids"]
    assert tok.eos_token_id not in ids and tok.bos_token_id not in ids  # packing appends EOS itself
    assert tok.decode(ids) == text  # byte-level: lossless, even for unseen characters
    assert tok.decode(tok("漢字 ☃")["input_ids"]) == "漢字 ☃"


def test_wordpiece_round_trip_and_pair_template(wordpiece_dir):
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    for name, value in [("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")]:
        assert getattr(tok, f"{name}_token") == value
    enc = tok("the quick fox", "a lazy dog")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert tok.decode(tok("The quick brown fox")["input_ids"], skip_special_tokens=True) == "The quick brown fox"
    assert tok.convert_ids_to_tokens(tok("Fox")["input_ids"])[1] != "fox"  # cased by default


def test_retrain_replaces_folder_and_validates(tmp_path, corpus):
    out = tmp_path / "t"
    train_tokenizer(corpus[:50], kind="bpe", vocab_size=300, output_dir=str(out))
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=400, output_dir=str(out))
    assert 300 < len(tok) <= 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp folders left
    with pytest.raises(ConfigError, match="kind"):
        train_tokenizer(corpus, kind="unigram", vocab_size=400, output_dir=str(tmp_path / "u"))
    with pytest.raises(ConfigError, match="no training text"):
        train_tokenizer([], kind="wordpiece", vocab_size=400, output_dir=str(tmp_path / "e"))
