"""The bundled sample data (src/lmadapt/sample_data, built by scripts/build_sample_data.py).

Reads only the files inside the package; does not need shared/data.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path

import pytest

SAMPLE = Path(str(importlib.resources.files("lmadapt") / "sample_data"))

GENERAL_SOURCES = {"gcide", "wordnet", "newsarticles", "austen", "shakespeare", "fortunes"}
COMPUTING_SOURCES = {"python-docs", "perl-doc", "postgresql-doc", "jargon"}
FOLDOC_LABELS = {
    "language",
    "networking",
    "programming",
    "jargon",
    "operating system",
    "hardware",
    "communications",
    "company",
    "mathematics",
    "storage",
}

FILES = {  # path -> keys
    "general/train.jsonl.gz": ["text", "source"],
    "general/valid.jsonl.gz": ["text", "source"],
    "computing/train.jsonl.gz": ["text", "source"],
    "computing/valid.jsonl.gz": ["text", "source"],
    "foldoc/train.jsonl": ["text", "label"],
    "foldoc/dev.jsonl": ["text", "label"],
    "foldoc/test.jsonl": ["text", "label"],
    "foldoc/unlabeled.jsonl.gz": ["text"],
}


def load(rel: str) -> list[dict]:
    path = SAMPLE / rel
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_files_exist():
    for rel in [*FILES, "README.md"]:
        assert (SAMPLE / rel).is_file(), rel


@pytest.mark.parametrize("rel", sorted(FILES))
def test_files_parse_with_expected_keys(rel):
    records = load(rel)
    assert records, rel
    for r in records:
        assert list(r) == FILES[rel], (rel, list(r))
        assert isinstance(r["text"], str) and r["text"].strip()
    texts = [r["text"] for r in records]
    assert len(set(texts)) == len(texts), f"{rel} has duplicate texts"


@pytest.mark.parametrize("rel", [r for r in sorted(FILES) if r.endswith(".gz")])
def test_gzip_headers_are_reproducible(rel):
    head = (SAMPLE / rel).read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08"
    assert head[3] & 0x08 == 0, "gzip header must not store a file name"
    assert head[4:8] == b"\0\0\0\0", "gzip mtime must be 0"


@pytest.mark.parametrize(
    "corpus,sources,train_words", [("general", GENERAL_SOURCES, 350_000), ("computing", COMPUTING_SOURCES, 250_000)]
)
def test_unlabeled_corpora(corpus, sources, train_words):
    train, valid = load(f"{corpus}/train.jsonl.gz"), load(f"{corpus}/valid.jsonl.gz")
    assert {r["source"] for r in train} == sources  # stratified: every source present
    assert {r["source"] for r in valid} <= sources
    words = sum(len(r["text"].split()) for r in train)
    assert 0.8 * train_words <= words <= 1.2 * train_words
    assert max(len(r["text"].split()) for r in train + valid) <= 1500  # documents are capped
    assert not {r["text"] for r in valid} & {r["text"] for r in train}


def test_foldoc_splits():
    train, dev, test = (load(f"foldoc/{s}.jsonl") for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (600, 200, 300)
    train_labels = {r["label"] for r in train}
    assert train_labels == FOLDOC_LABELS
    assert {r["label"] for r in dev} <= train_labels
    assert {r["label"] for r in test} <= train_labels
    train_texts = {r["text"] for r in train}
    for split in (dev, test):
        assert not {r["text"] for r in split} & train_texts
    assert not {r["text"] for r in dev} & {r["text"] for r in test}
    unlabeled = {r["text"] for r in load("foldoc/unlabeled.jsonl.gz")}
    assert len(unlabeled) >= 500
    assert not unlabeled & {r["text"] for r in train + dev + test}


def test_total_size_and_readme():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 3_000_000, total
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    assert "scripts/build_sample_data.py" in readme
    for rel in FILES:
        assert rel in readme
