"""Vocabulary extension: mining, byte-level BPE and WordPiece extension, embedding initialisation, CLI."""

import json

import pytest
import torch

from helpers import CORPUS, tiny_bpe_tokenizer, tiny_gpt2, tiny_llama, tiny_wordpiece_tokenizer
from lmadapt.config.base import ConfigError
from lmadapt.models.embed_init import init_new_rows
from lmadapt.models.vocab import (
    VOCAB_FILE,
    extend_tokenizer,
    mine_candidates,
    pretoken_counts,
    read_extension,
    tokens_per_word,
)

WORD = "hyperparameterisation"
DOMAIN = [f"The {WORD} of a model is tedious. {WORD.capitalize()} helps. Tokenizers split text."] * 8


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    tok = tiny_bpe_tokenizer(d / "base")
    cands = mine_candidates(tok, DOMAIN, add=3, min_frequency=2)
    new = extend_tokenizer(tok, cands, d / "ext", counts=pretoken_counts(tok, DOMAIN))
    return tok, new, cands, d


def test_bpe_word_cut_into_five_pieces_becomes_one_token(bpe):
    tok, new, cands, _ = bpe
    before = _ids(tok, " " + WORD)
    assert len(before) >= 5, tok.convert_ids_to_tokens(before)
    # Chosen in its in-sentence form (leading space), ranked by tokens saved = frequency x (pieces - 1).
    c = next(c for c in cands if c.word == " " + WORD)
    assert c.frequency == 8 and len(c.pieces) == len(before)
    assert [x.saved for x in cands] == sorted((x.saved for x in cands), reverse=True)
    after = _ids(new, f"The {WORD} of")
    assert len(after) == 3 and new.convert_ids_to_tokens(after)[1] == "Ġ" + WORD
    assert c.id == after[1] and c.id >= len(tok) and len(new) == len(tok) + len(cands)
    assert new.decode(after) == f"The {WORD} of"


def test_bpe_text_without_the_new_words_tokenizes_as_before(bpe):
    tok, new, _, _ = bpe
    for text in CORPUS + [f"{WORD}s and x{WORD}", f"super{WORD}", "  spaced\n\tout  text  "]:
        assert _ids(new, text) == _ids(tok, text), text
    # only where a whole pre-token equals a new token does anything change
    assert len(_ids(new, f"a {WORD} b")) < len(_ids(tok, f"a {WORD} b"))


def test_extended_folder_records_the_tokens_and_loads_in_plain_transformers(bpe):
    from transformers import AutoTokenizer

    _, new, cands, d = bpe
    rec = read_extension(d / "ext")
    assert rec["kind"] == "bpe" and [t["token"] for t in rec["tokens"]] == [c.token for c in cands]
    assert rec["tokens"][0]["piece_ids"] == cands[0].piece_ids
    plain = AutoTokenizer.from_pretrained(d / "ext")
    assert _ids(plain, f"The {WORD}") == _ids(new, f"The {WORD}")


def test_fragmentation_falls_on_domain_text(bpe):
    tok, new, _, _ = bpe
    b, a = tokens_per_word(tok, DOMAIN), tokens_per_word(new, DOMAIN)
    assert b["words"] == a["words"] and a["tokens_per_word"] < b["tokens_per_word"]


def test_wordpiece_adds_whole_words_only(tmp_path):
    tok = tiny_wordpiece_tokenizer(tmp_path / "base")
    texts = [f"the {WORD} of models. {WORD} again"] * 5
    cands = mine_candidates(tok, texts, add=1, min_frequency=2)
    assert cands[0].word == WORD and len(cands[0].pieces) >= 3
    new = extend_tokenizer(tok, cands, tmp_path / "ext", counts=pretoken_counts(tok, texts))
    assert new.convert_ids_to_tokens(_ids(new, f"The {WORD.upper()}, ok"))[1] == WORD  # normalised (lower-cased) text
    for text in CORPUS + [f"{WORD}s x{WORD}"]:
        assert _ids(new, text) == _ids(tok, text), text


@pytest.mark.parametrize("tied", [False, True])
def test_mean_init_is_the_mean_of_the_pieces(bpe, tied):
    tok, new, cands, _ = bpe
    model = tiny_gpt2(len(tok)) if tied else tiny_llama(len(tok))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    pieces = {c.id: c.piece_ids for c in cands}
    init_new_rows(model, pieces, method="mean", old_size=len(tok))
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == len(new) and (w_in is w_out) == tied
    for c in cands:
        assert torch.allclose(w_in[c.id], old_in[c.piece_ids].mean(0), atol=1e-6)
        assert torch.allclose(w_out[c.id], old_out[c.piece_ids].mean(0), atol=1e-6)
    assert torch.equal(w_in[: len(tok)], old_in)  # old rows untouched


def test_overall_mean_init_and_bad_method(bpe):
    tok, _, cands, _ = bpe
    model = tiny_llama(len(tok))
    mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    init_new_rows(model, {c.id: c.piece_ids for c in cands}, method="overall_mean", old_size=len(tok))
    assert torch.allclose(model.get_input_embeddings().weight[cands[0].id], mean, atol=1e-6)
    with pytest.raises(ConfigError, match="vocab.init"):
        init_new_rows(model, {}, method="zeros", old_size=len(tok))


def test_cli_extend_prints_the_table_and_respects_the_output_folder(tmp_path, capsys):
    from lmadapt.cli import main

    tiny_bpe_tokenizer(tmp_path / "model")
    data = tmp_path / "domain.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOMAIN * 3))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    args = ["tokenizer", "extend", str(tmp_path / "model"), "--data", str(data), "--add", "2", "--min-frequency", "2"]
    assert main(args + ["--output", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and (busy / "notes.txt").read_text() == "mine"
    assert main(args + ["--output", str(tmp_path / "ext")]) == 0
    out = capsys.readouterr().out
    assert f"' {WORD.capitalize()}'" in out and "tokens per word" in out and "pieces before" in out
    assert (tmp_path / "ext" / VOCAB_FILE).is_file()


def _bpe_variant(pre_tokenizer, **model):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from helpers import _bpe_json

    j = json.loads(_bpe_json(400))
    j["pre_tokenizer"] = pre_tokenizer
    j["model"].update(model)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(j)), eos_token="<|endoftext|>", pad_token="<pad>"
    )


def test_llama3_style_pretokenizer(tmp_path):
    """Llama 3: a Split regex then ByteLevel without its own regex, ignore_merges already on."""
    pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok = _bpe_variant(
        {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        ignore_merges=True,
    )
    cands = mine_candidates(tok, DOMAIN, add=2, min_frequency=2)
    new = extend_tokenizer(tok, cands, tmp_path / "ext", counts=pretoken_counts(tok, DOMAIN))
    assert len(_ids(new, f"The {WORD}")) == 2 and new.decode(_ids(new, f"The {WORD}")) == f"The {WORD}"
    for text in CORPUS + [f"{WORD}s x{WORD}"]:
        assert _ids(new, text) == _ids(tok, text), text


def test_tokenizer_without_word_splitting_is_refused(tmp_path):
    tok = _bpe_variant(None)  # the whole text is one pre-token: a whole-word entry could never apply
    with pytest.raises(ConfigError, match="pre-tokenizer splits words"):
        mine_candidates(tok, DOMAIN, add=2)
