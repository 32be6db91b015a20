"""`lmadapt pretrain`: continued pretraining (or pretraining from scratch) on unlabeled text.

Reads top to bottom: setup (corpus, model, blocks) -> evaluate before -> train -> evaluate
after -> save. The objective is the model's own: next-token prediction for decoders, whole-word
masked LM for encoders.

    lmadapt pretrain recipes/pretrain_sample.yaml train.max_steps=200 train.output_dir=runs/dapt
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from ..config.base import ConfigError, to_dict
from ..config.pretrain import PretrainConfig
from ..data.collators import CausalCollator, WholeWordMLMCollator
from ..data.mask_seeds import MaskSeeded
from ..models.load import LoadedModel, check_block_size, load_model, supports_document_packing
from ..models.lora import apply_lora, save_model
from ..train.lm_eval import lm_metrics
from ..runtime.dist import is_main_process, log
from ..train.fsdp import check_launch
from ..train.fsdp import prepare_model, save_whole, wants_sharding
from ..train.loop import run_training
from ..train.flops import speed_metrics
from ..runtime.run_folder import prepare_output_dir
from ..runtime.outputs import ACCOUNTING_FILE, update_metrics, write_json, write_meta, write_recipe
from .pretrain_data import StageData, prepare_stage_data, read_stage_corpus, remove_stage_data
from .pretrain_vocab import VocabExtension, extend_vocabulary, training_options, word_perplexities


def choose_packing(requested: str, model, objective: str) -> str:
    """'auto' -> document packing where a probe shows the model keeps documents apart."""
    if requested == "concat":
        return "concat"
    ok = supports_document_packing(model, objective)
    if requested == "document" and not ok:
        raise ConfigError(
            f"data.packing: document packing needs a model whose attention honours restarting position ids "
            f"(causal) or a 4D mask (encoders); {type(model).__name__} does not. Use data.packing: concat."
        )
    if not ok:
        log(f"packing: {type(model).__name__} cannot isolate documents; falling back to concat")
    return "document" if ok else "concat"


def evaluate_all(model, eval_blocks: dict, collator, objective: str, tokenizer, batch_size: int, mode: str) -> dict:
    return {
        name: lm_metrics(
            model, blocks, collator, objective, tokenizer, batch_size=batch_size, document_mode=mode == "document"
        )
        for name, (blocks, _) in eval_blocks.items()
    }


def make_collator(objective: str, mode: str, tokenizer, model, cfg: PretrainConfig):
    if objective == "causal":
        return CausalCollator(mode=mode)
    # Encoders get an additive 4D mask in document mode; it must match the model's dtype.
    return WholeWordMLMCollator(
        tokenizer,
        mlm_probability=cfg.data.mlm_probability,
        whole_word=cfg.data.whole_word_mask,
        mode=mode,
        mask_dtype=model.dtype,
    )


class PhaseClock:
    """Where a stage's wall time goes: on a GPU the training loop can be the smallest part
    (seen: 18 s of a 114 s stage), and this is what tells data preparation from evaluation."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._since = time.time()

    def __call__(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self._since, 2)
        self._since = now


@dataclass
class PretrainSetup:
    """What setup hands the rest of the stage: the model ready to train and its held-out blocks."""

    loaded: LoadedModel
    vocab: VocabExtension | None
    model: Any  # prepared (sharded, or on this process's device); LoRA not yet attached unless sharded
    tokenizer: Any
    objective: str
    sharded: bool
    mode: str  # packing: "document" or "concat"
    data: StageData
    collator: Any


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Run one pretraining stage; returns the metrics written to metrics.json."""
    check_launch(cfg.train)
    t_start = time.time()
    phase = PhaseClock()
    out = prepare_output_dir(
        cfg.train.output_dir, resume=cfg.train.resume, overwrite=cfg.train.overwrite, recipe=to_dict(cfg)
    )
    set_seed(cfg.train.seed)
    recipe = to_dict(cfg)
    s = _setup(cfg, out, recipe, phase)

    before = _heldout(s, s.model, cfg)
    for name, m in before.items():
        log(f"before: {name}: loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f}")
    phase("evaluate_before")

    model, outcome, train_seconds = _train(s, cfg)
    phase("train")

    after = _heldout(s, model, cfg)
    for name, m in after.items():
        log(
            f"after:  {name}: loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} "
            f"(before {before[name]['perplexity']:.2f})"
        )
    phase("evaluate_after")
    log("time: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in phase.seconds.items()))
    metrics = {
        "stage": "pretrain",
        "objective": s.objective,
        "heldout": {
            name: {
                "before": before[name],
                "after": after[name],
                "perplexity_ratio": after[name]["perplexity"] / before[name]["perplexity"],
            }
            for name in after
        },
        "train": _train_summary(outcome, train_seconds, t_start),
        "packing": s.mode,
        "phase_seconds": phase.seconds,  # before saving; "train" includes periodic held-out evaluation
    }
    if s.vocab is not None:
        metrics["vocab"] = s.vocab.summary
    _save(s, model, cfg, out, metrics)
    remove_stage_data(out)
    return metrics


# --- the steps, in the order run_pretrain takes them ------------------------------------------


def _setup(cfg: PretrainConfig, out: Path, recipe: dict, phase: PhaseClock) -> PretrainSetup:
    """Corpus, model, blocks; writes the recipe and the token accounting."""
    corpus = read_stage_corpus(cfg, out)  # on each node's first process; the others never read the text
    phase("read_corpus")
    corpus_summary = _log_corpus(corpus)
    # sharded: the main process alone loads, the others hold an empty copy until sharding fills it
    # (models.on_main); not for a vocabulary extension or a 4-bit base, which change the loaded weights
    on_main = wants_sharding(cfg.train) and not cfg.vocab.active and cfg.lora.quantize == "none"
    loaded = load_model(
        cfg.model,
        quantize=cfg.lora.quantize,  # lora.quantize: 4bit -> NF4 base (QLoRA)
        weights_on_main=on_main,
    )
    check_block_size(
        loaded.model,
        cfg.data.block_size,
        "data.block_size",
        "in its config.json"
        if cfg.model.init != "scratch"
        else "of the size preset; or raise model.dims.max_position_embeddings",
    )
    vocab = extend_vocabulary(cfg, corpus, loaded, out)  # vocab.*: extended tokenizer, new rows initialised
    model, tokenizer, objective = loaded.model, loaded.tokenizer, loaded.objective
    sharded = wants_sharding(cfg.train)
    if sharded and cfg.lora.enabled:
        # Adapters go in before sharding (peft cannot wrap sharded layers); at init (B = 0) the model
        # computes what the base does, so the "before" scores are the base model's all the same.
        model = apply_lora(model, cfg.lora, objective)
    model = prepare_model(model, cfg.train)  # sharded (FSDP2), else whole on this process's device
    phase("load_model")
    mode = choose_packing(cfg.data.packing, model, objective)
    log(
        f"model: {loaded.source} ({loaded.model_type}, {sum(p.numel() for p in model.parameters()):,} params), "
        f"objective: {objective}, packing: {mode}"
    )
    data = prepare_stage_data(corpus, tokenizer, objective, mode, cfg, out)
    del corpus  # the texts (spooled, and removed by now): tokens and blocks are all training needs
    accounting, eval_blocks = data.accounting, data.eval
    phase("tokenize_and_pack")
    log("token accounting (train):\n" + accounting.table())
    if accounting.tokens_dropped != 0:  # an invariant of pack_blocks; a violation is a bug, not user error
        raise RuntimeError(f"packing dropped {accounting.tokens_dropped} tokens")
    collator = make_collator(objective, mode, tokenizer, model, cfg)
    if is_main_process():
        write_recipe(out, recipe)
        write_json(
            out / ACCOUNTING_FILE,
            {
                "train": accounting.__dict__,
                "mixture": data.mixture,
                "eval": {n: acc.__dict__ for n, (_, acc) in eval_blocks.items()},
                "corpus": corpus_summary,
            },
        )
    return PretrainSetup(
        loaded=loaded,
        vocab=vocab,
        model=model,
        tokenizer=tokenizer,
        objective=objective,
        sharded=sharded,
        mode=mode,
        data=data,
        collator=collator,
    )


def _log_corpus(corpus) -> dict | None:
    """The corpus summary for the accounting file (None on processes that never read the text)."""
    if corpus is None:
        return None
    summary = corpus.summary()
    log(
        f"corpus: {sum(len(d) for d in corpus.train.values()):,} training documents from "
        f"{len(corpus.train)} source(s); held-out sets: {', '.join(corpus.eval) or 'none'}"
    )
    for name, st in corpus.stats.items():
        if st.capped_at is not None:
            log(f"{name}: read its first {st.capped_at:,} documents (max_documents) and read no further")
    return summary


def _heldout(s: PretrainSetup, model, cfg: PretrainConfig) -> dict:
    return word_perplexities(
        evaluate_all(model, s.data.eval, s.collator, s.objective, s.tokenizer, cfg.train.batch_size, s.mode),
        s.data.eval_words,
    )


def _train(s: PretrainSetup, cfg: PretrainConfig):
    """Trains; returns the trained model, the training outcome and the run's training seconds."""
    model, train_blocks = s.model, s.data.train
    if cfg.lora.enabled and not s.sharded:
        model = apply_lora(model, cfg.lora, s.objective)
    if cfg.train.gradient_checkpointing:
        model.config.use_cache = False
    hf_eval = {name: blocks for name, (blocks, _) in s.data.eval.items()} or None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if s.objective == "masked":  # masks drawn from (seed, epoch, example): a resume masks as the run did
        train_blocks = MaskSeeded(train_blocks, cfg.train.seed)
    t_train = time.time()
    outcome = run_training(
        model,
        s.tokenizer,
        train_blocks,
        s.collator,
        cfg.train,
        eval_datasets=hf_eval,
        tokens_per_example=cfg.data.block_size,
        **training_options(cfg, s.vocab, model, s.tokenizer),
    )
    # The whole run: the parts before a resume (up to the checkpoint it resumed from) count too.
    train_seconds = time.time() - t_train + outcome.run.get("earlier_seconds", 0.0)
    return outcome.trainer.model, outcome, train_seconds


def _train_summary(outcome, train_seconds: float, t_start: float) -> dict:
    tokens_seen = int(getattr(outcome.trainer.state, "num_input_tokens_seen", 0) or 0)
    return {
        "steps": outcome.global_step,
        "train_loss": outcome.train_loss,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
        "peak_memory_mb": _peak_memory_mb(),
        "wall_seconds": round(time.time() - t_start, 2),
        "resumed_from": outcome.resumed_from,
        "parts": outcome.run.get("parts", 1),
        "speed": speed_metrics(outcome.speed, tokens_seen / max(train_seconds, 1e-9)),
    }


def _save(s: PretrainSetup, model, cfg: PretrainConfig, out: Path, metrics: dict) -> None:
    # sharded: streamed shard by shard (a LoRA adapter gathered to the main process)
    save_whole(model, s.tokenizer, out, lambda m: save_model(m, s.tokenizer, out, merge=cfg.lora.merge))
    if is_main_process():
        write_meta(
            out,
            stage="pretrain",
            objective=s.objective,
            packing=s.mode,
            model_type=s.loaded.model_type,
            parent=cfg.model.path,
            lora=cfg.lora.enabled and not cfg.lora.merge,
            accounting=s.data.accounting.__dict__,
        )
        update_metrics(out, metrics)
        log(f"saved {out}")


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except Exception:  # noqa: BLE001 - memory is informative, never fatal
        return float("nan")
