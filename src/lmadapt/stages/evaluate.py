"""`lmadapt evaluate`: held-out language-modelling quality of any model folder, in one command.

Causal models get loss and perplexity; encoders get masked-token loss (fixed-seed masks) and
pseudo-perplexity. Text is packed exactly as training packs it, so numbers compare with the
before/after metrics a pretrain stage writes.

    lmadapt evaluate runs/dapt --data ../shared/data/computing/valid.jsonl.gz ../shared/data/general/valid.jsonl.gz

Capabilities besides perplexity: lm-evaluation-harness tasks (``harness``, train/harness.py) and
instruction retention on held-out instructions (``retention``, tasks/retention.py).

    lmadapt evaluate runs/dapt --harness-tasks lmadapt_cloze --harness-limit 100

Sharded (``--sharding fsdp`` under torchrun, or an ``accelerate launch`` FSDP config): the model is
sharded over the processes (FSDP2) and every process runs the same batches in lockstep (each
forward pass gathers one layer at a time), so a model too large for one device can be scored. The
main process alone loads the model (host RAM for it once); the others build an empty copy on the
meta device whose shards are filled from the main process's (models/on_main.py, train/fsdp_init.py).
"""

from __future__ import annotations

from ..config.base import ConfigError
from ..config.capability import HarnessConfig, RetentionConfig
from ..config.model import ModelConfig
from ..data.heldout import heldout_set
from ..models.load import check_block_size, load_model, supports_document_packing
from ..runtime.dist import to_process_device
from ..train.fsdp import apply_launch_options, check_config, is_sharded, prepare_model
from ..train.lm_eval import heldout_collator, score_sets
from ..train.zero3 import load_whole


def evaluate_model(
    model_dir: str,
    data: list[str],
    *,
    text_field: str = "text",
    split_docs: str = "file",
    block_size: int = 512,
    batch_size: int = 8,
    max_tokens: int | None = None,
    packing: str = "auto",
    loaded=None,
    harness: HarnessConfig | None = None,
    retention: RetentionConfig | None = None,
    trust_remote_code: bool = False,
    sharding: str = "none",
) -> dict:
    """Metrics per data set: {name: {loss, perplexity, tokens, documents, ...}}, and the harness /
    instruction-retention scores when those are configured. Code shipped with the model runs only
    with ``trust_remote_code`` (the caller's ``--trust-remote-code``, never the folder's own files).
    ``sharding``: none | fsdp (every process must call this then; see the module doc)."""
    opts = sharding_options(sharding)
    if loaded is None:
        # sharded: the main process alone loads, the others' shards are filled from it (models.on_main)
        loaded = load_model(
            ModelConfig(path=str(model_dir), trust_remote_code=trust_remote_code),
            weights_on_main=opts.sharding == "fsdp",
        )
    check_block_size(loaded.model, block_size, "block_size")
    model, tokenizer, objective = prepare_model(loaded.model, opts), loaded.tokenizer, loaded.objective
    mode = packing
    if mode == "auto":
        mode = "document" if supports_document_packing(model, objective) else "concat"
    collator = heldout_collator(objective, mode, tokenizer, model)
    results = {"model": str(model_dir), "objective": objective, "packing": mode, "sets": {}}
    if is_sharded(model):
        results["sharding"] = "fsdp"
    for path in data:
        held = heldout_set(
            path,
            tokenizer,
            objective,
            mode,
            block_size=block_size,
            max_tokens=max_tokens,
            text_field=text_field,
            split_docs=split_docs,
        )
        results["sets"].update(
            score_sets(model, {held.name: held}, collator, objective, tokenizer, batch_size=batch_size, mode=mode)
        )
    results.update(capability_scores(model, tokenizer, objective, harness, retention))
    return results


def sharding_options(sharding: str):
    """The ``train.sharding`` / ``train.fsdp`` pair a scoring-only model is sharded with (FSDP2's
    defaults; an ``accelerate launch`` FSDP config's options applied, and sharding turned on)."""
    from types import SimpleNamespace

    from ..config.sharding import FsdpConfig

    if sharding not in ("none", "fsdp"):
        raise ConfigError(f"--sharding: {sharding!r} is not none or fsdp")
    opts = SimpleNamespace(sharding=sharding, fsdp=FsdpConfig())
    apply_launch_options(opts)
    check_config(opts)
    load_whole()  # a DeepSpeed launch: scored whole, not partitioned by an earlier stage's config
    return opts


def capability_scores(
    model, tokenizer, objective: str, harness: HarnessConfig | None, retention: RetentionConfig | None
) -> dict:
    """{"harness": {task: scores}, "instruction_retention": {...}} for the configured ones."""
    out: dict = {}
    if not ((harness and harness.enabled) or (retention and retention.enabled)):
        return out
    if objective != "causal":
        raise ConfigError(
            f"harness / instruction retention: score causal language models; this model's objective is {objective}"
        )
    if not is_sharded(model):  # (a sharded model is placed already; its shards may be offloaded on purpose)
        model = to_process_device(model)  # loaded models start on the CPU (a no-op when already there)
    if harness and harness.enabled:
        from ..train.harness import run_harness

        out["harness"] = run_harness(model, tokenizer, harness)
    if retention and retention.enabled:
        from ..tasks.retention import instruction_retention

        out["instruction_retention"] = instruction_retention(model, tokenizer, retention)
    return out
