import numpy as np
import pytest
import torch

from helpers import CORPUS, tiny_bert, tiny_bpe_tokenizer, tiny_gpt2, tiny_llama, tiny_wordpiece_tokenizer

from lmadapt.data.collators import CausalCollator, WholeWordMLMCollator, block_diagonal_mask, document_ids
from lmadapt.data.packing import build_blocks, pack_blocks

V = 400  # both tiny tokenizers have 400 tokens


@pytest.fixture(scope="module")
def wordpiece():
    return tiny_wordpiece_tokenizer()


def rows(ds):
    return [ds[i] for i in range(len(ds))]


def two_doc_block(first_ids, sep, pad_id, mode, *, b_len=9, block=24, cls=None):
    """One block holding document A (``first_ids``) then document B, then padding."""
    gen = torch.Generator().manual_seed(1)
    b = torch.randint(5, V, (b_len,), generator=gen).tolist()
    wrap = (lambda d: [cls] + d + [sep]) if cls is not None else (lambda d: d + [sep])
    docs = [wrap(list(first_ids)), wrap(b)]
    ds, acct = pack_blocks(docs, block_size=block, pad_id=pad_id, mode=mode)
    assert acct.blocks == 1 and acct.padding_tokens > 0
    a_len = len(docs[0])
    return rows(ds), slice(a_len, a_len + len(docs[1])), docs[1]


def a_variants(n=7):
    gen = torch.Generator().manual_seed(2)
    return torch.randint(5, V, (n,), generator=gen).tolist(), torch.randint(5, V, (n,), generator=gen).tolist()


def test_document_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert document_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3], [0] * 8]
    assert document_ids(torch.tensor([3, 4, 0])).tolist() == [0, 0, 1]


def test_causal_collator_outputs():
    docs = [[5, 6, 7, 0], [8, 9, 0]]
    doc_ds, _ = pack_blocks(docs, block_size=5, pad_id=1, mode="document")
    batch = CausalCollator("document")(rows(doc_ds))
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} and batch["use_cache"] is False
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 0, -100], [-100, 0, -100, -100, -100]]
    assert batch["input_ids"].dtype == torch.long
    assert "use_cache" not in CausalCollator("document", disable_kv_cache=False)(rows(doc_ds))

    cat_ds, _ = pack_blocks(docs, block_size=5, pad_id=1, mode="concat")
    batch = CausalCollator("concat")(rows(cat_ds))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 0, 8], [9, 0, -100, -100, -100]]
    # plain features without labels/is_padding work too (labels derived)
    plain = CausalCollator("document")([{"input_ids": [5, 6, 7], "position_ids": [0, 1, 0]}])
    assert plain["labels"].tolist() == [[-100, 6, -100]]
    with pytest.raises(ValueError, match="position_ids"):
        CausalCollator("document")([{"input_ids": [5, 6]}])
    with pytest.raises(ValueError, match="mode"):
        CausalCollator("packed")


CAUSAL = [(tiny_llama, "sdpa"), (tiny_llama, "eager"), (tiny_gpt2, "sdpa"), (tiny_gpt2, "eager")]


@pytest.mark.parametrize("build,impl", CAUSAL, ids=[f"{b.__name__}-{i}" for b, i in CAUSAL])
def test_causal_document_isolation(build, impl):
    model = build(V, impl)
    a1, a2 = a_variants()
    logits = {}
    for mode in ("document", "concat"):
        collate = CausalCollator(mode)
        outs = []
        for a in (a1, a2):
            feats, b_slice, b_doc = two_doc_block(a, sep=0, pad_id=1, mode=mode)
            batch = collate(feats)
            with torch.no_grad():
                out = model(**batch)
            assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all()
            outs.append(out.logits[0, b_slice])
        logits[mode] = outs
    # document mode: B does not see A ...
    torch.testing.assert_close(logits["document"][0], logits["document"][1], atol=1e-5, rtol=0)
    # ... and equals B run on its own (positions restart correctly)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b_doc])).logits[0]
    torch.testing.assert_close(logits["document"][0], alone, atol=1e-5, rtol=0)
    # concat mode: B does see A, so the check above can fail
    assert (logits["concat"][0] - logits["concat"][1]).abs().max() > 1e-3


def test_kv_cache_would_break_isolation():
    """Why the collator sends use_cache=False: with a cache transformers skips packed-sequence detection."""
    model = tiny_llama(V).train()
    a1, a2 = a_variants()
    diffs = {}
    for disable in (True, False):
        collate = CausalCollator("document", disable_kv_cache=disable)
        out = []
        for a in (a1, a2):
            feats, b_slice, _ = two_doc_block(a, sep=0, pad_id=1, mode="document")
            out.append(model(**collate(feats)).logits[0, b_slice].detach())
        diffs[disable] = (out[0] - out[1]).abs().max().item()
    assert diffs[True] < 1e-5 < 1e-3 < diffs[False]


def test_document_loss_equals_separate_documents():
    model = tiny_llama(V)
    docs = [[7, 8, 9, 10, 0], [11, 12, 13, 0], [14, 15, 16, 17, 18, 0]]
    ds, _ = pack_blocks(docs, block_size=16, pad_id=1, mode="document")
    with torch.no_grad():
        batch = CausalCollator("document")(rows(ds))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        lp = torch.log_softmax(logits[0, :-1], -1)
        tgt = batch["labels"][0, 1:]
        keep = tgt != -100
        packed = -lp[keep].gather(-1, tgt[keep, None]).sum()
        separate = 0.0
        for d in docs:
            lg = torch.log_softmax(model(input_ids=torch.tensor([d])).logits[0, :-1], -1)
            separate += -lg.gather(-1, torch.tensor(d[1:])[:, None]).sum()
    assert keep.sum() == sum(len(d) - 1 for d in docs)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("impl,mask_dtype", [("sdpa", torch.float32), ("eager", torch.float32), ("sdpa", torch.bool)])
def test_bert_document_isolation(wordpiece, impl, mask_dtype):
    model = tiny_bert(V, impl)
    a1, a2 = a_variants()
    cls, sep, pad = wordpiece.cls_token_id, wordpiece.sep_token_id, wordpiece.pad_token_id
    results = {}
    for mode in ("document", "concat"):
        collate = WholeWordMLMCollator(wordpiece, whole_word=False, mode=mode, seed=0, mask_dtype=mask_dtype)
        feats, b_slice, b_doc = two_doc_block(a1, sep=sep, pad_id=pad, mode=mode, cls=cls)
        batch = collate(feats)  # masks drawn once; then only A's tokens are changed
        ids2 = batch["input_ids"].clone()
        a_slice = slice(1, 1 + len(a2))
        ids2[0, a_slice] = torch.tensor(a2)
        with torch.no_grad():
            l1 = model(**batch).logits[0, b_slice]
            l2 = model(**{**batch, "input_ids": ids2}).logits[0, b_slice]
            alone = model(input_ids=batch["input_ids"][:, b_slice]).logits[0]
        results[mode] = (l1, l2, alone)
    l1, l2, alone = results["document"]
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=0)
    torch.testing.assert_close(l1, alone, atol=1e-5, rtol=0)
    l1, l2, _ = results["concat"]
    assert (l1 - l2).abs().max() > 1e-3


def test_mlm_document_batch_layout(wordpiece):
    ds, _ = build_blocks(CORPUS[:6], wordpiece, block_size=32, mode="document", objective="masked", cache=False)
    feats = rows(ds)
    batch = WholeWordMLMCollator(wordpiece, seed=0)(feats)
    B, L = len(feats), 32
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids"}
    mask = batch["attention_mask"]
    assert mask.shape == (B, 1, L, L) and mask.dtype == torch.float32
    seg = document_ids(batch["position_ids"])
    same = seg[:, None, :, None] == seg[:, None, None, :]
    assert (mask[same] == 0).all() and (mask[~same] == torch.finfo(torch.float32).min).all()
    half = WholeWordMLMCollator(wordpiece, seed=0, mask_dtype=torch.bfloat16)(feats)["attention_mask"]
    assert half.dtype == torch.bfloat16
    assert block_diagonal_mask(seg, torch.bool).dtype == torch.bool
    concat_ds, _ = build_blocks(CORPUS[:6], wordpiece, block_size=32, mode="concat", objective="masked", cache=False)
    cb = WholeWordMLMCollator(wordpiece, seed=0, mode="concat")(rows(concat_ds))
    assert set(cb) == {"input_ids", "labels", "attention_mask"} and cb["attention_mask"].shape == (len(concat_ds), L)
    pad = np.asarray(concat_ds[:]["is_padding"])
    assert (cb["attention_mask"].numpy() == 1 - pad).all()


def test_mlm_statistics(wordpiece):
    texts = CORPUS * 2
    ds, _ = build_blocks(texts, wordpiece, block_size=64, mode="document", objective="masked", cache=False)
    feats = rows(ds)
    ids = torch.as_tensor(np.asarray(ds[:]["input_ids"]))
    pad = torch.as_tensor(np.asarray(ds[:]["is_padding"])).bool()
    ws = torch.as_tensor(np.asarray(ds[:]["word_starts"])).bool()
    special = torch.isin(ids, torch.tensor(wordpiece.all_special_ids))
    eligible = ~pad & ~special
    word = ws.reshape(-1).long().cumsum(0).reshape(ids.shape)
    assert (word[eligible].bincount()[word[eligible].unique()] > 1).any()  # multi-piece words exist

    collate = WholeWordMLMCollator(wordpiece, mlm_probability=0.15, seed=123)
    n_sel = n_elig = n_mask = n_rand = n_keep = 0
    previous = None
    for _ in range(40):
        batch = collate(feats)
        sel = batch["labels"] != -100
        assert not (sel & ~eligible).any()  # special tokens and padding are never selected
        assert (batch["labels"][sel] == ids[sel]).all()
        assert (batch["input_ids"][~sel] == ids[~sel]).all()
        # whole words: every piece of a word shares the selection
        w, sv = word[eligible], sel[eligible].long()
        lo = torch.full((int(word.max()) + 1,), 2).scatter_reduce(0, w, sv, "amin")
        hi = torch.full((int(word.max()) + 1,), -1).scatter_reduce(0, w, sv, "amax")
        assert torch.equal(lo[w.unique()], hi[w.unique()])
        out = batch["input_ids"][sel]
        n_mask += int((out == wordpiece.mask_token_id).sum())
        n_keep += int((out == ids[sel]).sum())
        rand = out[(out != wordpiece.mask_token_id) & (out != ids[sel])]
        assert not torch.isin(rand, torch.tensor(wordpiece.all_special_ids)).any()
        n_rand += len(rand)
        n_sel += int(sel.sum())
        n_elig += int(eligible.sum())
        if previous is not None:
            assert not torch.equal(previous, sel)  # fresh masks each call
        previous = sel
    assert n_sel / n_elig == pytest.approx(0.15, abs=0.02)
    assert n_mask / n_sel == pytest.approx(0.8, abs=0.03)
    assert n_rand / n_sel == pytest.approx(0.1, abs=0.025)
    assert n_keep / n_sel == pytest.approx(0.1, abs=0.025)
    # reproducible with a seed
    a = WholeWordMLMCollator(wordpiece, seed=7)(feats)
    b = WholeWordMLMCollator(wordpiece, seed=7)(feats)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_mlm_never_empty_and_requires_word_starts(wordpiece):
    ds, _ = pack_blocks([[2, 50, 51, 3]], block_size=8, pad_id=0, mode="document")
    collate = WholeWordMLMCollator(wordpiece, mlm_probability=0.01, whole_word=False, seed=0)
    for _ in range(20):
        labels = collate(rows(ds))["labels"]
        assert (labels != -100).sum() >= 1
        assert set(torch.nonzero(labels[0] != -100).flatten().tolist()) <= {1, 2}
    with pytest.raises(ValueError, match="word_starts"):
        WholeWordMLMCollator(wordpiece)(rows(ds))
    with pytest.raises(ValueError, match="mask token"):
        WholeWordMLMCollator(tiny_bpe_tokenizer())


def test_mlm_loss_runs_with_bert(wordpiece):
    ds, _ = build_blocks(CORPUS[:8], wordpiece, block_size=32, mode="document", objective="masked", cache=False)
    model = tiny_bert(V, "eager").train()
    out = model(**WholeWordMLMCollator(wordpiece, seed=0)(rows(ds)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
