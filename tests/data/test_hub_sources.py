"""Hub datasets as corpus sources (``format: hub``) and ``max_documents``.

No test reaches the hub: ``datasets.load_dataset`` resolves a local dataset repo folder (data files
named by split, configurations in the README's YAML) the way it resolves a hub repo, so these tests
run the same reading code; the hub itself is only asked for in offline mode, to check the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmadapt.config.base import ConfigError
from lmadapt.config.data import CorpusConfig, SourceConfig
from lmadapt.config.pretrain import check_source_paths
from lmadapt.data.sources import CorpusError, read_corpus, read_source

datasets = pytest.importorskip("datasets")


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A dataset repo laid out like one on the hub: two configurations, train/validation splits."""
    root = tmp_path / "owner_corpus"
    _jsonl(root / "en" / "train-00000-of-00001.jsonl", [{"text": f"english doc {i}", "n": i} for i in range(7)])
    _jsonl(root / "en" / "validation-00000-of-00001.jsonl", [{"text": f"english held {i}", "n": i} for i in range(3)])
    _jsonl(root / "de" / "train-00000-of-00001.jsonl", [{"text": f"deutsches dok {i}", "n": i} for i in range(4)])
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: en/train-*\n"
        "  - split: validation\n    path: en/validation-*\n  default: true\n"
        "- config_name: de\n  data_files:\n  - split: train\n    path: de/train-*\n---\n",
        encoding="utf-8",
    )
    return root


def hub(path, **kw) -> SourceConfig:
    return SourceConfig(path=str(path), format="hub", **kw)


@pytest.mark.parametrize("streaming", [False, True])
def test_reads_the_split_and_subset_asked_for_with_origins(repo, streaming):
    docs, st = read_source(hub(repo, streaming=streaming))
    assert [d.text for d in docs] == [f"english doc {i}" for i in range(7)]
    assert docs[2].origin == f"hub:{repo}:train#2" and st.name == "owner_corpus" and st.capped_at is None

    docs, _ = read_source(hub(repo, split="validation", streaming=streaming))
    assert [d.text for d in docs] == [f"english held {i}" for i in range(3)]

    docs, st = read_source(hub(repo, subset="de", streaming=streaming))
    assert [d.text for d in docs] == [f"deutsches dok {i}" for i in range(4)]
    assert docs[0].origin == f"hub:{repo}[de]:train#0" and st.name == "owner_corpus-de"


def test_max_documents_stops_reading_and_is_recorded(repo, tmp_path):
    docs, st = read_source(hub(repo, streaming=True, max_documents=3))
    assert [d.text for d in docs] == ["english doc 0", "english doc 1", "english doc 2"] and st.capped_at == 3
    docs, st = read_source(hub(repo, max_documents=8))  # fewer documents than the cap
    assert len(docs) == 7 and st.capped_at is None

    # any source: the rest is never read (a malformed line after the cap raises nothing)
    p = tmp_path / "local.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{not json\n', encoding="utf-8")
    docs, st = read_source(SourceConfig(path=str(p), max_documents=2))
    assert [d.text for d in docs] == ["a", "b"] and st.capped_at == 2
    with pytest.raises(CorpusError, match="local.jsonl:3"):
        read_source(SourceConfig(path=str(p), max_documents=3))

    corpus = read_corpus(CorpusConfig(sources=[hub(repo, max_documents=4)]))
    assert corpus.summary()["sources"]["owner_corpus"]["capped_at"] == 4


def test_a_hub_corpus_spools_like_any_other(repo, tmp_path):
    cfg = CorpusConfig(sources=[hub(repo, streaming=True)], eval_sources=[hub(repo, split="validation", name="held")])
    in_memory = read_corpus(cfg)
    spooled = read_corpus(cfg, spool_dir=tmp_path / "spool")
    for part in ("train", "eval"):
        a, b = getattr(in_memory, part), getattr(spooled, part)
        assert {n: [(d.text, d.origin) for d in docs] for n, docs in a.items()} == {
            n: [(d.text, d.origin) for d in docs] for n, docs in b.items()
        }
    assert in_memory.summary() == spooled.summary()


def test_bad_hub_input_names_the_source(repo, tmp_path, monkeypatch):
    with pytest.raises(CorpusError, match=rf"hub:{repo}:train: no column 'body' \(has: text, n\)"):
        read_source(hub(repo, text_field="body"))
    with pytest.raises(CorpusError, match=rf"hub:{repo}:test: cannot load the dataset .*test"):
        read_source(hub(repo, split="test"))
    with pytest.raises(CorpusError, match=rf"hub:{repo}\[fr\]:train: cannot load the dataset"):
        read_source(hub(repo, subset="fr"))

    # a record whose text is not a string: file-level rules as for local files (raise or skip, counted)
    _jsonl(tmp_path / "mixed" / "train.jsonl", [{"text": "fine"}, {"text": None}, {"text": "also fine"}])
    with pytest.raises(CorpusError, match=r"hub:.*mixed:train#1: .*text"):
        read_source(hub(tmp_path / "mixed"))
    docs, st = read_source(hub(tmp_path / "mixed"), on_error="skip")
    assert [d.text for d in docs] == ["fine", "also fine"] and st.skipped == 1

    # the hub itself, unreachable (offline): a message naming the dataset and what to do, at once
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        CorpusError,
        match=r"hub:nosuchowner/nosuchcorpus\[en\]:train: cannot load the dataset "
        r"\(ConnectionError.*download it once where the hub is reachable",
    ):
        read_source(hub("nosuchowner/nosuchcorpus", subset="en"))


def test_recipe_checks_for_hub_sources(repo):
    # hub-only keys on a local file, and split on a plain file format, are recipe errors
    with pytest.raises(ConfigError, match="subset: only for a hub dataset"):
        SourceConfig(path="c.jsonl", subset="en")
    with pytest.raises(ConfigError, match="streaming: only for a hub dataset"):
        SourceConfig(path="c.jsonl", streaming=True)
    with pytest.raises(ConfigError, match="split: only for a hub dataset or a datasets folder"):
        SourceConfig(path="c.jsonl", format="jsonl", split="train")
    with pytest.raises(ConfigError, match="max_documents: must be at least 1"):
        SourceConfig(path="c.jsonl", max_documents=0)
    # a hub id need not exist locally; a malformed one, or a missing local file, is refused up front
    check_source_paths([hub("allenai/c4", subset="en"), hub("wikitext"), hub(repo)], "data.sources")
    with pytest.raises(ConfigError, match=r"data.sources\[0\].path: 'not a/hub id' is neither"):
        check_source_paths([hub("not a/hub id")], "data.sources")
    with pytest.raises(ConfigError, match="file not found"):
        check_source_paths([SourceConfig(path="allenai/c4")], "data.sources")


def test_split_of_a_saved_datasetdict(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["t one", "t two"]})
    datasets.DatasetDict({"a": ds, "b": ds.map(lambda r: {"text": r["text"].upper()})}).save_to_disk(
        str(tmp_path / "dd")
    )
    docs, _ = read_source(SourceConfig(path=str(tmp_path / "dd"), split="b"))
    assert [d.text for d in docs] == ["T ONE", "T TWO"] and docs[0].origin == f"{tmp_path / 'dd' / 'b'}#0"
    with pytest.raises(CorpusError, match=r"dd: no split 'c' \(splits: a, b\)"):
        read_source(SourceConfig(path=str(tmp_path / "dd"), split="c"))
    (tmp_path / "plain.txt").write_text("x", encoding="utf-8")
    with pytest.raises(CorpusError, match="split: 'a' applies to datasets folders and hub datasets"):
        read_source(SourceConfig(path=str(tmp_path / "plain.txt"), split="a"))


def test_a_hub_path_is_the_same_source_as_its_spelled_out_keys(repo):
    short = SourceConfig(path=f"hub:{repo}[de]:train")
    assert (short.format, short.path, short.subset, short.split) == ("hub", str(repo), "de", "train")
    a, b = read_source(short)[0], read_source(hub(repo, subset="de"))[0]
    assert [(d.text, d.origin) for d in a] == [(d.text, d.origin) for d in b]
    assert SourceConfig(path=f"hub:{repo}", split="validation").split == "validation"  # the key fills a gap
    assert SourceConfig(path="hub:owner/name@v1.0").revision == "v1.0"
    with pytest.raises(ConfigError, match=r"subset: 'en' contradicts the path 'hub:owner/name\[de\]'"):
        SourceConfig(path="hub:owner/name[de]", subset="en")
    with pytest.raises(ConfigError, match="format: 'jsonl' does not go with a hub: path"):
        SourceConfig(path="hub:owner/name", format="jsonl")
    with pytest.raises(ConfigError, match="path: 'hub:owner/name\\[de' : expected|expected hub:owner/name"):
        SourceConfig(path="hub:owner/name[de")


def test_evaluate_reads_a_hub_split(repo, tmp_path):
    """`lmadapt evaluate MODEL --data hub:...` (any corpus argument takes a hub path)."""
    from helpers import tiny_bpe_tokenizer, tiny_llama
    from lmadapt.stages.evaluate import evaluate_model

    tok = tiny_bpe_tokenizer(tmp_path / "model")
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    (repo / "en" / "validation-00000-of-00001.jsonl").unlink()
    _jsonl(
        repo / "en" / "validation-00000-of-00001.jsonl", [{"text": "The quick brown fox jumps over the lazy dog."}] * 3
    )
    _jsonl(tmp_path / "same.jsonl", [{"text": "The quick brown fox jumps over the lazy dog."}] * 3)
    res = evaluate_model(
        str(tmp_path / "model"), [f"hub:{repo}:validation", str(tmp_path / "same.jsonl")], block_size=32
    )
    hub_set, file_set = res["sets"]["owner_corpus"], res["sets"]["same"]
    assert hub_set["documents"] == 3 and hub_set["loss"] == pytest.approx(file_set["loss"], rel=1e-6)


def test_local_repos_of_the_same_name_never_share_cached_rows(repo, tmp_path):
    """datasets keys its cache of a local repo with README configs by name and config; lmadapt
    streams local folders with a cache of their own, so a second repo (or an edited one) is read fresh."""
    first = [d.text for d in read_source(hub(repo, split="validation"))[0]]
    twin = tmp_path / "elsewhere" / "owner_corpus"
    for f in repo.rglob("*"):
        if f.is_file():
            (twin / f.relative_to(repo)).parent.mkdir(parents=True, exist_ok=True)
            (twin / f.relative_to(repo)).write_bytes(f.read_bytes())
    _jsonl(twin / "en" / "validation-00000-of-00001.jsonl", [{"text": "another held text", "n": 1}])
    assert [d.text for d in read_source(hub(twin, split="validation"))[0]] == ["another held text"]
    _jsonl(repo / "en" / "validation-00000-of-00001.jsonl", [{"text": "edited", "n": 0}])
    assert first == [f"english held {i}" for i in range(3)]
    assert [d.text for d in read_source(hub(repo, split="validation"))[0]] == ["edited"]
