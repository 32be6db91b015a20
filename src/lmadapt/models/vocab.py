"""Domain vocabulary: mine the words a tokenizer fragments most, add them as whole tokens.

    cands = mine_candidates(tokenizer, texts, add=200, min_frequency=5)   # [Candidate], best first
    tok = extend_tokenizer(tokenizer, cands, folder)                      # saved there, reloaded
    tokens_per_word(tokenizer, held_out_texts)                            # fragmentation, before/after

A candidate is a *pre-token*: the unit the tokenizer's model sees after normalisation and
pre-tokenisation, so adding it applies exactly where that unit occurs and nowhere else. For
byte-level BPE ``Ġkernel`` (with its leading space, the usual form inside a sentence) and
``kernel`` (at a line start) are two candidates. Candidates are ranked by the tokens they save,
frequency x (pieces - 1), among words (letters only) seen at least ``min_frequency`` times.

How a token is added, so text without the new words tokenizes exactly as before:

* **byte-level BPE** (GPT-2, SmolLM, Llama 3): into the BPE model's own vocabulary, with
  ``ignore_merges`` (Llama 3 ships it): a pre-token found whole in the vocabulary becomes that one
  token, every other pre-token goes through the merges as before. ``tokenizer.add_tokens`` cannot
  do this (measured on SmolLM2): ``AddedToken("kernel")`` turns "the kernel" into ``Ġ`` + ``kernel``
  (one token more); ``" kernel"`` matches inside " kernels" (`` kernel`` + ``s``); with
  ``single_word`` it never matches after a word character, i.e. never after "the"; ``lstrip`` drops
  the space when decoding. The folder's ``tokenizer_class`` becomes ``TokenizersBackend``, because
  transformers 5 rebuilds a ``GPT2Tokenizer``/``LlamaTokenizer`` from vocab and merges alone,
  dropping ``ignore_merges``. :func:`extend_tokenizer` checks that every other pre-token of the
  mined text still tokenizes as before (a vocabulary entry the merges never produce would not).
* **WordPiece** (BERT): ``add_tokens(AddedToken(word, single_word=True, normalized=True))``:
  matched on the normalised (e.g. lower-cased) text at word boundaries only, so "kernels" keeps
  its pieces (adding "kernel" to the WordPiece vocabulary would turn it into ``kernel ##s``).

Other tokenizers (SentencePiece/Unigram, BPE without a word-splitting pre-tokenizer) are refused
with a message. The new ids follow the existing ones; ``piece_ids`` (the old tokens each new token
replaces) is what :mod:`lmadapt.models.embed_init` initialises the embedding rows from.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from lmadapt.config.base import ConfigError

VOCAB_FILE = "lmadapt_vocab.json"
_WORD = re.compile(r" ?[^\W\d_]{3,}")  # a letters-only word, at least 3 letters, its leading space kept


@dataclass
class Candidate:
    token: str  # the pre-token as the model sees it, e.g. "Ġkernel"
    word: str  # readable form, e.g. " kernel"
    frequency: int  # occurrences in the mined text
    pieces: list[str]  # the tokens it was cut into
    piece_ids: list[int] = field(default_factory=list)
    id: int | None = None  # its id once added

    @property
    def saved(self) -> int:
        """Tokens the mined text would have fewer with this token."""
        return self.frequency * (len(self.pieces) - 1)


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"vocabulary extension needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not"
        )
    return json.loads(backend.to_str())


def _has_byte_level(pre: dict | None) -> bool:
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre.get("pretokenizers", []) or [])


def tokenizer_kind(tokenizer) -> str:
    """ "bpe" (byte-level BPE splitting words) or "wordpiece"; anything else raises ConfigError."""
    j = _backend_json(tokenizer)
    model_type = (j.get("model") or {}).get("type")
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    splits_words = pre is not None and len(pre.pre_tokenize_str("alpha beta")) >= 2
    if model_type == "WordPiece" and splits_words:
        return "wordpiece"
    if model_type == "BPE" and _has_byte_level(j.get("pre_tokenizer")) and splits_words:
        return "bpe"
    raise ConfigError(
        f"vocabulary extension supports byte-level BPE (GPT-2, SmolLM, Llama 3) and WordPiece (BERT) tokenizers whose "
        f"pre-tokenizer splits words; this one has a {model_type} model and pre-tokenizer "
        f"{(j.get('pre_tokenizer') or {}).get('type')}: adding tokens would change how other text is tokenized"
    )


def _display(kind: str, pretoken: str) -> str:
    if kind != "bpe":
        return pretoken
    from tokenizers import decoders

    return decoders.ByteLevel().decode([pretoken])


def pretoken_counts(tokenizer, texts: Iterable[str]) -> Counter:
    """How often each pre-token occurs in ``texts`` (after the tokenizer's normaliser)."""
    backend = tokenizer.backend_tokenizer
    norm, pre = backend.normalizer, backend.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        if norm is not None:
            text = norm.normalize_str(text)
        counts.update(p for p, _ in pre.pre_tokenize_str(text))
    return counts


def _pieces(tokenizer, pretoken: str) -> list[str]:
    return [t.value for t in tokenizer.backend_tokenizer.model.tokenize(pretoken)]


def mine_candidates(
    tokenizer, texts: Iterable[str], *, add: int, min_frequency: int = 5, counts: Counter | None = None
) -> list[Candidate]:
    """The ``add`` words of ``texts`` that save the most tokens as whole tokens (see the module doc)."""
    if add < 1:
        raise ConfigError(f"add: the number of tokens to add must be >= 1, got {add}")
    kind = tokenizer_kind(tokenizer)
    counts = counts if counts is not None else pretoken_counts(tokenizer, texts)
    vocab = tokenizer.get_vocab()
    found = []
    for token, freq in counts.items():
        if freq < min_frequency or token in vocab:
            continue
        word = _display(kind, token)
        if not _WORD.fullmatch(word):
            continue
        pieces = _pieces(tokenizer, token)
        if len(pieces) >= 2:
            found.append(
                Candidate(token=token, word=word, frequency=freq, pieces=pieces, piece_ids=[vocab[p] for p in pieces])
            )
    found.sort(key=lambda c: (-c.saved, c.token))
    return found[:add]


def candidate_table(cands: list[Candidate], kind: str = "bpe", limit: int | None = 40) -> str:
    """What was chosen and why: the word, how often it occurs, the pieces it was cut into."""
    shown = cands if limit is None else cands[:limit]
    rows = [("rank", "word", "frequency", "pieces", "tokens saved", "pieces before")]
    rows += [
        (
            str(i + 1),
            repr(c.word),
            f"{c.frequency:,}",
            str(len(c.pieces)),
            f"{c.saved:,}",
            " | ".join(_display(kind, p) for p in c.pieces),
        )
        for i, c in enumerate(shown)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(v.ljust(w) if i in (1, 5) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows
    ]
    if limit is not None and len(cands) > limit:
        lines.append(f"... and {len(cands) - limit} more (all of them in {VOCAB_FILE})")
    return "\n".join(lines)


def _save_bpe(tokenizer, tokens: list[str], folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
    path = folder / "tokenizer.json"
    j = json.loads(path.read_text(encoding="utf-8"))
    vocab = j["model"]["vocab"]
    next_id = max([*vocab.values(), *(a["id"] for a in j.get("added_tokens", []))]) + 1
    for i, tok in enumerate(tokens):
        vocab[tok] = next_id + i
    # A pre-token found whole in the vocabulary is one token (what makes the new entries apply);
    # no merge produces them, so nothing else changes (checked by extend_tokenizer).
    j["model"]["ignore_merges"] = True
    path.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # transformers 5 rebuilds a named class (GPT2Tokenizer, ...) from vocab + merges, which would
    # drop ignore_merges; the generic backend reads tokenizer.json as it is.
    cfg["tokenizer_class"] = "TokenizersBackend"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _changed_pretokens(old, new, counts: Counter, added: set[str]) -> list[str]:
    """Pre-tokens (other than the added ones) that the extended tokenizer cuts differently."""
    return [p for p in counts if p not in added and _pieces(old, p) != _pieces(new, p)]


def extend_tokenizer(
    tokenizer, cands: list[Candidate], folder: str | Path, *, base: str | None = None, counts: Counter | None = None
):
    """Save ``tokenizer`` plus ``cands`` as new tokens into ``folder`` (written whole, replaced if it
    exists) with :data:`VOCAB_FILE` recording them; returns the reloaded tokenizer. Sets each
    candidate's ``id``. ``counts`` (the mined pre-tokens): checked to tokenize as before."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    if not cands:
        raise ConfigError("no vocabulary candidates to add (lower min_frequency, or mine more text)")
    kind = tokenizer_kind(tokenizer)
    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if kind == "bpe":
            _save_bpe(tokenizer, [c.token for c in cands], tmp)
            new = AutoTokenizer.from_pretrained(str(tmp))
        else:
            new = _copy(tokenizer, tmp)
            new.add_tokens([AddedToken(c.token, single_word=True, normalized=True, special=False) for c in cands])
            new.save_pretrained(str(tmp))
        for c in cands:
            c.id = new.convert_tokens_to_ids(c.token)
            if c.id is None or c.id < len(tokenizer):
                raise RuntimeError(
                    f"new token {c.word!r} got id {c.id}, expected one after the {len(tokenizer)} old ids"
                )
        changed = _changed_pretokens(tokenizer, new, counts, {c.token for c in cands}) if counts else []
        if changed:
            raise ConfigError(
                f"extending this tokenizer would change how {len(changed)} other words are tokenized "
                f"(e.g. {', '.join(map(repr, changed[:5]))}); its vocabulary holds entries its merges "
                "never produce"
            )
        record = {
            "kind": kind,
            "base": base or str(tokenizer.name_or_path),
            "old_size": len(tokenizer),
            "old_vocab_sha256": vocab_digest(tokenizer),
            "new_size": len(new),
            "tokens": [asdict(c) for c in cands],
        }
        (tmp / VOCAB_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AutoTokenizer.from_pretrained(str(out))


def _copy(tokenizer, folder: Path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def vocab_digest(tokenizer) -> str:
    """sha256 of a tokenizer's token -> id map: which vocabulary an extension was made for."""
    import hashlib

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()).hexdigest()


def read_extension(folder: str | Path) -> dict | None:
    """The :data:`VOCAB_FILE` record of an extended tokenizer folder (None if it has none)."""
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


def tokens_per_word(tokenizer, texts: Iterable[str]) -> dict:
    """Fragmentation of ``texts``: tokens (no special tokens) per whitespace-separated word."""
    texts = list(texts)
    words = sum(len(t.split()) for t in texts)
    # verbose=False: counting only; no "longer than the model's maximum length" warning per long document
    tokens = (
        sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]) if texts else 0
    )
    return {"tokens": tokens, "words": words, "tokens_per_word": round(tokens / words, 4) if words else None}
