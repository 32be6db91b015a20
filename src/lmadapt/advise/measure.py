"""Measure what the advice needs, on samples, within a time budget.

    m = measure("models/base", domain="notes/", task_train="train.jsonl", goal="classify")
    json.dumps(m)       # plain JSON; recommend(m, goal) decides from it

Everything is sampled so a 135M-parameter model and a 10 MB corpus take about a minute on two CPU
cores: documents are read in full only to count them and their characters; words, token lengths
and perplexity come from a seeded sample of about ``sample_chars`` characters (each document cut
to 4,000 characters so the sample spans many documents); the base model scores at most
``max_eval_tokens`` tokens per set, fewer when ``time_budget`` runs out (the count is reported and
a thin measurement lowers the advice's confidence); the training probe times ``probe_steps``
optimizer steps after one warm-up step, or fewer when the budget is spent (when not even one step
fits, the speed is estimated as a third of the measured forward speed). Activation memory is
measured on a short forward pass (bytes autograd saves for backward).

Sections of the returned dict (None when there is nothing to measure):

model       path, model_type, objective, params, max_position_embeddings, vocab_size,
            lora_r, lora_targets, lora_trainable_params
reference   path, documents, chars, sampled_documents, sampled_chars
domain      path, documents, chars, sampled_documents, sampled_chars, sampled_tokens, tokens_per_char,
            estimated_tokens (tokens/char x chars, + one separator per document),
            length_tokens_p50, length_tokens_p95, over_context_share (documents longer than the
            model context), read_seconds
task        path, examples, skipped, text_field, label_field, problem (single_label | multi_label |
            regression | None), classes, per_class {label: n}, per_class_min, per_class_median,
            tokens (estimated), length_tokens_p50, length_tokens_p95, over_context_share
shift       metric (perplexity | masked_perplexity), block_size, packing, seconds, forward_tokens_per_second,
            reference {loss, perplexity, tokens}, domain and task {loss, perplexity, tokens, ratio} (None
            when not given); ratio = exp(loss - reference loss), the perplexity ratio to general text
vocabulary  text, top_k, overlap, frequent_words (1000), domain_split3_share, reference_split3_share,
            domain_pieces_per_word, reference_pieces_per_word, candidates [{word, domain_count,
            reference_count, ratio, pieces}]
cost        tokens (one epoch: domain corpus, else task texts), flops_per_epoch (6 x params x tokens),
            probe {device, method, tokens_per_second, activation_bytes_per_token, and for timed steps: dtype,
            batch_size, block_size, steps, seconds_per_step}, seconds_per_epoch,
            memory {train_batch_tokens, activation_bytes, full_bytes, lora_bytes, available_bytes, device,
            plan (advise/memory.py: bytes per parameter and GPUs needed, full / LoRA / sharded / offload)}
timing      seconds per phase and total
"""
from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .probe import LORA_R, activation_bytes_per_token, epoch_cost, memory_plan, probe_ids, time_steps
from .text import (SAMPLE_DOC_CHARS, distinctive_terms, percentile, sample_indices, sample_texts, top_words,
                   vocabulary_overlap, word_counts, WORD, STOPWORDS)

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "reference" / "general_sample.jsonl.gz"
FREQUENT_WORDS = 1000


def measure(model_dir: str, *, domain: str | None = None, text_field: str = "text", split_docs: str = "file",
            task_train: str | None = None, task_text_field: str = "text", label_field: str | None = "label",
            reference: str | None = None, sample_chars: int = 250_000, max_eval_tokens: int = 16_384,
            time_budget: float = 40.0, eval_block_size: int = 256, probe: bool = True, probe_steps: int = 3,
            probe_batch_size: int = 1, probe_block_size: int = 256, train_batch_tokens: int = 8 * 512,
            device: str = "auto", loaded=None, progress: Callable[[str], None] | None = None) -> dict:
    """Measurements of the base model, the domain corpus and the labeled data (see module doc).

    ``time_budget`` (seconds) bounds the model work (perplexity + probe); reading and counting are
    outside it. ``loaded``: an already loaded ``LoadedModel`` (else ``model_dir`` is loaded)."""
    say = progress or (lambda msg: log.info(msg))
    t_start = time.perf_counter()
    timing: dict[str, float] = {}

    with _timed(timing, "load_model"):
        loaded, dev, model_info = _load(model_dir, loaded, device, say)
    model, tok = loaded.model, loaded.tokenizer
    max_pos = model_info["max_position_embeddings"]

    with _timed(timing, "read"):
        ref_info, ref_sample = _read_reference(reference, sample_chars)
        dom_info = dom_sample = None
        if domain:
            dom_info, dom_sample = _read_domain(domain, text_field, split_docs, sample_chars, tok, max_pos, say)

    task_info = task_sample = None
    if task_train:
        with _timed(timing, "task"):
            say(f"reading {task_train}")
            task_info, task_texts = _task(task_train, task_text_field, label_field, tok, max_pos)
            task_sample = sample_texts(task_texts, sample_chars)

    text_kind, sample = ("domain", dom_sample) if dom_sample else ("task", task_sample) if task_sample else (None, None)
    vocab = None
    if sample:
        with _timed(timing, "vocabulary"):
            vocab = _vocabulary(sample, ref_sample, tok)
            vocab["text"] = text_kind

    # ---- shift (perplexity on the base model), activation memory, then the timed training probe
    budget_end = time.perf_counter() + time_budget
    shift = None
    sets = {k: v for k, v in (("domain", dom_sample), ("task", task_sample)) if v}
    if sets:
        with _timed(timing, "shift"):
            seconds = time_budget * (0.6 if probe else 0.95)
            say(f"scoring {' and '.join(sets)} text and the general reference with the base model "
                f"(<= {max_eval_tokens:,} tokens each, <= {seconds:.0f} s)")
            shift = _shift(loaded, sets, ref_sample, block_size=min(eval_block_size, max_pos or eval_block_size),
                           max_tokens=max_eval_tokens, seconds=seconds)
    with _timed(timing, "probe"):
        probe_info = _probe(loaded, dev, sample or ref_sample, (shift or {}).get("forward_tokens_per_second"),
                            budget_end, probe=probe, steps=probe_steps, batch_size=probe_batch_size,
                            block=min(probe_block_size, max_pos or probe_block_size), say=say)

    cost = epoch_cost(model_info, dom_info, task_info, probe_info, train_batch_tokens, dev)
    cost["memory"]["plan"] = memory_plan(model, dev, max_pos, train_batch_tokens)
    timing["total"] = time.perf_counter() - t_start
    return {"model": model_info, "reference": ref_info, "domain": dom_info, "task": task_info, "shift": shift,
            "vocabulary": vocab, "cost": cost, "timing": {k: round(v, 2) for k, v in timing.items()}}


# ---------------------------------------------------------------------------------------- steps

@contextmanager
def _timed(timing: dict[str, float], phase: str):
    """Seconds the block took, as ``timing[phase]`` (not set when it raises)."""
    t0 = time.perf_counter()
    yield
    timing[phase] = time.perf_counter() - t0


def _load(model_dir, loaded, device: str, say) -> tuple[Any, Any, dict]:
    """(loaded model, its device, model section): ``loaded`` as given, else ``model_dir`` loaded."""
    if loaded is None:
        from ..config.model import ModelConfig
        from ..models.load import load_model
        say(f"loading {model_dir}")
        loaded = load_model(ModelConfig(path=str(model_dir)))
    dev = _device(device)
    loaded.model.to(dev)
    return loaded, dev, _model_info(model_dir, loaded)


def _read_reference(reference: str | None, sample_chars: int) -> tuple[dict, list[str]]:
    """(reference section, its sample): the general-English text the domain is compared with."""
    from ..config.data import SourceConfig
    from ..data.sources import read_source

    ref_path = str(reference or DEFAULT_REFERENCE)
    ref_docs, ref_stats = read_source(SourceConfig(path=ref_path, text_field="text"))
    ref_sample = sample_texts([d.text for d in ref_docs], sample_chars)
    return {"path": ref_path, "documents": ref_stats.documents, "chars": ref_stats.chars,
            "sampled_documents": len(ref_sample), "sampled_chars": sum(map(len, ref_sample))}, ref_sample


def _read_domain(domain: str, text_field: str, split_docs: str, sample_chars: int, tok, max_pos,
                 say) -> tuple[dict, list[str]]:
    """(domain section, its sample, each document cut to SAMPLE_DOC_CHARS)."""
    from ..config.data import SourceConfig
    from ..data.sources import read_source

    say(f"reading {domain}")
    r0 = time.perf_counter()
    # Spooled to a temporary file as it is read: a corpus of many GB is counted and sampled
    # without holding its text (the sample is read back by index).
    with tempfile.TemporaryDirectory(prefix="lmadapt-advise-") as tmp:
        docs, stats = read_source(SourceConfig(path=str(domain), text_field=text_field, split_docs=split_docs),
                                  spool=Path(tmp) / "domain.arrow")
        lengths = docs.char_lengths()
        picked = sample_indices(lengths, sample_chars)
        dom_sample = [t[:SAMPLE_DOC_CHARS] for t in docs.select(picked).texts()]
        del docs
    dom_info = _volume(domain, lengths, stats.chars, dom_sample, tok, max_pos)
    dom_info["read_seconds"] = round(time.perf_counter() - r0, 2)
    return dom_info, dom_sample


def _probe(loaded, dev, texts: list[str], fwd_tps: float | None, budget_end: float, *, probe: bool, steps: int,
           batch_size: int, block: int, say) -> dict:
    """The probe section: activation bytes per token, and training speed from timed steps when the
    budget left allows them, else estimated from the forward speed of scoring (or not measured)."""
    ids = probe_ids(loaded.tokenizer, texts, batch_size * block)
    act = activation_bytes_per_token(loaded, ids[:min(len(ids), 64)])
    probe_info = None
    left = budget_end - time.perf_counter()
    # A training step costs about 3 forward passes; the probe needs a warm-up step and a timed one.
    expected = 3 * batch_size * block / fwd_tps * 2 if fwd_tps else 0.0
    if probe and expected <= max(left, 0.0):
        say("timing a few training steps")
        probe_info = time_steps(loaded, ids, batch_size=batch_size, block_size=block, steps=steps,
                                seconds=max(0.0, budget_end - time.perf_counter()))
    elif fwd_tps:
        why = "--no-probe" if not probe else f"time budget spent (a probe step would take ~{expected / 2:.0f} s)"
        probe_info = {"device": str(dev), "method": f"estimated from scoring: 3 x forward time ({why})",
                      "tokens_per_second": round(fwd_tps / 3, 1)}
    if probe_info is not None:
        probe_info["activation_bytes_per_token"] = act
    else:
        probe_info = {"device": str(dev), "method": "not measured", "tokens_per_second": None,
                      "activation_bytes_per_token": act}
    return probe_info


# ---------------------------------------------------------------------------------------- pieces

def _device(name: str):
    import torch

    from ..runtime.dist import process_device
    return process_device() if name == "auto" else torch.device(name)


def lora_trainable_params(model, r: int = LORA_R) -> tuple[int, list[str]]:
    """Parameters LoRA rank ``r`` would train on the default targets: r x (in + out) per adapted layer."""
    from ..models.memory_plan import lora_size
    from ..models.registry import lora_targets

    return lora_size(model, r)[0], list(lora_targets(model))


def _model_info(model_dir, loaded) -> dict:
    from ..models.presets import count_params

    model = loaded.model
    cfg = model.config
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    lora_n, targets = lora_trainable_params(model)
    return {"path": str(model_dir), "model_type": loaded.model_type, "objective": loaded.objective,
            "params": count_params(model), "max_position_embeddings": int(max_pos) if max_pos else None,
            "vocab_size": len(loaded.tokenizer), "lora_r": LORA_R, "lora_targets": targets,
            "lora_trainable_params": lora_n}


def _token_lengths(texts: list[str], tok) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def _volume(path, char_lengths: np.ndarray, chars: int, sample: list[str], tok, max_pos) -> dict:
    """Token volume and document lengths, estimated from every document's characters and the
    sample's tokens per character."""
    lengths = _token_lengths(sample, tok)
    sampled_chars = sum(map(len, sample))
    tpc = sum(lengths) / max(sampled_chars, 1)
    est = char_lengths.astype(np.float64) * tpc + 1  # + separator; an array, not a float per document
    return {"path": str(path), "documents": len(est), "chars": chars, "sampled_documents": len(sample),
            "sampled_chars": sampled_chars, "sampled_tokens": sum(lengths), "tokens_per_char": round(tpc, 4),
            "estimated_tokens": int(round(chars * tpc + len(est))),
            "length_tokens_p50": int(percentile(est, 50)), "length_tokens_p95": int(percentile(est, 95)),
            "over_context_share": round(int((est > max_pos).sum()) / len(est), 4) if max_pos else None}


def _label_keys(value) -> tuple[list[str], str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], "multi_label"
    if isinstance(value, float) and not value.is_integer():
        return [], "regression"
    return [str(value)], "single_label"


def _task(path, text_field, label_field, tok, max_pos, max_tokenized: int = 5000) -> tuple[dict, list[str]]:
    import random

    from ..tasks.base import ReadReport
    from ..tasks.labeled_io import read_records

    report = ReadReport()
    rows = read_records(path, fields_required=[text_field], text_fields=[text_field], on_error="skip", report=report)
    texts = [r.fields[text_field] for r in rows]
    info: dict[str, Any] = {"path": str(path), "examples": len(rows), "skipped": report.skipped,
                            "text_field": text_field, "label_field": None, "problem": None, "classes": None,
                            "per_class": None, "per_class_min": None, "per_class_median": None}
    labeled = [r.fields.get(label_field) for r in rows if label_field and r.fields.get(label_field) is not None]
    if labeled:
        counts: Counter = Counter()
        kinds: Counter = Counter()
        for v in labeled:
            keys, kind = _label_keys(v)
            kinds[kind] += 1
            counts.update(keys)
        problem = kinds.most_common(1)[0][0]
        if problem == "single_label" and len(counts) > 50 and all(_is_number(k) for k in counts):
            problem = "regression"  # many distinct numbers: a score, not classes
        info.update(label_field=label_field, problem=problem, labeled_examples=len(labeled))
        if problem != "regression":
            per = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            info.update(classes=len(per), per_class=per, per_class_min=min(per.values()),
                        per_class_median=statistics.median(per.values()))
    picked = texts if len(texts) <= max_tokenized else random.Random(0).sample(texts, max_tokenized)
    lengths = _token_lengths(picked, tok)
    mean = sum(lengths) / max(len(lengths), 1)
    info.update(tokens=int(round(mean * len(texts))), length_tokens_p50=percentile(lengths, 50),
                length_tokens_p95=percentile(lengths, 95),
                over_context_share=round(sum(n > max_pos for n in lengths) / len(lengths), 4) if max_pos and lengths else None)
    return info, texts


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def word_pieces(texts: list[str], tok) -> dict[str, list[int]]:
    """For each (lower-cased, non-stopword) word: how many tokens each occurrence was cut into, in context.

    Uses the fast tokenizer's character offsets: a token counts for a word when their spans overlap
    (a byte-level token ' word' covers the space before it too). Slow tokenizers: the word alone."""
    out: dict[str, list[int]] = defaultdict(list)
    if getattr(tok, "is_fast", False):
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        for text, offsets in zip(texts, enc["offset_mapping"]):
            spans = sorted((s, e) for s, e in offsets if e > s)
            j = 0
            for m in WORD.finditer(text):
                w = m.group(0).lower().replace("\u2019", "'")
                if len(w) < 2 or w in STOPWORDS:
                    continue
                ws, we = m.span()
                while j < len(spans) and spans[j][1] <= ws:
                    j += 1
                k, n = j, 0
                while k < len(spans) and spans[k][0] < we:
                    n += 1
                    k += 1
                out[w].append(max(n, 1))
        return out
    for w in {m.group(0) for t in texts for m in WORD.finditer(t)}:
        lw = w.lower()
        if len(lw) >= 2 and lw not in STOPWORDS:
            out[lw].append(len(tok(" " + w, add_special_tokens=False)["input_ids"]))
    return out


def _split_stats(counts: Counter, pieces: dict[str, list[int]], n: int = FREQUENT_WORDS) -> tuple[float | None, float | None]:
    """(share of the top-n words whose median piece count is >= 3, mean pieces per word over them)."""
    top = top_words(counts, n)
    meds = [statistics.median(pieces[w]) for w in top if pieces.get(w)]
    if not meds:
        return None, None
    return sum(p >= 3 for p in meds) / len(meds), sum(meds) / len(meds)


def _vocabulary(sample: list[str], ref_sample: list[str], tok) -> dict:
    dc, rc = word_counts(sample), word_counts(ref_sample)
    ov = vocabulary_overlap(dc, rc)
    dp, rp = word_pieces(sample, tok), word_pieces(ref_sample, tok)
    d_share, d_ppw = _split_stats(dc, dp)
    r_share, r_ppw = _split_stats(rc, rp)
    cands = distinctive_terms(dc, rc)
    for c in cands:
        c["pieces"] = int(statistics.median(dp[c["word"]])) if dp.get(c["word"]) else None
    return {"top_k": ov["top_k"], "overlap": None if ov["overlap"] is None else round(ov["overlap"], 4),
            "frequent_words": FREQUENT_WORDS, "domain_words": sum(dc.values()), "reference_words": sum(rc.values()),
            "domain_split3_share": _r(d_share), "reference_split3_share": _r(r_share),
            "domain_pieces_per_word": _r(d_ppw), "reference_pieces_per_word": _r(r_ppw), "candidates": cands}


def _r(x, nd: int = 4):
    return None if x is None else round(x, nd)


def _blocks(texts: list[str], loaded, block_size: int, mode: str, seed: int = 0):
    """The texts packed into blocks, in a seeded random order.

    Packed blocks come in document order, and a 4,000-character sample document fills about four
    256-token blocks. Scoring the first few blocks in that order would measure one or two documents
    of the corpus. The shuffle spreads the few blocks a time budget allows over many documents."""
    from ..data.objective import ObjectiveTokens
    from ..data.packing import pack_blocks
    from ..data.tokenize import tokenize_arrays

    tokens = ObjectiveTokens.of(loaded.tokenizer, loaded.objective)
    docs = tokenize_arrays(texts, loaded.tokenizer, separator=tokens.separator, cache=False,
                           with_word_starts=tokens.word_starts)
    blocks, _ = pack_blocks(docs, block_size=block_size, pad_id=tokens.pad_id, mode=mode)
    return blocks.shuffle(seed=seed).flatten_indices()


def _shift(loaded, sets: dict[str, list[str]], ref_sample: list[str], *, block_size: int, max_tokens: int,
           seconds: float) -> dict:
    """Token-averaged loss of the base model on each text set and on the reference: one block of each
    in turn until ``max_tokens`` per set or ``seconds`` are spent (every set gets the same number of
    blocks; at least one). ratio = exp(loss - reference loss) = perplexity ratio."""
    from ..data.collators import CausalCollator, WholeWordMLMCollator
    from ..models.load import supports_document_packing
    from ..train.lm_eval import causal_lm_loss, masked_lm_loss

    model, obj = loaded.model, loaded.objective
    mode = "document" if supports_document_packing(model, obj) else "concat"
    blocks = {"reference": _blocks(ref_sample, loaded, block_size, mode)}
    blocks.update({name: _blocks(texts, loaded, block_size, mode) for name, texts in sets.items()})
    if obj == "causal":
        collator = CausalCollator(mode=mode)
        score = lambda ds: causal_lm_loss(model, ds, collator, batch_size=1)  # noqa: E731
        key = "loss"
    else:
        collator = WholeWordMLMCollator(loaded.tokenizer, mode=mode, mask_dtype=next(model.parameters()).dtype)
        score = lambda ds: masked_lm_loss(model, ds, collator, batch_size=1)  # noqa: E731
        key = "masked_loss"
    n_max = max(1, min(min(len(b) for b in blocks.values()), math.ceil(max_tokens / block_size)))
    totals = {name: [0.0, 0] for name in blocks}
    t0 = time.perf_counter()
    fwd_time, fwd_tokens = 0.0, 0
    for i in range(n_max):
        for name, ds in blocks.items():
            s0 = time.perf_counter()
            res = score(ds.select([i]))
            fwd_time += time.perf_counter() - s0
            fwd_tokens += block_size
            totals[name][0] += res[key] * res["tokens"]
            totals[name][1] += res["tokens"]
        if time.perf_counter() - t0 > seconds:
            break

    def entry(name: str) -> dict:
        loss = totals[name][0] / max(totals[name][1], 1)
        return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3), "tokens": totals[name][1]}

    out: dict[str, Any] = {"metric": "perplexity" if obj == "causal" else "masked_perplexity",
                           "block_size": block_size, "packing": mode, "reference": entry("reference")}
    ref_loss = totals["reference"][0] / max(totals["reference"][1], 1)
    for name in ("domain", "task"):
        if name in sets:
            e = entry(name)
            e["ratio"] = round(math.exp(min(totals[name][0] / max(totals[name][1], 1) - ref_loss, 50)), 4)
            out[name] = e
        else:
            out[name] = None
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["forward_tokens_per_second"] = round(fwd_tokens / fwd_time, 1) if fwd_time else None
    return out
