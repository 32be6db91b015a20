#!/usr/bin/env python3
"""Build the bundled lm-evaluation-harness task ``lmadapt_cloze`` (src/lmadapt/harness_tasks/).

A multiple-choice cloze test cut from prose that lmadapt already carries (the news articles and
Jane Austen chapters of ``sample_data/general/valid.jsonl.gz``): a sentence is cut before one of
its content words; the model is asked to continue it, and the four choices are that word (the
answer) and three other content words of the same corpus and about the same length, each followed
by the rest of the sentence. The rest is the same in every choice, so the choice is decided by
the word and by how well the rest of the sentence follows from it. A model that knows English
scores well above chance (25%); a random model scores at chance. It exists so that the harness
path (`lmadapt evaluate --harness-tasks`, `evaluation.harness` in a pipeline) runs offline and in
tests; for real forgetting measurements use the standard tasks (README: "Forgetting on capability
benchmarks").

Deterministic: sentences are read in file order, every choice is made by ``random.Random(0)``,
and JSON is written with sorted keys. Two runs give byte-identical files. Only the standard
library is used. Rebuild from the repository root with::

    .venv/bin/python scripts/build_harness_task.py
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "lmadapt" / "sample_data" / "general" / "valid.jsonl.gz"
OUT = REPO / "src" / "lmadapt" / "harness_tasks" / "lmadapt_cloze.jsonl"
PROSE = ("newsarticles", "austen")      # dictionary entries and verse make poor cloze sentences
SEED = 0
MAX_QUESTIONS = 400
MIN_WORDS, MAX_WORDS = 10, 40          # sentence length kept, in words
MIN_CONTEXT = 5                        # words before the blank
STOPWORDS = set("""
about above after again against among another because been before being below between both
could does doing down during each either every from further have having here hers herself himself
into itself just more most much must myself neither nor once only other ought ours ourselves over
same shall should some such than that their theirs them themselves then there these they this
those through under until upon very were what when where which while whom whose will with within
without would your yours yourself yourselves also said says like even ever many well still
""".split())
WORD = re.compile(r"^[a-z]{4,14}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        out.extend(s for s in SENTENCE_END.split(para) if s)
    return out


def content_words(words: list[str]) -> list[int]:
    """Positions (after the first MIN_CONTEXT words) of plain lower-case content words."""
    return [i for i, w in enumerate(words) if i >= MIN_CONTEXT and WORD.match(w) and w not in STOPWORDS]


def build(source: Path = SOURCE, limit: int = MAX_QUESTIONS) -> list[dict]:
    rng = random.Random(SEED)
    pool: dict[int, list[str]] = {}
    sents = []
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("source") not in PROSE:
                continue
            for s in sentences(rec["text"]):
                words = s.split()
                if MIN_WORDS <= len(words) <= MAX_WORDS and s.isascii():
                    sents.append(words)
                    for i in content_words(words):
                        pool.setdefault(len(words[i]), []).append(words[i])
    pool = {n: sorted(set(ws)) for n, ws in pool.items()}
    rng.shuffle(sents)
    out = []
    for words in sents:
        spots = content_words(words)
        if not spots:
            continue
        i = rng.choice(spots)
        answer = words[i]
        near = [w for n in (len(answer) - 1, len(answer), len(answer) + 1) for w in pool.get(n, [])
                if w != answer and w not in words]
        if len(near) < 3:
            continue
        options = rng.sample(near, 3) + [answer]
        rng.shuffle(options)
        rest = " ".join(words[i + 1:])
        out.append({"context": " ".join(words[:i]), "options": options, "rest": rest,
                    "choices": [f" {o} {rest}".rstrip() for o in options], "label": options.index(answer)})
        if len(out) >= limit:
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--limit", type=int, default=MAX_QUESTIONS)
    args = ap.parse_args()
    rows = build(args.source, args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{len(rows)} questions -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
