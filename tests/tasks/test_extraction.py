"""Extraction task: spans <-> BIO over subwords, input errors, metrics, and a toy rule it must learn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import one_thread, marker_span_rows, recipe, train, write_jsonl  # noqa: E402, F401 (one_thread: a fixture, used by name)
from helpers import tiny_bert, tiny_bpe_tokenizer, tiny_llama, tiny_wordpiece_tokenizer  # noqa: E402

from lmadapt.tasks import TASKS  # noqa: E402
from lmadapt.tasks.base import DataError, ReadReport  # noqa: E402
from lmadapt.tasks.bio_tags import (  # noqa: E402
    check_spans,
    fill_first_subword_tags,
    spans_to_token_tags,
    spans_to_word_tags,
    tags_to_spans,
    token_tags_to_spans,
)
from lmadapt.tasks.extraction import IGNORE  # noqa: E402
from lmadapt.tasks.span_metrics import span_scores  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = TASKS["extraction"]
TEXT = "Patients in Boston with  chronic kidney disease saw Dr. Smith-Jones, 12% improved."
SPANS = [(12, 18, "LOC"), (25, 47, "DIS"), (52, 67, "PER"), (69, 72, "NUM")]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tok(request):
    return tiny_wordpiece_tokenizer() if request.param == "wordpiece" else tiny_bpe_tokenizer()


@pytest.mark.parametrize("mode", ["all", "first"])
def test_spans_bio_spans_round_trip_is_exact(tok, mode):
    assert [TEXT[s:e] for s, e, _ in SPANS] == ["Boston", "chronic kidney disease", "Dr. Smith-Jones", "12%"]
    enc = tok(TEXT, return_offsets_mapping=True, return_special_tokens_mask=True)
    tags = spans_to_token_tags(TEXT, enc["offset_mapping"], SPANS, enc["special_tokens_mask"], enc.word_ids(), mode)
    assert tags.count("B-DIS") == 1 and tags.count("B-PER") == 1
    if mode == "first":
        assert None in [t for t, s in zip(tags, enc["special_tokens_mask"]) if not s]  # continuation subwords
        # a model predicts something everywhere; unlabelled subwords must follow their word
        noisy = [None if s else (t or "B-NUM") for t, s in zip(tags, enc["special_tokens_mask"])]
        tags = fill_first_subword_tags(TEXT, enc["offset_mapping"], noisy, enc.word_ids())
    assert token_tags_to_spans(TEXT, enc["offset_mapping"], tags) == SPANS


def test_special_tokens_are_unlabelled_and_decoded_spans_are_stripped():
    tok = tiny_wordpiece_tokenizer()
    enc = tok("the fox", return_offsets_mapping=True, return_special_tokens_mask=True)
    tags = spans_to_token_tags("the fox", enc["offset_mapping"], [(4, 7, "X")], enc["special_tokens_mask"])
    assert tags[0] is None and tags[-1] is None  # [CLS], [SEP]
    # byte-level BPE offsets include the leading space ('Ġf' = (3, 5)); spans never do
    bpe = tiny_bpe_tokenizer()
    e2 = bpe("the fox", return_offsets_mapping=True)
    assert (3, 5) in [tuple(o) for o in e2["offset_mapping"]]
    tags = spans_to_token_tags("the fox", e2["offset_mapping"], [(4, 7, "X")])
    assert tags == ["O", "O", "B-X", "I-X", "I-X"]
    assert token_tags_to_spans("the fox", e2["offset_mapping"], tags) == [(4, 7, "X")]


def test_word_tag_records_become_char_spans_and_back():
    tokens = ["John", "Smith", "lives", "in", "New", "York", "."]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    text, spans, err = tags_to_spans(tokens, tags)
    assert err is None and text == "John Smith lives in New York ."
    assert [(text[s:e], lab) for s, e, lab in spans] == [("John Smith", "PER"), ("New York", "LOC")]
    assert spans_to_word_tags(tokens, spans) == tags
    # IOB1-style: an I- without a preceding B- opens a span
    _, spans2, _ = tags_to_spans(["a", "b"], ["I-X", "I-X"])
    assert spans2 == [(0, 3, "X")]
    assert tags_to_spans(["a"], ["B-X", "O"])[2] == "field 'tags' has 2 tags for 1 tokens"
    assert "not a BIO tag" in tags_to_spans(["a"], ["PER"])[2]


@pytest.mark.parametrize(
    "spans, message",
    [
        ([{"start": 4, "end": 40, "label": "X"}], "field 'spans'[0]: span [4, 40) is outside the text (7 chars)"),
        (
            [{"start": 0, "end": 3, "label": "X"}, {"start": 2, "end": 7, "label": "Y"}],
            "field 'spans'[1]: span [2, 7) 'e fox' overlaps 'spans'[0] [0, 3) 'the'",
        ),
        ([{"start": 3, "end": 3, "label": "X"}], "field 'spans'[0]: end 3 must be greater than start 3"),
        ([{"start": 0, "end": 3}], "field 'spans'[0]: missing 'label'"),
        ([{"start": 0, "end": 3, "label": "B-X"}], "field 'spans'[0]: label must be a plain"),
        ([{"start": 3, "end": 4, "label": "X"}], "field 'spans'[0]: span [3, 4) holds only whitespace"),
    ],
)
def test_span_errors_name_file_line_and_field(tmp_path, spans, message):
    path = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "the fox", "spans": []}, {"text": "the fox", "spans": spans}]
    )
    cfg = recipe(tmp_path, "extraction", train=path)
    with pytest.raises(DataError) as err:
        TASK.read(str(path), cfg, split="train", report=ReadReport())
    assert str(err.value).startswith(f"{path}:2: {message}")


def test_missing_fields_and_skip_mode(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "the fox", "spans": [{"start": 4, "end": 7, "label": "A"}]},
            {"text": "no spans field"},
            {"tokens": ["a"]},
            {"something": "else"},
            {"text": "the fox", "spans": [{"start": 4, "end": 9, "label": "A"}]},
        ],
    )
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field 'spans'"):
        TASK.read(str(path), recipe(tmp_path, "extraction", train=path), split="train", report=ReadReport())
    report = ReadReport()
    rows = TASK.read(
        str(path), recipe(tmp_path, "extraction", train=path, data={"on_error": "skip"}), split="train", report=report
    )
    assert len(rows) == 1 and report.examples == 1 and report.skipped == 4
    assert rows[0].fields["spans"] == [(4, 7, "A")] and rows[0].origin == f"{path}:1"
    assert check_spans("a  b ", [{"start": 0, "end": 5, "label": "X"}]) == ([(0, 4, "X")], None)  # stripped


def _wordpiece_setup(tmp_path, rows, **data):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    tok = tiny_wordpiece_tokenizer()
    cfg = recipe(tmp_path, "extraction", train=path, max_length=12, data=data)
    report = ReadReport()
    ex = TASK.read(str(path), cfg, split="train", report=report)
    return tok, cfg, ex, report


def test_long_texts_error_unless_truncation_allowed(tmp_path):
    long = "the court held that the contract was void and the bank raised rates over time"
    rows = [
        {"text": "the fox", "spans": [{"start": 4, "end": 7, "label": "A"}]},
        {
            "text": long,
            "spans": [{"start": 0, "end": 3, "label": "A"}, {"start": len(long) - 4, "end": len(long), "label": "A"}],
        },
    ]
    tok, cfg, ex, report = _wordpiece_setup(tmp_path, rows)
    space = TASK.label_space(ex, cfg)
    with pytest.raises(DataError, match=r"train.jsonl:2: text is \d+ tokens, more than model.max_length 12"):
        TASK.encode(ex, tok, space, cfg, report)
    tok, cfg, ex, report = _wordpiece_setup(tmp_path, rows, allow_truncation=True)
    ds = TASK.encode(ex, tok, space, cfg, report)
    assert report.truncated == 1 and len(ds[1]["input_ids"]) == 12
    labels = ds[1]["labels"]
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS] ... [SEP] kept
    assert labels.count(space["label2id"]["B-A"]) == 1  # the span past the cut is gone


def test_label_space_and_unseen_dev_label(tmp_path):
    tok, cfg, ex, _ = _wordpiece_setup(
        tmp_path, [{"text": "the fox", "spans": [{"start": 4, "end": 7, "label": "ANIMAL"}]}]
    )
    space = TASK.label_space(ex, cfg)
    assert space["tags"] == ["O", "B-ANIMAL", "I-ANIMAL"]
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "the dog", "spans": [{"start": 4, "end": 7, "label": "PET"}]}])
    with pytest.raises(DataError, match=r"dev.jsonl:1: dev span label 'PET' never occurs in the training data"):
        TASK.check_split(TASK.read(str(dev), cfg, split="dev", report=ReadReport()), space, "dev")


def test_span_scores_exact_partial_per_label():
    gold = [[(0, 5, "A"), (10, 15, "B")], [(0, 3, "A")]]
    pred = [[(0, 5, "A"), (11, 15, "B")], [(0, 3, "B")]]
    m = span_scores(gold, pred)
    assert m["span_precision"] == pytest.approx(1 / 3) and m["span_recall"] == pytest.approx(1 / 3)
    assert m["partial_precision"] == pytest.approx(2 / 3) and m["partial_recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["A"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["B"]["f1"] == 0.0
    assert span_scores([[]], [[]])["span_f1"] == 1.0


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_learns_marker_rule(tmp_path, arch):
    """The word after 'court' is a NAME: loss falls and span F1 rises from ~0 (encoder and decoder)."""
    torch.manual_seed(0)
    path = write_jsonl(tmp_path / "train.jsonl", marker_span_rows(160))
    dev_path = write_jsonl(tmp_path / "dev.jsonl", marker_span_rows(30, seed=1))
    if arch == "bert":
        tok = tiny_wordpiece_tokenizer(tmp_path / "model")
        tiny_bert(len(tok)).save_pretrained(tmp_path / "model")
    else:
        tok = tiny_bpe_tokenizer(tmp_path / "model")
        tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    cfg = recipe(tmp_path, "extraction", train=path)
    report = ReadReport()
    train_ex = TASK.read(str(path), cfg, split="train", report=report)
    dev = TASK.read(str(dev_path), cfg, split="dev", report=ReadReport())
    space = TASK.label_space(train_ex, cfg)
    TASK.check_split(dev, space, "dev")
    model = TASK.load_model(str(tmp_path / "model"), space, cfg)
    assert model.config.id2label[1] == "B-NAME"
    before = TASK.evaluate(model, tok, dev, space, cfg)
    losses = train(
        model, tok, TASK.encode(train_ex, tok, space, cfg, report), TASK.collator(tok, cfg), tmp_path, steps=40, lr=3e-3
    )
    after = TASK.evaluate(model, tok, dev, space, cfg)
    assert losses[-1] < 0.5 * losses[0]
    assert after["span_f1"] > 0.5 > before["span_f1"]
    assert after["n"] == 30 and "NAME" in after["per_class"]
    # predict: character spans (+ word tags for word-level records)
    text, (s, e) = "the court fox held", (10, 13)
    out = TASK.predict(model, tok, [{"text": text}, {"tokens": text.split()}], cfg)
    assert {"start": s, "end": e, "label": "NAME", "text": "fox"} in out[0]["spans"]
    assert out[1]["tags"][2] == "B-NAME" and out[1]["tokens"] == text.split()
