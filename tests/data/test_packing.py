import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from helpers import CORPUS, tiny_bpe_tokenizer, tiny_wordpiece_tokenizer

from lmadapt.data import packing
from lmadapt.data import tokenized_docs
from lmadapt.data import tokenize as packing_tokenize
from lmadapt.data.objective import ObjectiveTokens, resolve_pad_id
from lmadapt.data.packing import TokenizedDocs, build_blocks, cache_key, pack_blocks, token_arrays, tokenize_documents


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe_tokenizer()


@pytest.fixture(scope="module")
def wordpiece():
    return tiny_wordpiece_tokenizer()


def col(ds, name):
    """A whole column as a [blocks, L] numpy array."""
    return np.asarray(ds[:][name])


def reference_pack(docs, L, pad_id, mode):
    """Straightforward loop implementation of the packing contract, to compare against."""
    ids, pos, labels, pad = [], [], [], []
    for doc in docs:
        for k, t in enumerate(doc):
            first_in_block = len(ids) % L == 0
            if mode == "document":
                p = 0 if (k == 0 or first_in_block) else pos[-1] + 1
            else:
                p = len(ids) % L
            ids.append(t), pos.append(p), pad.append(0)
            labels.append(-100 if mode == "document" and p == 0 else t)
    k = 0
    while len(ids) % L:
        ids.append(pad_id), pad.append(1), labels.append(-100)
        pos.append(k if mode == "document" else len(ids) % L - 1 if len(ids) % L else L - 1)
        k += 1
    arr = lambda x: np.array(x).reshape(-1, L)  # noqa: E731
    return arr(ids), arr(pos), arr(labels), arr(pad)


@pytest.mark.parametrize("mode", ["document", "concat"])
def test_packing_drops_nothing_and_matches_reference(mode):
    rng = np.random.default_rng(0)
    L = 16
    # a short doc, a doc longer than two blocks, one exactly a block, single tokens, a final partial block
    lengths = [5, 2 * L + 7, L, 1, 1, 3, 9]
    docs = [list(rng.integers(2, 300, n)) for n in lengths]
    ds, acct = pack_blocks(docs, block_size=L, pad_id=1, mode=mode)
    ids, pos, labels, pad = reference_pack(docs, L, 1, mode)
    np.testing.assert_array_equal(col(ds, "input_ids"), ids)
    np.testing.assert_array_equal(col(ds, "position_ids"), pos)
    np.testing.assert_array_equal(col(ds, "labels"), labels)
    np.testing.assert_array_equal(col(ds, "is_padding"), pad)
    # the non-pad tokens, in order, are exactly the concatenated documents
    flat, is_pad = col(ds, "input_ids").reshape(-1), col(ds, "is_padding").reshape(-1).astype(bool)
    np.testing.assert_array_equal(flat[~is_pad], np.concatenate(docs))
    assert not is_pad[: sum(lengths)].any() and is_pad[sum(lengths) :].all()
    n = sum(lengths)
    assert acct.tokens == n and acct.documents == len(docs) and acct.tokens_dropped == 0
    assert acct.blocks == len(ds) == -(-n // L) and acct.block_size == L
    assert acct.blocks * L == n + acct.padding_tokens
    assert acct.non_pad_fraction == pytest.approx(n / (acct.blocks * L))
    assert acct.mode == mode
    json.dumps(asdict(acct))
    assert "tokens dropped" in acct.table() and f"{n:,}" in acct.table()


def test_document_positions_labels_padding():
    L = 8
    docs = [[10, 11, 12, 0], [20, 21, 0], [30, 31, 32, 33, 34, 35, 36, 37, 38, 0], [40, 0]]
    ds, _ = pack_blocks(docs, block_size=L, pad_id=1, mode="document")
    assert col(ds, "position_ids").tolist() == [
        [0, 1, 2, 3, 0, 1, 2, 0],
        [0, 1, 2, 3, 4, 5, 6, 7],  # continued document restarts at 0
        [0, 0, 1, 0, 1, 2, 3, 4],
    ]  # its EOS, [40, 0], then padding
    assert col(ds, "labels").tolist() == [
        [-100, 11, 12, 0, -100, 21, 0, -100],  # documents' first tokens: -100
        [-100, 32, 33, 34, 35, 36, 37, 38],
        [-100, -100, 0] + [-100] * 5,
    ]  # padding: -100
    assert col(ds, "is_padding").tolist()[2] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert (col(ds, "input_ids")[2][3:] == 1).all()


def test_exact_fit_has_no_padding_block():
    ds, acct = pack_blocks([[5] * 8, [6] * 8], block_size=8, pad_id=1, mode="document")
    assert acct.blocks == 2 and acct.padding_tokens == 0 and not col(ds, "is_padding").any()
    ds, acct = pack_blocks([], block_size=8, pad_id=1, mode="concat")
    assert acct.blocks == 0 and acct.tokens == 0 and len(ds) == 0


def test_pack_is_fast_enough():
    import time

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, 5000)
    docs = TokenizedDocs(
        rng.integers(0, 1000, lengths.sum()).astype(np.int32), np.concatenate([[0], np.cumsum(lengths)])
    )
    t = time.perf_counter()
    ds, acct = pack_blocks(docs, block_size=128, pad_id=1, mode="document")
    assert time.perf_counter() - t < 5  # ~1M tokens; 10M take ~1-2 s
    assert acct.tokens == lengths.sum() and acct.tokens_dropped == 0


def test_causal_tokenization_appends_eos_without_special_tokens(bpe, tmp_path):
    texts = ["Hello world.", "", "The court held that the contract was unenforceable."]
    docs = tokenize_documents(texts, bpe, separator="eos", cache_dir=tmp_path)
    assert len(docs) == 3
    for text, doc in zip(texts, docs):
        assert doc["input_ids"] == bpe(text, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]
    assert docs[1]["input_ids"] == [bpe.eos_token_id]


def test_masked_tokenization_wraps_cls_sep_and_word_starts(wordpiece, tmp_path):
    docs = tokenize_documents(
        ["Tokenizers split prefixes", "unbelievable dialysis!"],
        wordpiece,
        separator="sep",
        cache_dir=tmp_path,
        with_word_starts=True,
    )
    for doc in docs:
        toks = wordpiece.convert_ids_to_tokens(doc["input_ids"])
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and "[CLS]" not in toks[1:-1]
        assert any(t.startswith("##") for t in toks)  # the test needs multi-piece words
        assert doc["word_starts"] == [0 if t.startswith("##") else 1 for t in toks]


def test_bpe_word_starts(bpe, tmp_path):
    (doc,) = tokenize_documents(["Photosynthesis converts energy"], bpe, cache_dir=tmp_path, with_word_starts=True)
    toks = bpe.convert_ids_to_tokens(doc["input_ids"])
    expected = [1 if (i == 0 or t.startswith("Ġ") or t == "<|endoftext|>") else 0 for i, t in enumerate(toks)]
    assert doc["word_starts"] == expected and sum(expected) == 4


def test_missing_separator_raises(bpe, wordpiece, tmp_path):
    with pytest.raises(ValueError, match="SEP"):
        tokenize_documents(["x"], bpe, separator="sep", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="EOS"):
        tokenize_documents(["x"], wordpiece, separator="eos", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="separator"):
        tokenize_documents(["x"], bpe, separator="newline", cache_dir=tmp_path)


def test_accepts_document_objects(bpe, tmp_path):
    class Doc:
        def __init__(self, text):
            self.text, self.source, self.origin = text, "s", "f:1"

    a = tokenize_documents([Doc("Fresh bread"), "Fresh bread"], bpe, cache_dir=tmp_path)
    assert a[0] == a[1]
    with pytest.raises(TypeError, match="document 0"):
        tokenize_documents([3], bpe, cache_dir=tmp_path)


def test_cache_hit_skips_tokenization(bpe, tmp_path, monkeypatch):
    texts = CORPUS[:20]
    first = tokenize_documents(texts, bpe, cache_dir=tmp_path, with_word_starts=True)
    assert not first.cache_hit and Path(first.cache_path).is_dir()
    assert sorted(os.listdir(tmp_path)) == [Path(first.cache_path).name]  # no temp folders left behind

    def boom(*a, **k):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(packing_tokenize, "_encode_batches", boom)
    second = tokenize_documents(texts, bpe, cache_dir=tmp_path, with_word_starts=True)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert second[:] == first[:]
    with pytest.raises(AssertionError, match="tokenized again"):  # other settings: a miss
        tokenize_documents(texts, bpe, cache_dir=tmp_path, with_word_starts=False)


def test_default_cache_dir_from_env(bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("LMADAPT_CACHE", str(tmp_path / "c"))
    docs = tokenize_documents(["abc"], bpe)
    assert Path(docs.cache_path).parent == tmp_path / "c"


def test_cache_key_changes_with_inputs(bpe, wordpiece):
    texts = ["a b", "c"]
    key = cache_key(texts, bpe, separator="eos", with_word_starts=False)
    assert key == cache_key(list(texts), tiny_bpe_tokenizer(), separator="eos", with_word_starts=False)
    others = {
        cache_key(["a b", "c "], bpe, separator="eos", with_word_starts=False),
        cache_key(["a", "b c"], bpe, separator="eos", with_word_starts=False),  # same characters, other split
        cache_key(texts, bpe, separator="eos", with_word_starts=True),
        cache_key(texts, tiny_bpe_tokenizer(vocab_size=380), separator="eos", with_word_starts=False),
        cache_key(texts, wordpiece, separator="sep", with_word_starts=False),
    }
    assert key not in others and len(others) == 5
    changed = tiny_bpe_tokenizer()
    changed.eos_token = "<pad>"  # same vocabulary, other special token
    assert cache_key(texts, changed, separator="eos", with_word_starts=False) != key


def test_truncation_setting_does_not_cut_documents(tmp_path):
    tok = tiny_bpe_tokenizer()
    tok.backend_tokenizer.enable_truncation(4)
    (doc,) = tokenize_documents([CORPUS[4]], tok, cache=False)
    assert len(doc["input_ids"]) > 5


def test_num_proc_matches_single_process(bpe, monkeypatch):
    monkeypatch.setattr(packing_tokenize, "_CHUNK", 4)
    texts = CORPUS * 2
    one = token_arrays(tokenize_documents(texts, bpe, cache=False, with_word_starts=True))
    two = token_arrays(tokenize_documents(texts, bpe, cache=False, with_word_starts=True, num_proc=2))
    np.testing.assert_array_equal(one.ids, two.ids)
    np.testing.assert_array_equal(one.offsets, two.offsets)
    np.testing.assert_array_equal(one.word_starts, two.word_starts)


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_build_blocks_end_to_end(objective, bpe, wordpiece, tmp_path):
    tok = bpe if objective == "causal" else wordpiece
    texts = CORPUS[:12] + [" ".join(CORPUS)]  # the last document spans several blocks
    ds, acct = build_blocks(
        texts, tok, block_size=32, mode="document", objective=objective, cache_dir=tmp_path, seed=None
    )
    docs = tokenize_documents(
        texts,
        tok,
        separator="eos" if objective == "causal" else "sep",
        cache_dir=tmp_path,
        with_word_starts=objective == "masked",
    )
    assert docs.cache_hit
    arrays = token_arrays(docs)
    flat = col(ds, "input_ids").reshape(-1)[~col(ds, "is_padding").reshape(-1).astype(bool)]
    np.testing.assert_array_equal(flat, arrays.ids)
    assert acct.tokens == arrays.num_tokens and acct.tokens_dropped == 0 and acct.documents == len(texts)
    assert ("word_starts" in ds.column_names) == (objective == "masked")
    assert col(ds, "input_ids")[-1][-1] == resolve_pad_id(tok, objective)
    shuffled, acct2 = build_blocks(
        texts, tok, block_size=32, mode="document", objective=objective, cache_dir=tmp_path, seed=1
    )
    assert acct2 == acct
    assert sorted(col(shuffled, "input_ids").reshape(-1).tolist()) == sorted(col(ds, "input_ids").reshape(-1).tolist())


def test_pad_id_falls_back_to_eos_for_causal(bpe):
    tok = tiny_bpe_tokenizer()
    tok.pad_token = None
    assert resolve_pad_id(tok, "causal") == tok.eos_token_id
    with pytest.raises(ValueError, match="PAD"):
        resolve_pad_id(tok, "masked")


def test_objective_tokens(bpe, wordpiece):
    """One place turns an objective into the separator, word starts and pad id that training,
    held-out scoring and the advisor all pack with."""
    assert ObjectiveTokens.of(bpe, "causal") == ObjectiveTokens("causal", "eos", False, resolve_pad_id(bpe, "causal"))
    assert ObjectiveTokens.of(wordpiece, "masked") == ObjectiveTokens("masked", "sep", True, wordpiece.pad_token_id)
    with pytest.raises(ValueError, match="objective must be"):
        ObjectiveTokens.of(bpe, "seq2seq")


def test_tokenized_dataset_select_and_concatenate(bpe, wordpiece, tmp_path):
    """The stages subsample/repeat sources with select() and join them with concatenate_datasets."""
    from datasets import concatenate_datasets

    a = tokenize_documents(CORPUS[:5], wordpiece, separator="sep", cache_dir=tmp_path, with_word_starts=True)
    b = tokenize_documents(CORPUS[5:9], wordpiece, separator="sep", cache_dir=tmp_path, with_word_starts=True)
    assert a.column_names == ["input_ids", "word_starts"] and len(a) == 5
    mixed = concatenate_datasets([a.select([4, 0, 0]), b.select([3])])
    expected = [a[4], a[0], a[0], b[3]]
    arrays = token_arrays(mixed)
    assert arrays.offsets.tolist() == np.cumsum([0] + [len(r["input_ids"]) for r in expected]).tolist()
    assert arrays.ids.tolist() == [t for r in expected for t in r["input_ids"]]
    assert arrays.word_starts.tolist() == [t for r in expected for t in r["word_starts"]]
    ds, acct = pack_blocks(mixed, block_size=16, pad_id=wordpiece.pad_token_id, mode="document")
    assert acct.tokens == len(arrays.ids) and acct.documents == 4 and acct.tokens_dropped == 0
    # an empty selection and plain lists work too
    assert pack_blocks(a.select([]), block_size=16, pad_id=0, mode="concat")[1].blocks == 0
    assert (
        pack_blocks([r["input_ids"] for r in expected], block_size=16, pad_id=0)[1]
        == pack_blocks(expected, block_size=16, pad_id=0)[1]
    )


# ---- bounded memory: packing and gathering run in slices; blocks can live in a file --------------


def _random_docs(rng, n_docs, max_len, word_starts=False):
    lengths = rng.integers(1, max_len, n_docs)
    n = int(lengths.sum())
    ws = rng.integers(0, 2, n).astype(np.uint8) if word_starts else None
    return TokenizedDocs(rng.integers(2, 1000, n).astype(np.int32), np.concatenate([[0], np.cumsum(lengths)]), ws)


def _columns(ds):
    return {name: col(ds, name) for name in ds.column_names}


@pytest.mark.parametrize("mode", ["document", "concat"])
def test_packing_in_small_slices_equals_one_slice(mode, monkeypatch):
    """Slices of 3 blocks (and of 1) give the blocks that one slice gives, word starts included."""
    docs = _random_docs(np.random.default_rng(1), 60, 40, word_starts=True)
    whole, acct = pack_blocks(docs, block_size=16, pad_id=1, mode=mode)
    for slice_tokens in (48, 1):
        monkeypatch.setattr(packing, "_SLICE_TOKENS", slice_tokens)
        sliced, acct2 = pack_blocks(docs, block_size=16, pad_id=1, mode=mode)
        assert acct2 == acct and acct.tokens_dropped == 0 and acct.padding_tokens > 0
        for name, values in _columns(whole).items():
            np.testing.assert_array_equal(col(sliced, name), values, err_msg=name)


def test_gather_in_small_pieces_equals_reference(monkeypatch):
    """mix_documents (and select) gather piecewise; the result is the documents, in the order asked."""
    from lmadapt.data.mixing import mix_documents

    rng = np.random.default_rng(2)
    a, b = _random_docs(rng, 30, 50, word_starts=True), _random_docs(rng, 20, 50, word_starts=True)
    picks = {"a": np.array([3, 3, 0, 29, 7]), "b": np.arange(20)[::-1]}
    expected_docs = [a[i] for i in picks["a"]] + [b[i] for i in picks["b"]]
    order = np.random.default_rng(5).permutation(len(expected_docs))
    expected = [expected_docs[i] for i in order]
    for piece in (1 << 22, 7, 1):
        monkeypatch.setattr(tokenized_docs, "_GATHER_TOKENS", piece)
        mixed = mix_documents({"a": a, "b": b}, picks, seed=5)
        assert [mixed[i] for i in range(len(mixed))] == expected
        sel = a.select([29, 0, 0])
        assert [sel[i] for i in range(3)] == [a[29], a[0], a[0]]


def test_blocks_written_to_a_file_are_the_same_and_reused(tmp_path, monkeypatch):
    docs = _random_docs(np.random.default_rng(3), 80, 60, word_starts=True)
    memory, acct = pack_blocks(docs, block_size=32, pad_id=1, mode="document")
    path = tmp_path / "blocks" / "train.arrow"
    monkeypatch.setattr(packing, "_SLICE_TOKENS", 100)  # several record batches in the file
    on_disk, acct_disk = pack_blocks(docs, block_size=32, pad_id=1, mode="document", path=path)
    assert acct_disk == acct and len(on_disk) == len(memory)
    for name, values in _columns(memory).items():
        np.testing.assert_array_equal(col(on_disk, name), values, err_msg=name)
    assert on_disk.cache_files and on_disk.cache_files[0]["filename"] == str(path)  # memory-mapped
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.arrow", "train.arrow.json"]  # no temp left

    # A complete file is reused as it is: packing other documents to the same path returns it.
    stamp = path.stat().st_mtime_ns
    again, acct_again = pack_blocks(_random_docs(np.random.default_rng(9), 5, 10), block_size=32, pad_id=1, path=path)
    assert acct_again == acct and path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(col(again, "input_ids"), col(memory, "input_ids"))

    # Without its accounting the file counts as unfinished; a file that disagrees with it is refused.
    assert packing.open_blocks(tmp_path / "missing.arrow") is None
    (tmp_path / "blocks" / "train.arrow.json").write_text(json.dumps({**acct.to_dict(), "blocks": acct.blocks + 1}))
    with pytest.raises(RuntimeError, match="delete both and rerun"):
        packing.open_blocks(path)


def test_failed_packing_leaves_no_file(tmp_path, monkeypatch):
    docs = _random_docs(np.random.default_rng(4), 50, 60)
    real = packing._block_slices

    def fail_after_first(*args):
        gen = real(*args)
        yield next(gen)
        raise OSError("disk full")

    monkeypatch.setattr(packing, "_SLICE_TOKENS", 64)
    monkeypatch.setattr(packing, "_block_slices", fail_after_first)
    with pytest.raises(OSError, match="disk full"):
        pack_blocks(docs, block_size=32, pad_id=1, path=tmp_path / "train.arrow")
    assert list(tmp_path.iterdir()) == []
    assert packing.open_blocks(tmp_path / "train.arrow") is None


def test_cached_tokens_come_back_memory_mapped(bpe, tmp_path):
    """From the cache file, hit or fresh (so processes share the pages), equal to the uncached tokens."""
    from lmadapt.data.packing import tokenize_arrays

    plain = tokenize_arrays(CORPUS, bpe, cache=False)
    first = tokenize_arrays(CORPUS, bpe, cache_dir=tmp_path)
    hit = tokenize_arrays(CORPUS, bpe, cache_dir=tmp_path)
    assert not first.cache_hit and hit.cache_hit and hit.key == first.key == plain.key
    assert isinstance(hit.ids, np.memmap) and isinstance(first.ids, np.memmap) and not isinstance(plain.ids, np.memmap)
    for got in (first, hit):
        np.testing.assert_array_equal(got.ids, plain.ids)
        np.testing.assert_array_equal(got.offsets, plain.offsets)


def test_encode_batches_bounded_by_characters_give_the_same_tokens(bpe, wordpiece, monkeypatch):
    from lmadapt.data.packing import tokenize_arrays

    texts = [t * (i % 4 + 1) for i, t in enumerate(CORPUS)]
    whole = {
        name: tokenize_arrays(texts, tok, separator=sep, cache=False, with_word_starts=ws)
        for name, tok, sep, ws in (("bpe", bpe, "eos", False), ("wp", wordpiece, "sep", True))
    }
    calls = []
    real = packing_tokenize._batches
    monkeypatch.setattr(packing_tokenize, "_CHUNK_CHARS", 60)
    monkeypatch.setattr(packing_tokenize, "_batches", lambda t: calls.append(list(real(t))) or iter(calls[-1]))
    for name, tok, sep, ws in (("bpe", bpe, "eos", False), ("wp", wordpiece, "sep", True)):
        small = tokenize_arrays(texts, tok, separator=sep, cache=False, with_word_starts=ws)
        np.testing.assert_array_equal(small.ids, whole[name].ids)
        np.testing.assert_array_equal(small.offsets, whole[name].offsets)
        if ws:
            np.testing.assert_array_equal(small.word_starts, whole[name].word_starts)
    batches = calls[0]
    assert len(batches) > 3 and batches[0][0] == 0 and batches[-1][1] == len(texts)
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))  # consecutive, nothing skipped
    assert all(sum(len(t) for t in texts[s : e - 1]) < 60 for s, e in batches)  # a batch stops once over budget


def test_blocks_file_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("operation not permitted")

    monkeypatch.setattr(packing.os, "link", no_links)
    docs = _random_docs(np.random.default_rng(6), 20, 30)
    ds, acct = pack_blocks(docs, block_size=16, pad_id=1, path=tmp_path / "b.arrow")
    assert len(ds) == acct.blocks > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.arrow", "b.arrow.json"]


def test_tokens_stream_to_the_cache_a_batch_at_a_time(bpe, wordpiece, tmp_path, monkeypatch):
    """Encoded batches go straight to the cache files: the batches are never concatenated in memory
    (twice the corpus's ids), the tokens equal a direct encoding, and no temp file is left."""
    from lmadapt.data.packing import tokenize_arrays

    texts = [t * (i % 3 + 1) for i, t in enumerate(CORPUS)]
    monkeypatch.setattr(packing_tokenize, "_CHUNK", 3)

    def no_concat(*args):
        raise AssertionError("the encoded batches were concatenated in memory")

    monkeypatch.setattr(packing_tokenize, "_concat_parts", no_concat)
    for tok, sep, ws in ((bpe, "eos", False), (wordpiece, "sep", True)):
        got = tokenize_arrays(texts, tok, separator=sep, cache_dir=tmp_path / sep, with_word_starts=ws)
        assert isinstance(got.ids, np.memmap) and len(got) == len(texts)
        prefix = [tok.cls_token_id] if sep == "sep" else []
        suffix = [tok.eos_token_id if sep == "eos" else tok.sep_token_id]
        for i, text in enumerate(texts):
            want = prefix + tok(text, add_special_tokens=False)["input_ids"] + suffix
            assert got.ids[got.offsets[i] : got.offsets[i + 1]].tolist() == want
        if ws:
            assert len(got.word_starts) == len(got.ids) and got.word_starts[got.offsets[:-1]].all()
        entries = list((tmp_path / sep).iterdir())
        assert [p.name for p in entries] == [got.key]  # no temp folder beside the entry
        assert sorted(p.name for p in entries[0].iterdir()) == sorted(
            ["ids.npy", "offsets.npy", "meta.json"] + (["word_starts.npy"] if ws else [])
        )
        meta = json.loads((entries[0] / "meta.json").read_text())
        assert (meta["documents"], meta["tokens"]) == (len(texts), got.num_tokens)


def test_a_failed_tokenization_leaves_no_entry_and_an_unwritable_cache_still_tokenizes(bpe, tmp_path, monkeypatch):
    from lmadapt.data.packing import tokenize_arrays

    plain = tokenize_arrays(CORPUS, bpe, cache=False)
    real = packing_tokenize._encode_batches

    def dies_midway(*args):
        parts = real(*args)
        yield next(parts)
        raise KeyboardInterrupt

    monkeypatch.setattr(packing_tokenize, "_CHUNK", 2)
    monkeypatch.setattr(packing_tokenize, "_encode_batches", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        tokenize_arrays(CORPUS, bpe, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # neither an entry nor its temp folder
    monkeypatch.setattr(packing_tokenize, "_encode_batches", real)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the cache folder cannot be made under a file
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    got = tokenize_arrays(CORPUS, bpe, cache_dir=blocked / "cache")
    assert got.cache_path is None and not isinstance(got.ids, np.memmap)
    np.testing.assert_array_equal(got.ids, plain.ids)
    np.testing.assert_array_equal(got.offsets, plain.offsets)
    assert list((tmp_path / "tmp").iterdir()) == []  # the temp folder it used is gone


def test_a_spooled_source_tokenizes_like_its_list_reading_a_batch_at_a_time(bpe, tmp_path, monkeypatch):
    """Documents spooled to disk give the same cache key and tokens as the same texts in a list,
    in one process or several, and are read in batches, never all at once."""
    from lmadapt.data.packing import tokenize_arrays
    from lmadapt.data.spool import SpooledDocuments, SpoolWriter

    texts = [f"{i}: {t}" for i, t in enumerate(CORPUS * 6)]
    writer = SpoolWriter(tmp_path / "spool.arrow", "s")
    for i, t in enumerate(texts):
        writer.add(t, f"f:{i}")
    spooled = writer.close()
    monkeypatch.setattr(packing_tokenize, "_CHUNK", 4)
    asked = []
    real = SpooledDocuments.texts
    monkeypatch.setattr(
        SpooledDocuments, "texts", lambda self, s=0, e=None: asked.append((e or len(self)) - s) or real(self, s, e)
    )
    plain = tokenize_arrays(texts, bpe, cache=False)
    for num_proc in (None, 2):
        asked.clear()
        got = tokenize_arrays(spooled, bpe, cache=False, num_proc=num_proc)
        assert got.key == plain.key
        np.testing.assert_array_equal(got.ids, plain.ids)
        np.testing.assert_array_equal(got.offsets, plain.offsets)
        assert asked and max(asked) <= 16 < len(texts), asked  # batches of <= 4 x _CHUNK documents


@pytest.mark.parametrize("mode", ["document", "concat"])
def test_packing_a_mixture_gathers_a_slice_at_a_time(mode, tmp_path, monkeypatch):
    """The mixed, shuffled corpus is gathered from its sources as packing reads it, a few blocks at a
    time: the same blocks as packing the mixture built whole, without ever building it whole."""
    from lmadapt.data.mixing import mix_documents

    rng = np.random.default_rng(9)
    a, b = _random_docs(rng, 40, 70, word_starts=True), _random_docs(rng, 25, 70, word_starts=True)
    picks = {"a": np.concatenate([np.arange(40), [5, 5]]), "b": np.arange(25)[::-2]}
    whole = mix_documents({"a": a, "b": b}, picks, seed=3)
    eager = TokenizedDocs(np.asarray(whole.ids), whole.offsets, np.asarray(whole.word_starts))
    ref, ref_acct = pack_blocks(eager, block_size=16, pad_id=1, mode=mode)
    monkeypatch.setattr(packing, "_SLICE_TOKENS", 48)  # 3 blocks a slice
    sizes = []
    real = tokenized_docs.gather_documents
    monkeypatch.setattr(
        tokenized_docs,
        "gather_documents",
        lambda parts, p, d: sizes.append(sum(int(parts[i].lengths[j]) for i, j in zip(p, d))) or real(parts, p, d),
    )
    lazy = mix_documents({"a": a, "b": b}, picks, seed=3)
    got, acct = pack_blocks(lazy, block_size=16, pad_id=1, mode=mode, path=tmp_path / f"{mode}.arrow")
    assert acct == ref_acct and acct.tokens_dropped == 0
    for name in ("input_ids", "position_ids", "labels", "word_starts"):
        np.testing.assert_array_equal(col(got, name), col(ref, name), err_msg=name)
    longest = int(max(a.lengths.max(), b.lengths.max()))
    assert len(sizes) > 3 and max(sizes) <= 48 + 2 * longest < eager.num_tokens, sizes
