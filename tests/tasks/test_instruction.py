"""Instruction tuning: response-only labels, EOS, chat templates, errors, packing isolation, SFT, generation."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import FILLER, NAMES, one_thread, recipe, train, write_jsonl  # noqa: E402,F401
from helpers import tiny_bpe_tokenizer, tiny_llama  # noqa: E402

from lmadapt.config.tasks import InstructionConfig  # noqa: E402
from lmadapt.tasks import TASKS  # noqa: E402
from lmadapt.tasks.base import DataError, ReadReport  # noqa: E402
from lmadapt.tasks.conversations import IGNORE, Renderer  # noqa: E402
from lmadapt.tasks.instruction import SFTCollator, pack  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = TASKS["instruction"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tok():
    t = tiny_bpe_tokenizer()
    t.pad_token = t.eos_token  # what the stage does for decoder tokenizers: pad == eos
    return t


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_template_labels_only_the_response_and_eos(tok):
    r = Renderer(tok, InstructionConfig(template="plain"))
    ids, labels = r.encode([{"role": "user", "content": "copy: fox"}, {"role": "assistant", "content": "fox"}])
    prompt = _ids(tok, "### Instruction:\ncopy: fox\n\n### Response:\n")
    resp = _ids(tok, "fox")
    eos = tok.eos_token_id
    assert ids == prompt + resp + [eos]
    assert labels == [IGNORE] * len(prompt) + resp + [eos]
    assert r.prompt_ids([{"role": "user", "content": "copy: fox"}]) == prompt
    # a system message gets its own header; multi-turn: each turn with its header, every response + EOS
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    ids, labels = r.encode(msgs)
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE]
    assert tok.decode([ids[i] for i in trained]) == "b<|endoftext|>d<|endoftext|>"
    assert tok.decode(ids) == (
        "### System:\nbe brief\n\n### Instruction:\na\n\n### Response:\nb<|endoftext|>\n\n"
        "### Instruction:\nc\n\n### Response:\nd<|endoftext|>"
    )
    assert ids[: len(r.prompt_ids(msgs))] == r.prompt_ids(msgs)  # generation prompt = training prefix


def test_eos_stays_labelled_when_pad_is_eos(tmp_path, tok):
    assert tok.pad_token_id == tok.eos_token_id
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": "copy: fox", "response": "fox"}, {"prompt": "copy: the galaxy", "response": "the galaxy"}],
    )
    for packing in (False, True):
        cfg = recipe(
            tmp_path, "instruction", train=path, sections={"instruction": {"packing": packing, "template": "plain"}}
        )
        report = ReadReport()
        ds = TASK.encode(TASK.read(str(path), cfg, split="train", report=report), tok, {}, cfg, report)
        batch = TASK.collator(tok, cfg)([ds[i] for i in range(len(ds))])
        labels, ids = batch["labels"], batch["input_ids"]
        eos = tok.eos_token_id
        n_eos_labels = int((labels == eos).sum())
        assert n_eos_labels == 2  # one per response, padding excluded
        assert int((ids == eos).sum()) >= n_eos_labels
        assert batch["use_cache"] is False
        if packing:
            assert "attention_mask" not in batch and len(ds) == 1
            pos = batch["position_ids"][0].tolist()
            assert pos.count(0) == 2 and pos[0] == 0  # restarts per example
        else:
            assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
            short = int(batch["attention_mask"][0].sum())
            assert labels[0, short - 1] == eos and (labels[0, short:] == IGNORE).all()


def test_chat_template_multi_turn_labels(tok):
    tok.chat_template = CHATML
    r = Renderer(tok, InstructionConfig())
    assert r.chat
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "copy: fox"},
        {"role": "assistant", "content": "fox"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "dog"},
    ]
    ids, labels = r.encode(msgs)
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    runs.append(cur)
    assert [tok.decode(x) for x in runs] == ["fox<|im_end|>\n<|endoftext|>", "dog<|im_end|>\n<|endoftext|>"]
    prompt = r.prompt_ids(msgs)
    assert tok.decode(prompt).endswith("<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")
    assert ids[: len(prompt)] == prompt
    with pytest.raises(Exception, match="no chat template"):
        Renderer(tiny_bpe_tokenizer(), InstructionConfig(template="chat"))


@pytest.mark.parametrize(
    "record, message",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages': conversation has no assistant turn"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
            "field 'messages'[1]: empty assistant response",
        ),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "field 'messages'[0]: unknown role 'bot'"),
        ({"prompt": "hi", "response": ""}, "field 'response': empty response"),
        ({"prompt": "hi"}, "missing field 'response'"),
        ({"text": "hi"}, "missing field 'prompt'"),
    ],
)
def test_record_errors_name_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}, record])
    cfg = recipe(tmp_path, "instruction", train=path)
    with pytest.raises(DataError) as err:
        TASK.read(str(path), cfg, split="train", report=ReadReport())
    assert str(err.value).startswith(f"{path}:2: {message}")
    report = ReadReport()
    rows = TASK.read(
        str(path), recipe(tmp_path, "instruction", train=path, data={"on_error": "skip"}), split="train", report=report
    )
    assert len(rows) == 1 and report.skipped == 1 and report.examples == 1


def test_too_long_examples_error_or_are_cut_and_counted(tmp_path, tok):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"prompt": "copy: fox", "response": "fox"},
            {"prompt": "copy: " + "the court held " * 8, "response": "fox"},
            {"prompt": "copy: fox", "response": "the court held " * 8},
        ],
    )
    sec = {"instruction": {"template": "plain", "packing": False}}
    cfg = recipe(tmp_path, "instruction", train=path, sections=sec, max_length=40)
    ex = TASK.read(str(path), cfg, split="train", report=ReadReport())
    with pytest.raises(DataError, match=r"train.jsonl:2: example is \d+ tokens, more than model.max_length 40"):
        TASK.encode(ex, tok, {}, cfg, ReadReport())
    cfg = recipe(tmp_path, "instruction", train=path, sections=sec, data={"allow_truncation": True}, max_length=40)
    report = ReadReport()
    ds = TASK.encode(ex, tok, {}, cfg, report)
    assert report.truncated == 2 and report.skipped == 1  # row 2 lost its whole response
    assert len(ds) == 2 and len(ds[1]["input_ids"]) == 40


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_keeps_examples_separate(tok, attn):
    model = tiny_llama(len(tok), attn_implementation=attn)
    r = Renderer(tok, InstructionConfig(template="plain"))
    a = r.encode([{"role": "user", "content": "copy: fox"}, {"role": "assistant", "content": "fox"}])
    a2 = r.encode([{"role": "user", "content": "copy: the lazy dog"}, {"role": "assistant", "content": "the lazy dog"}])
    b = r.encode([{"role": "user", "content": "copy: moon"}, {"role": "assistant", "content": "moon"}])
    collate = SFTCollator(tok.pad_token_id)

    def logits_of_b(first):
        block = pack([first, b], max_length=256)
        assert len(block) == 1
        batch = collate(block)
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        return out[len(first[0]) : len(first[0]) + len(b[0])]

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b[0]])).logits[0]
    torch.testing.assert_close(logits_of_b(a), logits_of_b(a2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_of_b(a), alone, atol=1e-5, rtol=1e-5)
    # the test can fail: plain concatenation (one causal sequence) leaks A into B
    with torch.no_grad():
        leak = model(input_ids=torch.tensor([a[0] + b[0]])).logits[0, len(a[0]) :]
    assert not torch.allclose(leak, alone, atol=1e-3)


def test_pack_is_greedy_and_never_splits_an_example():
    rows = [([1] * 5, [IGNORE] * 5), ([2] * 4, [2] * 4), ([3] * 3, [3] * 3), ([4] * 8, [4] * 8)]
    blocks = pack(rows, max_length=9)
    assert [len(b["input_ids"]) for b in blocks] == [9, 3, 8]
    assert blocks[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        pack([([1] * 10, [1] * 10)], max_length=9)


def test_sft_learns_copy_and_generates(tmp_path, tok):
    torch.manual_seed(0)
    rng = random.Random(0)
    words = NAMES + FILLER
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": f"copy: {w}", "response": w} for w in (rng.choice(words) for _ in range(240))],
    )
    tok.save_pretrained(tmp_path / "model")
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    cfg = recipe(
        tmp_path,
        "instruction",
        train=path,
        max_length=128,
        sections={"instruction": {"max_new_tokens": 6, "eval_generate_max": 8}},
    )
    report = ReadReport()
    ex = TASK.read(str(path), cfg, split="train", report=report)
    model = TASK.load_model(str(tmp_path / "model"), {}, cfg)
    ds = TASK.encode(ex, tok, {}, cfg, report)
    assert len(ds) < len(ex) and set(ds.column_names) == {"input_ids", "labels", "position_ids"}  # packed
    dev = ex[:24]
    before = TASK.evaluate(model, tok, dev, {}, cfg)
    losses = train(model, tok, ds, TASK.collator(tok, cfg), tmp_path, steps=50, lr=3e-3, batch_size=4)
    after = TASK.evaluate(model, tok, dev, {}, cfg)
    assert losses[-1] < 0.6 * losses[0]
    assert after["response_loss"] < 0.6 * before["response_loss"] and after["perplexity"] < before["perplexity"]
    assert after["generated"] == 8 and 0.0 <= after["exact_match"] <= 1.0 and after["n"] == 24
    # predict: batched with left padding == one at a time; prompt and messages records
    records = [
        {"prompt": "copy: moon"},
        {"messages": [{"role": "user", "content": "copy: the galaxy"}]},
        {"prompt": "copy: bread", "response": "reference is ignored"},
    ]
    batched = TASK.predict(model, tok, records, cfg)
    single = [TASK.predict(model, tok, [rec], cfg)[0] for rec in records]
    assert [x["prediction"] for x in batched] == [x["prediction"] for x in single]
    assert all(len(_ids(tok, x["prediction"])) <= 6 for x in batched)
    assert batched[2]["response"] == "reference is ignored"
