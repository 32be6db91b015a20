"""Reading labeled records (JSONL/CSV/parquet, .gz) with file:line errors, and stratified splits."""

import gzip
import json
from collections import Counter

import pytest

from lmadapt.tasks.base import DataError, Example, ReadReport
from lmadapt.tasks.labeled_io import read_records, stratified_split, stratified_subsample


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path, **kw):
    kw.setdefault("fields_required", ["text", "label"])
    kw.setdefault("text_fields", ["text"])
    return read_records(path, **kw)


def test_jsonl_origins_and_blank_lines(tmp_path):
    p = _jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": "a"}, "", {"text": "y", "label": "b"}])
    rows = read(p)
    assert [r.origin for r in rows] == [f"{p}:1", f"{p}:3"]
    assert rows[1].fields == {"text": "y", "label": "b"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text": "x"}, "field 'label' missing (keys: text)"),
        ({"text": "   ", "label": "a"}, "field 'text' is empty"),
        ({"text": 3, "label": "a"}, "field 'text' must be a string"),
        ({"text": "x", "label": None}, "field 'label' is null"),
        ('{"text": "x", "label": ', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_errors_name_file_line_field(tmp_path, bad, message):
    p = _jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": "a"}, bad])
    with pytest.raises(DataError) as err:
        read(p)
    assert str(err.value).startswith(f"{p}:2: ")
    assert message in str(err.value)


def test_skip_mode_counts_reasons(tmp_path):
    p = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "ok", "label": "a"},
            {"text": "x"},
            {"text": "", "label": "b"},
            "{oops",
            {"text": "fine", "label": "b"},
            {"text": "y"},
        ],
    )
    rep = ReadReport()
    rows = read(p, on_error="skip", report=rep)
    assert len(rows) == 2 and rep.examples == 2 and rep.skipped == 4
    assert rep.skip_reasons == {"field 'label' missing": 2, "field 'text' empty": 1, "malformed JSON": 1}
    assert rep.first_skips[0] == f"{p}:2: field 'label' missing"


def test_bad_utf8_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "\xff", "label": "a"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not UTF-8"):
        read(p)


def test_csv_gz_tsv_and_parquet(tmp_path):
    csv_text = 'text,label\n"multi\nline",a\nplain,b\n'
    (tmp_path / "d.csv").write_text(csv_text, encoding="utf-8")
    with gzip.open(tmp_path / "d.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write(csv_text)
    for name in ("d.csv", "d.csv.gz"):
        rows = read(tmp_path / name)
        assert [r.fields["label"] for r in rows] == ["a", "b"]
        assert [r.origin.rsplit(":", 1)[1] for r in rows] == ["2", "4"]  # a record's first line
    (tmp_path / "e.tsv").write_text("text\tlabel\nx\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"e\.tsv:2: field 'label'|e\.tsv:2:.*"):
        read(tmp_path / "e.tsv", text_fields=["text", "label"])
    (tmp_path / "f.csv").write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"f\.csv:2: field 'label' missing \(keys: text\)"):
        read(tmp_path / "f.csv")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p", "q"], "label": ["a", "b"]}), tmp_path / "d.parquet")
    rows = read(tmp_path / "d.parquet")
    assert [r.fields["text"] for r in rows] == ["p", "q"] and rows[1].origin.endswith("d.parquet:2")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        read(tmp_path / "d.txt")


def _examples(counts):
    out = []
    for lab, n in counts.items():
        for i in range(n):
            out.append(Example({"text": f"{lab}{i}", "label": lab}, f"f:{len(out) + 1}"))
    return out


def lab(e):
    return e.fields["label"]


def test_stratified_split_is_deterministic_and_proportional():
    ex = _examples({"a": 60, "b": 30, "c": 10, "d": 1})
    rest, dev = stratified_split(ex, lab, [0.2], seed=0)
    assert Counter(map(lab, dev)) == {"a": 12, "b": 6, "c": 2}  # a singleton class stays in train
    assert len(rest) + len(dev) == len(ex) and not {e.origin for e in rest} & {e.origin for e in dev}
    assert [e.origin for e in stratified_split(ex, lab, [0.2], seed=0)[1]] == [e.origin for e in dev]
    assert [e.origin for e in stratified_split(ex, lab, [0.2], seed=1)[1]] != [e.origin for e in dev]
    rest, dev, test = stratified_split(ex, lab, [0.1, 0.1], seed=0)
    assert len(dev) == len(test) == 10


def test_stratified_subsample_nested_and_covering():
    ex = _examples({"a": 300, "b": 100, "c": 5})
    s10 = stratified_subsample(ex, 10, lab, seed=3)
    s40 = stratified_subsample(ex, 40, lab, seed=3)
    assert {e.origin for e in s10} <= {e.origin for e in s40}
    assert set(map(lab, s10)) == {"a", "b", "c"}  # every class when n allows
    assert Counter(map(lab, s40))["a"] > Counter(map(lab, s40))["b"] > Counter(map(lab, s40))["c"]
    assert [e.origin for e in stratified_subsample(ex, 40, lab, seed=3)] == [e.origin for e in s40]
    assert [e.origin for e in stratified_subsample(ex, 40, lab, seed=4)] != [e.origin for e in s40]


def test_save_to_disk_split_folder_with_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "tags": datasets.List(datasets.ClassLabel(names=["a", "b", "c"])),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "bad", "meh"], "label": [1, 0, -1], "tags": [[0, 2], [], [1]]}, features=features
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    rows = read_records(
        tmp_path / "dd" / "train",
        fields_required=["text", "label"],
        text_fields=["text"],
        on_error="skip",
        report=(report := ReadReport()),
    )
    assert [(r.fields["text"], r.fields["label"], r.fields["tags"]) for r in rows] == [
        ("good", "pos", ["a", "c"]),
        ("bad", "neg", []),
    ]
    assert rows[1].origin == f"{tmp_path / 'dd' / 'train'}#1" and report.skipped == 1  # -1: no label
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits train; point at one split folder"):
        read_records(tmp_path / "dd", fields_required=["text"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain: not a datasets folder"):
        read_records(tmp_path / "plain", fields_required=["text"])
