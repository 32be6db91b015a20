"""Corpus reading: formats, provenance, bad input, skip mode, dedup, held-out split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmadapt.config.data import CorpusConfig, SourceConfig
from lmadapt.data.sources import CorpusError, Document, read_corpus, read_source


def write(path: Path, data: str | bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def texts(docs: list[Document]) -> list[str]:
    return [d.text for d in docs]


def src(path, **kw) -> SourceConfig:
    return SourceConfig(path=str(path), **kw)


# ------------------------------------------------------------------ formats


def test_txt_split_modes(tmp_path):
    p = write(tmp_path / "notes.txt", "\ufeffFirst para\nstill first.\n\n\n  Second para \r\n\nthird\n")
    docs, st = read_source(src(p))
    assert texts(docs) == ["First para\nstill first.\n\n\n  Second para \r\n\nthird"]
    assert docs[0].origin == str(p) and docs[0].source == "notes" and st.files == 1

    docs, _ = read_source(src(p, split_docs="blank_line"))
    assert texts(docs) == ["First para\nstill first.", "Second para", "third"]
    assert [d.origin for d in docs] == [f"{p}:1", f"{p}:5", f"{p}:7"]

    docs, st = read_source(src(p, split_docs="line"))
    assert texts(docs) == ["First para", "still first.", "Second para", "third"]
    assert docs[2].origin == f"{p}:5"
    assert st.documents == 4 and st.chars == sum(len(t) for t in texts(docs))


RECORDS = [{"id": 1, "text": "alpha doc"}, {"id": 2, "text": "beta doc"}]


@pytest.mark.parametrize(
    "name,content,kw",
    [
        ("c.jsonl", jsonl(*RECORDS), {}),
        ("c.jsonl.gz", jsonl(*RECORDS), {}),
        ("c.json", json.dumps(RECORDS, indent=1), {}),
        ("c.json.gz", json.dumps(RECORDS), {}),
        ("c.json", json.dumps({"data": RECORDS}, indent=1), {}),  # {"data": [...]} wrapper
        ("c.json", jsonl(*RECORDS), {}),  # JSON Lines named .json
        ("c.jsonl", json.dumps(RECORDS), {}),  # JSON array named .jsonl
        ("c.csv", 'id,text\n1,alpha doc\n2,"beta doc"\n', {}),
        ("c.csv.gz", "\ufeffid,text\r\n1,alpha doc\r\n2,beta doc\r\n", {}),
        ("c.tsv", "id\ttext\n1\talpha doc\n2\tbeta doc\n", {}),
        ("c.txt.gz", "alpha doc\n\nbeta doc\n", {"split_docs": "blank_line"}),
        ("c.md", "alpha doc\nbeta doc\n", {"split_docs": "line"}),
        ("c.data", jsonl(*RECORDS), {"format": "jsonl"}),  # explicit format beats suffix
    ],
)
def test_formats(tmp_path, name, content, kw):
    p = write(tmp_path / name, content, gz=name.endswith(".gz"))
    docs, st = read_source(src(p, **kw))
    assert texts(docs) == ["alpha doc", "beta doc"]
    assert {d.source for d in docs} == {"c"} and st.name == "c"
    assert all(d.origin.startswith(str(p)) for d in docs)


def test_origin_lines_json_and_csv(tmp_path):
    p = write(tmp_path / "a.json", '[\n {"text": "one"},\n\n {"text": "two"}\n]\n')
    assert [d.origin for d in read_source(src(p))[0]] == [f"{p}:2", f"{p}:4"]
    q = write(tmp_path / "b.csv", 'text,n\n"multi\nline",1\n\nlast,2\n')
    docs, _ = read_source(src(q))
    assert texts(docs) == ["multi\nline", "last"]
    assert [d.origin for d in docs] == [f"{q}:2", f"{q}:5"]


def test_long_csv_field(tmp_path):
    long = "w " * 100_000  # above the csv module's default 128 KiB field limit
    p = write(tmp_path / "long.csv", f"text\n{long}\n")
    assert len(read_source(src(p))[0][0].text) == len(long.strip())


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "pq.parquet"
    pq.write_table(pa.table({"body": ["a doc", None, "c doc"], "n": [1, 2, 3]}), p)
    docs, st = read_source(src(p, text_field="body"), on_error="skip")
    assert texts(docs) == ["a doc", "c doc"]
    assert [d.origin for d in docs] == [f"{p}#0", f"{p}#2"]
    assert st.skip_reasons == {"null text": 1} and st.first_skips == [f"{p}#1: field 'body' is null"]
    with pytest.raises(CorpusError, match=r"pq\.parquet: no column 'text' \(has: body, n\)"):
        read_source(src(p))
    with pytest.raises(CorpusError, match="column 'n' holds int64"):
        read_source(src(p, text_field="n"))
    bad = write(tmp_path / "fake.parquet", "not parquet at all")
    with pytest.raises(CorpusError, match="fake.parquet: not a readable parquet file"):
        read_source(src(bad))


def test_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["d one", "d two"], "label": [0, 1]})
    ds.save_to_disk(str(tmp_path / "single"))
    docs, st = read_source(src(tmp_path / "single"))
    assert texts(docs) == ["d one", "d two"] and st.name == "single"
    assert docs[1].origin == f"{tmp_path / 'single'}#1"

    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0]).map(lambda r: {"text": "held"})})
    dd.save_to_disk(str(tmp_path / "dd"))
    docs, _ = read_source(src(tmp_path / "dd"))
    assert texts(docs) == ["d one", "d two"] and docs[0].origin == f"{tmp_path / 'dd' / 'train'}#0"

    # inside a directory of text files, a datasets folder is read as a whole, not as its json files
    write(tmp_path / "mixed" / "a.txt", "plain text")
    ds.save_to_disk(str(tmp_path / "mixed" / "hf"))
    assert texts(read_source(src(tmp_path / "mixed"))[0]) == ["plain text", "d one", "d two"]

    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(CorpusError, match=r"nosplit: DatasetDict with splits \['a', 'b'\] and no 'train'"):
        read_source(src(tmp_path / "nosplit"))


def test_directory_recursion_glob_and_pattern(tmp_path):
    root = tmp_path / "computing"
    write(root / "b.txt", "bee")
    write(root / "a" / "z.md", "zed")
    write(root / "a" / "deep" / "x.jsonl.gz", jsonl({"text": "gz record"}), gz=True)
    write(root / "a" / "deep" / "y.csv", "text\ncsv row\n")
    write(root / "notes.py", "print('not a corpus file')")
    write(root / ".hidden" / "h.txt", "hidden")
    docs, st = read_source(src(root))
    assert texts(docs) == ["gz record", "csv row", "zed", "bee"]  # sorted paths: a/deep/..., a/z.md, b.txt
    assert st.name == "computing" and st.files == 4
    assert docs[0].origin == f"{root / 'a' / 'deep' / 'x.jsonl.gz'}:1"

    assert texts(read_source(src(root, glob="**/*.md"))[0]) == ["zed"]
    assert texts(read_source(src(root, glob="*.txt"))[0]) == ["bee"]  # not recursive
    docs, st = read_source(src(f"{root}/**/*.txt"))
    assert texts(docs) == ["bee"] and st.name == "computing"
    with pytest.raises(CorpusError, match=r"nothing-here-\*\.txt: no readable files match"):
        read_source(src(tmp_path / "nothing-here-*.txt"))
    with pytest.raises(CorpusError, match="no readable files match glob"):
        read_source(src(root, glob="*.rst"))


# ------------------------------------------------------------------ bad input

BAD = [
    # name, bytes, (gz), split_docs, expected fragments (after the file name)
    ("bad.jsonl", jsonl({"text": "ok"}) + '{"text": "x",\n', False, "file", [":2:", "malformed JSON", "column"]),
    (
        "miss.jsonl",
        jsonl({"text": "ok"}, {"Text": "b", "id": 3}),
        False,
        "file",
        [":2:", "field 'text' missing", "(has: Text, id)", "did you mean text_field: Text"],
    ),
    ("num.jsonl", jsonl({"text": 5}), False, "file", [":1:", "field 'text' is int"]),
    ("null.jsonl", jsonl({"text": "a"}, {"text": None}), False, "file", [":2:", "is null"]),
    ("empty.jsonl", jsonl({"text": "a"}, {"text": "  "}), False, "file", [":2:", "field 'text' is empty"]),
    ("list.jsonl", "[1, 2]\n", False, "file", [":1:", "expected a JSON object with field 'text', got int"]),
    (
        "utf.jsonl",
        jsonl({"text": "a"}, {"text": "b"}).encode() + b'{"text": "caf\xe9"}\n',
        False,
        "file",
        [":3:", "invalid UTF-8: byte 0xe9 at byte offset 41 (byte 14 of the line)"],
    ),
    (
        "utf.json",
        b'[{"text": "a"},\n {"text": "caf\xff"}]',
        False,
        "file",
        [":2:", "invalid UTF-8: byte 0xff at byte offset 30"],
    ),
    ("bad.json", '[{"text": "a"},\n {"text": }]', False, "file", [":2:", "malformed JSON"]),
    (
        "utf.txt",
        b"good para\n\nbad \xc3( line\nmore\n",
        False,
        "blank_line",
        [":3:", "invalid UTF-8: byte 0xc3 at byte offset 15", "paragraph starting at line 3"],
    ),
    ("utf2.txt", b"ok\nok\n\x80\n", False, "file", [":3:", "byte 0x80 at byte offset 6"]),
    ("bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", False, "file", ["binary file"]),
    ("u16.txt", "hello".encode("utf-16"), False, "file", ["UTF-16"]),
    (
        "trunc.jsonl.gz",
        gzip.compress(jsonl(*[{"text": f"r{i}"} for i in range(2000)]).encode())[:-30],
        None,
        "file",
        ["corrupt gzip file"],
    ),
    ("nogz.txt.gz", "plain, not gzip", False, "file", ["corrupt gzip file"]),
    ("nofield.csv", "id,body\n1,x\n", False, "file", [":1:", "CSV header has no column 'text'", "id, body"]),
    ("short.csv", "id,text\n1,x\n2\n", False, "file", [":3:", "CSV row has 1 fields, the header has 2"]),
    ("blank.txt", "   \n\n", False, "file", ["no documents", "1 shorter than min_chars=1"]),
    ("nothing.jsonl", "\n\n", False, "file", ["has no documents"]),
    ("what.xyz", "text", False, "file", ["cannot tell the format"]),
]


@pytest.mark.parametrize("name,data,gz,split,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_and_line(tmp_path, name, data, gz, split, fragments):
    p = write(tmp_path / name, data, gz=bool(gz))
    with pytest.raises(CorpusError) as info:
        read_source(src(p, split_docs=split))
    msg = str(info.value)
    assert msg.startswith(str(p)), msg
    for frag in fragments:
        assert frag in msg, msg


def test_missing_file_suggests_neighbour(tmp_path):
    write(tmp_path / "computing.jsonl", jsonl({"text": "x"}))
    with pytest.raises(
        CorpusError, match=r"computng\.jsonl: no such file or directory; did you mean .*computing\.jsonl"
    ):
        read_source(src(tmp_path / "computng.jsonl"))


def test_skip_mode_counts_and_keeps_good(tmp_path):
    lines = [
        json.dumps({"text": "good one"}),
        "{broken",
        json.dumps({"body": "x"}),
        json.dumps({"text": ""}),
        json.dumps({"text": 3}),
        "",
        json.dumps({"text": "good two"}),
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n' + jsonl({"text": "good three"}).encode()
    p = write(tmp_path / "mixed.jsonl", raw)
    docs, st = read_source(src(p), on_error="skip")
    assert texts(docs) == ["good one", "good two", "good three"]
    assert [d.origin for d in docs] == [f"{p}:1", f"{p}:7", f"{p}:9"]
    assert st.skip_reasons == {
        "malformed JSON": 1,
        "missing field 'text'": 1,
        "empty text": 1,
        "text not a string": 1,
        "invalid UTF-8": 1,
    }
    assert st.skipped == 5 and st.documents == 3
    assert st.first_skips[0].startswith(f"{p}:2: malformed JSON") and st.first_skips[-1].startswith(f"{p}:8:")

    # record-level problems in CSV and paragraphs are skipped too; one bad line costs one paragraph
    q = write(tmp_path / "m.txt", b"a\n\nb \xff\nb2\n\nc\n")
    docs, st = read_source(src(q, split_docs="blank_line"), on_error="skip")
    assert texts(docs) == ["a", "c"] and st.skip_reasons == {"invalid UTF-8": 1}
    r = write(tmp_path / "m.csv", b"text,n\nok,1\nbad \xfe,2\nshort\nfine,3\n")
    docs, st = read_source(src(r), on_error="skip")
    assert texts(docs) == ["ok", "fine"]
    assert st.skip_reasons == {"invalid UTF-8": 1, "wrong field count": 1}

    # file-level problems still raise in skip mode
    b = write(tmp_path / "d" / "bin.txt", b"\x00\x01\x02")
    write(tmp_path / "d" / "ok.txt", "fine")
    with pytest.raises(CorpusError, match="bin.txt: binary file"):
        read_source(src(tmp_path / "d"), on_error="skip")
    with pytest.raises(CorpusError, match="no documents.*2 record"):
        read_source(src(write(tmp_path / "allbad.jsonl", "{\n[\n")), on_error="skip")
    assert b.exists()


def test_first_skips_capped(tmp_path):
    p = write(tmp_path / "many.jsonl", "{x\n" * 25 + jsonl({"text": "ok"}))
    docs, st = read_source(src(p), on_error="skip")
    assert st.skipped == 25 and len(st.first_skips) == 10 and len(docs) == 1


def test_min_chars_counts_too_short(tmp_path):
    p = write(tmp_path / "s.txt", "tiny\nlong enough line\nab\n")
    docs, st = read_source(src(p, split_docs="line"), min_chars=5)
    assert texts(docs) == ["long enough line"] and st.too_short == 2 and st.skipped == 0


# ------------------------------------------------------------------ corpus: names, dedup, held-out


def test_name_clash_names_both_paths(tmp_path):
    a = write(tmp_path / "x" / "computing.jsonl", jsonl({"text": "a"}))
    b = write(tmp_path / "y" / "computing.txt", "b")
    with pytest.raises(CorpusError, match=rf"'computing' is used by both {a} and {b}"):
        read_corpus(CorpusConfig(sources=[src(a), src(b)]))
    corpus = read_corpus(CorpusConfig(sources=[src(a), src(b, name="other")]))
    assert list(corpus.train) == ["computing", "other"]
    with pytest.raises(CorpusError, match="used by both"):
        read_corpus(CorpusConfig(sources=[src(a)], eval_sources=[src(a), src(b)]))
    # A training source and a held-out set may share a name (a corpus and its held-out part).
    corpus = read_corpus(CorpusConfig(sources=[src(a)], eval_sources=[src(b)]))
    assert list(corpus.train) == ["computing"] and list(corpus.eval) == ["computing"]
    assert corpus.summary()["sources"]["heldout:computing"]["role"] == "eval"


def test_dedup_across_sources_and_eval_leak(tmp_path):
    a = write(tmp_path / "a.jsonl", jsonl({"text": "same"}, {"text": " same \n"}, {"text": "a only"}))
    b = write(tmp_path / "b.txt", "same\nb only\na only\n")
    e = write(tmp_path / "ev.txt", "b only\nfresh\nfresh\n")
    cfg = CorpusConfig(sources=[src(a), src(b, split_docs="line")], eval_sources=[src(e, split_docs="line")])
    corpus = read_corpus(cfg)
    assert texts(corpus.train["a"]) == ["same", "a only"] and corpus.stats["a"].duplicates_removed == 1
    assert texts(corpus.train["b"]) == ["b only"] and corpus.stats["b"].duplicates_removed == 2
    assert texts(corpus.eval["ev"]) == ["fresh"]
    assert corpus.leaked_into_eval_removed == {"ev": 1} and corpus.stats["heldout:ev"].duplicates_removed == 1
    s = corpus.summary()
    json.dumps(s)
    assert s["totals"]["duplicates_removed"] == 4 and s["totals"]["leaked_into_eval_removed"] == 1
    assert s["totals"]["train_documents"] == 3 and s["sources"]["heldout:ev"]["role"] == "eval"
    assert corpus.stats["b"].documents == 1 and corpus.stats["b"].chars == len("b only")

    no = read_corpus(CorpusConfig(sources=[src(a), src(b, split_docs="line")], dedup=False))
    assert len(no.train["a"]) == 3 and no.stats["a"].duplicates_removed == 0
    with pytest.raises(CorpusError, match="c.md: all 1 documents of 'c' duplicate"):
        read_corpus(CorpusConfig(sources=[src(b, split_docs="line"), src(write(tmp_path / "c.md", "same"))]))


def test_eval_fraction_split_is_stable_disjoint_and_order_free(tmp_path):
    lines = [f"document number {i}" for i in range(200)]
    p = write(tmp_path / "dom.txt", "\n".join(lines))
    q = write(tmp_path / "rev.txt", "\n".join(reversed(lines)))
    c1 = read_corpus(CorpusConfig(sources=[src(p, split_docs="line")], eval_fraction=0.2))
    c2 = read_corpus(CorpusConfig(sources=[src(p, split_docs="line")], eval_fraction=0.2))
    c3 = read_corpus(CorpusConfig(sources=[src(q, split_docs="line")], eval_fraction=0.2))
    train, held = set(texts(c1.train["dom"])), set(texts(c1.eval["dom"]))
    assert list(c1.eval) == ["dom"] and not train & held and train | held == set(lines)
    assert 15 <= len(held) <= 65  # ~20% of 200
    assert texts(c1.eval["dom"]) == texts(c2.eval["dom"]) and set(texts(c3.eval["rev"])) == held
    assert c1.summary()["sources"]["dom"]["heldout_documents"] == len(held)

    tiny = write(tmp_path / "tiny.txt", "one\ntwo\n")  # a small source still gets one eval document
    c = read_corpus(CorpusConfig(sources=[src(tiny, split_docs="line")], eval_fraction=0.01))
    assert len(c.train["tiny"]) == 1 and len(c.eval["tiny"]) == 1


def test_empty_corpus_config():
    with pytest.raises(CorpusError, match="no training sources"):
        read_corpus(CorpusConfig())


def _same_corpus(a, b):
    for part in ("train", "eval"):
        x, y = getattr(a, part), getattr(b, part)
        assert list(x) == list(y)
        for name in x:
            assert [(d.text, d.source, d.origin) for d in x[name]] == [(d.text, d.source, d.origin) for d in y[name]]
    assert a.summary() == b.summary() and a.leaked_into_eval_removed == b.leaked_into_eval_removed


def test_a_spooled_corpus_equals_the_one_in_memory_without_holding_its_texts(tmp_path):
    """With spool_dir, every source is written to an Arrow file as it is read: the same documents,
    origins, dedup, held-out split and stats as the lists in memory."""
    from lmadapt.data.spool import SpooledDocuments

    a = write(tmp_path / "a.jsonl", jsonl({"text": "same"}, {"text": " same \n"}, {"text": "a only"}))
    b = write(tmp_path / "b.txt", "same\nb only\na only\n")
    e = write(tmp_path / "ev.txt", "b only\nfresh\nfresh\n")
    many = write(tmp_path / "dom.txt", "\n".join(f"document number {i} " + "x" * (i % 7) for i in range(300)))
    configs = [
        CorpusConfig(sources=[src(a), src(b, split_docs="line")], eval_sources=[src(e, split_docs="line")]),
        CorpusConfig(sources=[src(a), src(b, split_docs="line")], dedup=False),
        CorpusConfig(sources=[src(many, split_docs="line"), src(a)], eval_fraction=0.2),
    ]
    for k, cfg in enumerate(configs):
        spooled = read_corpus(cfg, spool_dir=tmp_path / f"spool{k}")
        _same_corpus(spooled, read_corpus(cfg))
        assert all(isinstance(d, SpooledDocuments) for d in [*spooled.train.values(), *spooled.eval.values()])
        assert not [p for p in (tmp_path / f"spool{k}").iterdir() if p.suffix != ".arrow"]  # no temp file left
    held = read_corpus(configs[2], spool_dir=tmp_path / "again").train["dom"]
    plain = read_corpus(configs[2]).train["dom"]
    assert held[-1] == plain[-1] and held[3] == plain[3]
    assert [d.text for d in held[10:20:3]] == [d.text for d in plain[10:20:3]]
    assert held.texts(5, 9) == [d.text for d in plain[5:9]]
    assert held.char_lengths().tolist() == [len(d.text) for d in plain]


def test_a_bad_record_leaves_no_spool_file(tmp_path):
    bad = write(tmp_path / "bad.jsonl", jsonl({"text": "fine"}) + "{not json\n")
    with pytest.raises(CorpusError, match="bad.jsonl:2"):
        read_corpus(CorpusConfig(sources=[src(bad)]), spool_dir=tmp_path / "spool")
    assert list((tmp_path / "spool").iterdir()) == []
