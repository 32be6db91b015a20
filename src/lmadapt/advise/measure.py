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
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .inputs import task_stats, volume
from .probe import LORA_R, activation_bytes_per_token, epoch_cost, memory_plan, probe_ids, time_steps
from .shift import score_shift
from .text import SAMPLE_DOC_CHARS, sample_indices, sample_texts
from .vocabulary import vocabulary_stats

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "reference" / "general_sample.jsonl.gz"


def measure(
    model_dir: str,
    *,
    domain: str | None = None,
    text_field: str = "text",
    split_docs: str = "file",
    task_train: str | None = None,
    task_text_field: str = "text",
    label_field: str | None = "label",
    reference: str | None = None,
    sample_chars: int = 250_000,
    max_eval_tokens: int = 16_384,
    time_budget: float = 40.0,
    eval_block_size: int = 256,
    probe: bool = True,
    probe_steps: int = 3,
    probe_batch_size: int = 1,
    probe_block_size: int = 256,
    train_batch_tokens: int = 8 * 512,
    device: str = "auto",
    loaded=None,
    progress: Callable[[str], None] | None = None,
) -> dict:
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
        dom_info, dom_sample = (
            _read_domain(domain, text_field, split_docs, sample_chars, tok, max_pos, say) if domain else (None, None)
        )

    task_info, task_sample = _read_task(
        task_train, task_text_field, label_field, sample_chars, tok, max_pos, timing, say
    )
    sample, vocab = _vocabulary(dom_sample, task_sample, ref_sample, tok, timing)

    # ---- shift (perplexity on the base model), activation memory, then the timed training probe
    budget_end = time.perf_counter() + time_budget
    sets = {k: v for k, v in (("domain", dom_sample), ("task", task_sample)) if v}
    seconds, block = time_budget * (0.6 if probe else 0.95), min(eval_block_size, max_pos or eval_block_size)
    shift = _shift(loaded, sets, ref_sample, seconds, max_eval_tokens, block, timing, say)
    fwd_tps, block = (shift or {}).get("forward_tokens_per_second"), min(probe_block_size, max_pos or probe_block_size)
    with _timed(timing, "probe"):  # (probe, steps, batch size, block size)
        probe_info = _probe(
            loaded, dev, sample or ref_sample, fwd_tps, budget_end, (probe, probe_steps, probe_batch_size, block), say
        )

    cost = epoch_cost(model_info, dom_info, task_info, probe_info, train_batch_tokens, dev)
    cost["memory"]["plan"] = memory_plan(model, dev, max_pos, train_batch_tokens)
    timing["total"] = time.perf_counter() - t_start
    return _sections(model_info, ref_info, dom_info, task_info, shift, vocab, cost, timing)


def _sections(model_info, ref_info, dom_info, task_info, shift, vocab, cost, timing: dict[str, float]) -> dict:
    """The returned dict, its sections in the module doc's order."""
    return {
        "model": model_info,
        "reference": ref_info,
        "domain": dom_info,
        "task": task_info,
        "shift": shift,
        "vocabulary": vocab,
        "cost": cost,
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }


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
    return {
        "path": ref_path,
        "documents": ref_stats.documents,
        "chars": ref_stats.chars,
        "sampled_documents": len(ref_sample),
        "sampled_chars": sum(map(len, ref_sample)),
    }, ref_sample


def _read_domain(
    domain: str, text_field: str, split_docs: str, sample_chars: int, tok, max_pos, say
) -> tuple[dict, list[str]]:
    """(domain section, its sample, each document cut to SAMPLE_DOC_CHARS)."""
    from ..config.data import SourceConfig
    from ..data.sources import read_source

    say(f"reading {domain}")
    r0 = time.perf_counter()
    # Spooled to a temporary file as it is read: a corpus of many GB is counted and sampled
    # without holding its text (the sample is read back by index).
    with tempfile.TemporaryDirectory(prefix="lmadapt-advise-") as tmp:
        docs, stats = read_source(
            SourceConfig(path=str(domain), text_field=text_field, split_docs=split_docs),
            spool=Path(tmp) / "domain.arrow",
        )
        lengths = docs.char_lengths()
        picked = sample_indices(lengths, sample_chars)
        dom_sample = [t[:SAMPLE_DOC_CHARS] for t in docs.select(picked).texts()]
        del docs
    dom_info = volume(domain, lengths, stats.chars, dom_sample, tok, max_pos)
    dom_info["read_seconds"] = round(time.perf_counter() - r0, 2)
    return dom_info, dom_sample


def _read_task(
    task_train: str | None,
    text_field: str,
    label_field: str | None,
    sample_chars: int,
    tok,
    max_pos,
    timing: dict[str, float],
    say,
) -> tuple[dict | None, list[str] | None]:
    """(task section, its sample), or (None, None) without labeled data."""
    if not task_train:
        return None, None
    with _timed(timing, "task"):
        say(f"reading {task_train}")
        task_info, task_texts = task_stats(task_train, text_field, label_field, tok, max_pos)
        task_sample = sample_texts(task_texts, sample_chars)
    return task_info, task_sample


def _vocabulary(
    dom_sample, task_sample, ref_sample: list[str], tok, timing: dict[str, float]
) -> tuple[list[str] | None, dict | None]:
    """(the sample the vocabulary is measured on: the domain's, else the task's; vocabulary section)."""
    text_kind, sample = ("domain", dom_sample) if dom_sample else ("task", task_sample) if task_sample else (None, None)
    if not sample:
        return sample, None
    with _timed(timing, "vocabulary"):
        vocab = vocabulary_stats(sample, ref_sample, tok)
        vocab["text"] = text_kind
    return sample, vocab


def _shift(
    loaded,
    sets: dict[str, list[str]],
    ref_sample: list[str],
    seconds: float,
    max_tokens: int,
    block_size: int,
    timing: dict[str, float],
    say,
) -> dict | None:
    """The shift section (None without domain or task text), scored within ``seconds``."""
    if not sets:
        return None
    with _timed(timing, "shift"):
        say(
            f"scoring {' and '.join(sets)} text and the general reference with the base model "
            f"(<= {max_tokens:,} tokens each, <= {seconds:.0f} s)"
        )
        return score_shift(loaded, sets, ref_sample, block_size=block_size, max_tokens=max_tokens, seconds=seconds)


def _probe(
    loaded, dev, texts: list[str], fwd_tps: float | None, budget_end: float, settings: tuple[bool, int, int, int], say
) -> dict:
    """The probe section: activation bytes per token, and training speed from timed steps when the
    budget left allows them, else estimated from the forward speed of scoring (or not measured).
    ``settings``: (probe at all, steps, batch size, block size)."""
    probe, steps, batch_size, block = settings
    ids = probe_ids(loaded.tokenizer, texts, batch_size * block)
    act = activation_bytes_per_token(loaded, ids[: min(len(ids), 64)])
    probe_info = None
    left = budget_end - time.perf_counter()
    # A training step costs about 3 forward passes; the probe needs a warm-up step and a timed one.
    expected = 3 * batch_size * block / fwd_tps * 2 if fwd_tps else 0.0
    if probe and expected <= max(left, 0.0):
        say("timing a few training steps")
        probe_info = time_steps(
            loaded,
            ids,
            batch_size=batch_size,
            block_size=block,
            steps=steps,
            seconds=max(0.0, budget_end - time.perf_counter()),
        )
    elif fwd_tps:
        why = "--no-probe" if not probe else f"time budget spent (a probe step would take ~{expected / 2:.0f} s)"
        probe_info = {
            "device": str(dev),
            "method": f"estimated from scoring: 3 x forward time ({why})",
            "tokens_per_second": round(fwd_tps / 3, 1),
        }
    if probe_info is not None:
        probe_info["activation_bytes_per_token"] = act
    else:
        probe_info = {
            "device": str(dev),
            "method": "not measured",
            "tokens_per_second": None,
            "activation_bytes_per_token": act,
        }
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
    return {
        "path": str(model_dir),
        "model_type": loaded.model_type,
        "objective": loaded.objective,
        "params": count_params(model),
        "max_position_embeddings": int(max_pos) if max_pos else None,
        "vocab_size": len(loaded.tokenizer),
        "lora_r": LORA_R,
        "lora_targets": targets,
        "lora_trainable_params": lora_n,
    }
