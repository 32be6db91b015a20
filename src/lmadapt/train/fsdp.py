"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``), chosen by ``train.sharding: fsdp``
or by an ``accelerate launch`` config that turns FSDP on.

Why ``fully_shard`` directly and not accelerate's FSDP plugin (``TrainingArguments.fsdp``):
accelerate only switches to FSDP on GPU-type launches (``AcceleratorState`` never sets
``DistributedType.FSDP`` for ``MULTI_CPU``: the Trainer silently falls back to DDP), so the plugin
path could not be tested on a CPU with gloo. One code path on CPU and GPU: this module shards
the model before the Trainer sees it and marks it the way transformers marks a model sharded at
load time (``_is_distributed_loading_by_transformers``): the Trainer then neither moves it nor
wraps it in DDP, and defers FSDP's gradient reduction across gradient-accumulation micro-batches.

What the Trainer cannot do for such a model, :class:`ShardedCheckpoints` does: checkpoints are
written with ``torch.distributed.checkpoint`` (each process writes its own shards, in accelerate's
folder names ``pytorch_model_fsdp_0`` / ``optimizer_0``), and loaded back for resume and for the
best checkpoint. The final model is streamed to a save_pretrained folder one tensor at a time
(:func:`save_whole`, train/fsdp_save.py); a LoRA adapter (small) is gathered to the main process
(:func:`unsharded_on_main`) and saved there.
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config.base import ConfigError
from ..models.on_main import weights_on_main
from ..runtime import dist
from .fsdp_init import broadcast_from_main, fill_from_main, main_state
from .zero3 import deepspeed_launch, is_partitioned, load_whole, zero3_launch

MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's names for a sharded checkpoint's parts
OPTIMIZER_DIR = "optimizer_0"
_SHARDED: "weakref.WeakSet" = weakref.WeakSet()


# --- which launches shard ----------------------------------------------------------------------


def accelerate_fsdp() -> bool:
    """``accelerate launch`` with an FSDP config (it sets ACCELERATE_USE_FSDP for the processes)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes")


def wants_sharding(train_cfg) -> bool:
    return getattr(train_cfg, "sharding", "none") == "fsdp" or accelerate_fsdp()


def apply_launch_options(train_cfg) -> None:
    """An ``accelerate launch`` FSDP config's options where they map onto ``train.fsdp`` (its
    FSDP_* variables); the launch turns sharding on even when the recipe says none."""
    if not accelerate_fsdp():
        return
    fcfg = train_cfg.fsdp
    env = os.environ
    if env.get("FSDP_VERSION", "2").strip() not in ("2", ""):
        dist.log("accelerate config asks for FSDP version 1; lmadapt shards with FSDP2 (fully_shard)")
    if "FSDP_RESHARD_AFTER_FORWARD" in env:
        fcfg.reshard_after_forward = env["FSDP_RESHARD_AFTER_FORWARD"].strip().lower() in ("true", "1", "full_shard")
    if "FSDP_OFFLOAD_PARAMS" in env:
        fcfg.cpu_offload = env["FSDP_OFFLOAD_PARAMS"].strip().lower() in ("true", "1")
    if env.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        fcfg.wrap = [c.strip() for c in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",") if c.strip()]
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "").strip().lower() in ("true", "1"):
        train_cfg.gradient_checkpointing = True
    train_cfg.sharding = "fsdp"


def check_config(train_cfg) -> None:
    """Combinations that cannot work, refused at the start of a stage (on every process alike, so
    none is left waiting in a collective)."""
    if deepspeed_launch() and getattr(train_cfg, "micro_batch", "fixed") == "auto":
        # its trial step would run before the engine exists, on a model the Trainer leaves off the
        # GPU for DeepSpeed, and DeepSpeed fixes its micro-batch from the arguments before the search
        raise ConfigError(
            "train.micro_batch: auto in a DeepSpeed launch: the search cannot run before DeepSpeed's "
            "engine; set train.micro_batch: fixed with the batch_size the memory plan (--dry-run) gives"
        )
    if not wants_sharding(train_cfg):
        return
    if deepspeed_launch():
        raise ConfigError(
            "train.sharding: fsdp in a DeepSpeed launch (ACCELERATE_USE_DEEPSPEED): choose one; "
            "launch without the DeepSpeed config, or set train.sharding: none"
        )
    if train_cfg.fsdp.cpu_offload and dist.use_cpu():
        raise ConfigError(
            "train.fsdp.cpu_offload: moves shards from a GPU to host RAM; this run is on the "
            "CPU already (no GPU visible): set it to false"
        )


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def any_sharded() -> bool:
    """Whether a sharded model is alive in this process (FSDP2, or DeepSpeed ZeRO-3 partitions the
    model once the Trainer starts): evaluations must then run in lockstep."""
    return len(_SHARDED) > 0 or zero3_launch()


# --- sharding ----------------------------------------------------------------------------------


def _ensure_group() -> None:
    """The process group: torchrun's (through dist's accelerate state), or a group of one for a
    single process (FSDP2 needs a group even then: one process with cpu_offload fits a larger model)."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        return
    if dist.world_size() > 1:
        dist.barrier()  # joins the group
        return
    backend = "gloo" if dist.use_cpu() else "nccl"
    tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _units(model, names: list[str]) -> list:
    base = _base(model)
    wanted = list(names) or list(getattr(base, "_no_split_modules", None) or [])
    if not wanted:
        raise ConfigError(
            f"train.fsdp.wrap: {type(base).__name__} names no transformer layer class "
            f"(_no_split_modules); list the module classes to shard one by one"
        )
    units = [m for m in model.modules() if type(m).__name__ in wanted]
    # A unit holding a tied weight (BERT's word embeddings, also its MLM decoder) would reshard it
    # while the root still uses it: such a unit stays in the root's.
    names_of: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        names_of[id(p)] = names_of.get(id(p), 0) + 1
    units = [m for m in units if not any(names_of.get(id(p), 0) > 1 for p in m.parameters())] or units
    if not units:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            f"train.fsdp.wrap: no module of class {', '.join(wanted)} in {type(base).__name__} "
            f"(its classes: {', '.join(found[:12])}...)"
        )
    # a unit inside another is sharded first (fully_shard goes bottom-up): reverse module order
    return units[::-1]


def _policies(fcfg, precision: str) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs: dict = {"reshard_after_forward": fcfg.reshard_after_forward}
    if precision in ("bf16", "fp16"):
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=low, reduce_dtype=torch.float32 if fcfg.reduce_fp32 else low
        )
    if fcfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    return kwargs


def shard_model(model, train_cfg):
    """``model`` (a transformers model, or a peft model around one: the frozen base and the adapters
    are sharded alike) sharded in place over every process: each unit (a transformer layer by
    default, ``train.fsdp.wrap``) and the rest as the root unit. Returns the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if is_sharded(model):
        return model
    fcfg = train_cfg.fsdp
    units = _units(model, fcfg.wrap)  # a bad wrap list stops here, before any collective
    # a merge or an evaluation has no train.precision: the model is scored in the dtype it loaded in
    kwargs = _policies(fcfg, dist.resolve_precision(getattr(train_cfg, "precision", "fp32")))
    _ensure_group()
    on_main = weights_on_main(model)  # loaded by the main process only: the others' model is empty (meta)
    state = main_state(model) if on_main else None
    if not on_main:  # every process loaded the whole model: all start from the main process's values
        broadcast_from_main(model)
    mesh = init_device_mesh("cpu" if dist.use_cpu() else "cuda", (dist.world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)
    if on_main:
        fill_from_main(model, state, fcfg.cpu_offload)
        del state
    # The Trainer's contract for a model sharded before it: no device move, no DDP, FSDP's own no_sync.
    _base(model)._is_distributed_loading_by_transformers = True
    model._is_fsdp_managed_module = True
    _SHARDED.add(model)
    loaded = (
        "loaded by the main process only, the others' shards filled from it"
        if on_main
        else "loaded whole by every process"
        if dist.world_size() > 1
        else "loaded by the one process"
    )
    dist.log(
        f"FSDP2: {len(units)} units + root sharded over {dist.world_size()} process(es)"
        f" (reshard_after_forward={fcfg.reshard_after_forward}, cpu_offload={fcfg.cpu_offload}); weights {loaded}"
    )
    return model


def local_part(tensor):
    """This process's part of a sharded parameter or state-dict entry (a DTensor's local shard, a
    view that writes through to the sharded storage FSDP2 gathers from); ``tensor`` itself otherwise."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def loss_across_processes(model, trainer_kwargs: dict | None) -> dict:
    """``trainer_kwargs`` with a loss that averages over the tokens of all processes, as one process
    would. The Trainer multiplies the loss by the number of processes whenever the model's forward
    takes ``**kwargs`` (it then expects the model to divide by the global ``num_items_in_batch``);
    heads whose loss ignores it (BERT's MLM head, sequence classification) would train and log a
    loss that many times too large (seen under DDP too: a 2-process classification fine-tune logged
    1.395 where one process logged 0.698, and stepped with doubled gradients). MLM gets the
    token-mean loss over all processes; other non-causal heads are marked as not taking loss kwargs
    (a mean per process, averaged: the same for equal batches of one label each)."""
    kwargs = dict(trainer_kwargs or {})
    if kwargs.get("compute_loss_func") is not None:
        return kwargs
    name = type(_base(model)).__name__
    if name.endswith("ForMaskedLM"):
        kwargs["compute_loss_func"] = _masked_lm_loss
    elif not name.endswith("ForCausalLM"):
        _base(model).accepts_loss_kwargs = False
    return kwargs


def _masked_lm_loss(outputs, labels, num_items_in_batch=None):
    from transformers.loss.loss_utils import ForMaskedLMLoss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return ForMaskedLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)


def prepare_model(model, train_cfg):
    """The model as a stage trains and scores it: sharded (``train.sharding: fsdp``), else whole on
    this process's device."""
    if wants_sharding(train_cfg):
        return shard_model(model, train_cfg)
    return dist.to_process_device(model)


def input_device(model):
    """Where a batch goes: the process's device for a sharded model (its parameters may be offloaded
    to host RAM), else the device of its first parameter."""
    if is_sharded(model):
        return dist.process_device()
    return next(model.parameters()).device


# --- the whole model, on the main process ------------------------------------------------------


def full_state_dict(model) -> dict:
    """The whole model's state dict on the main process's CPU (empty elsewhere); a collective.
    The main process needs host RAM for the whole model; the others only their shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_on_main(model):
    """A plain (unsharded, CPU) copy of a sharded ``model`` on the main process, None on the others;
    ``model`` itself when it is not sharded. Every process must call it (it gathers).

    The copy is built on the meta device and given the gathered tensors (no second allocation), so
    the existing saving code (peft adapters, merge_and_unload, save_pretrained) runs on it unchanged."""
    if not is_sharded(model):
        return model
    state = full_state_dict(model)
    if not dist.is_main_process():
        return None
    base = _base(model)
    with torch.device("meta"):
        plain = type(base)._from_config(base.config, dtype=base.dtype)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        cfg = model.peft_config[model.active_adapter]
        with torch.device("meta"):
            plain = get_peft_model(plain, cfg)
    _, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    _base(plain).tie_weights()  # assign=True replaced the tied tensors one by one
    left = [n for n, p in plain.named_parameters(remove_duplicate=False) if p.is_meta]
    if left or unexpected:
        raise RuntimeError(f"gathering the sharded model: parameters not gathered {left[:3]}, unknown {unexpected[:3]}")
    return plain.eval()


def save_whole(model, tokenizer, output_dir, save) -> None:
    """Save ``model`` with ``tokenizer`` into ``output_dir``; every process calls it. A sharded (FSDP2 or
    ZeRO-3) plain model is streamed shard by shard (fsdp_save.save_streamed: the main process never holds it whole);
    otherwise ``save(model)`` runs on the main process, with a sharded peft model (its adapter, or a
    merge of it) first gathered there (:func:`unsharded_on_main`)."""
    partitioned = is_partitioned(model)  # DeepSpeed ZeRO-3 (train/zero3.py)
    if (is_sharded(model) or partitioned) and not hasattr(model, "peft_config"):
        from .fsdp_save import save_streamed

        save_streamed(model, tokenizer, output_dir)
        return
    if partitioned:  # a LoRA model: gathered whole on every process while the main one saves (or merges) it
        from .zero3 import gathered

        with gathered(model.parameters()):
            if dist.is_main_process():
                save(model)
        dist.barrier()
        return
    model = unsharded_on_main(model)
    if dist.is_main_process():
        save(model)


# --- checkpoints -------------------------------------------------------------------------------


class ShardedCheckpoints:
    """Trainer mixin for a model sharded by :func:`shard_model`: checkpoints through
    ``torch.distributed.checkpoint`` (every process writes and reads its own shards; a resume on
    a different number of processes reshards them, since DCP stores global tensor layouts)."""

    def save_model(self, output_dir=None, _internal_call: bool = False):
        if not _internal_call:  # a user-level save: the whole model, from the main process
            plain = unsharded_on_main(self.model)
            if plain is not None:
                plain.save_pretrained(output_dir or self.args.output_dir)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        dcp.save(get_model_state_dict(self.model), checkpoint_id=str(Path(output_dir) / MODEL_DIR))
        if self.args.should_save:  # the config, so the folder says what model it holds
            _base(self.model).config.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save(
            {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)},
            checkpoint_id=str(Path(output_dir) / OPTIMIZER_DIR),
        )
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))

    def _load_sharded_model(self, folder: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        path = Path(folder) / MODEL_DIR
        if not path.is_dir():
            raise RuntimeError(
                f"{folder}: no {MODEL_DIR} (not a sharded checkpoint; it was written by an "
                f"unsharded run: resume it with train.sharding: none)"
            )
        state = get_model_state_dict(self.model)
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(self.model, state)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_sharded_model(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_sharded_model(self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        if checkpoint is None:
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        dcp.load(state, checkpoint_id=str(Path(checkpoint) / OPTIMIZER_DIR))
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))

    @contextmanager
    def _defer_fsdp_gradient_reduction(self):
        # The Trainer's version reads a transformers DistributedConfig this model does not have.
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)


# What a launcher asked for (here, not in runtime/dist.py: following it applies train.fsdp's rules)


def check_launch(train_cfg) -> None:
    """At the start of a training stage: a launch that shards the model is followed, not refused.

    ``accelerate launch`` with an FSDP config turns ``train.sharding: fsdp`` on (its FSDP_* options
    mapped onto ``train.fsdp``; train/fsdp.py). A DeepSpeed ZeRO-3 launch is trained by the
    Trainer's DeepSpeed integration, with lmadapt's scoring and saving made partition-aware
    (train/zero3.py)."""
    apply_launch_options(train_cfg)
    check_config(train_cfg)
    load_whole()  # a DeepSpeed launch: this stage's models are built whole (train/zero3.py)
    if zero3_launch():
        dist.log(
            "DeepSpeed ZeRO-3 launch: parameters partitioned by the Trainer's DeepSpeed engine; held-out "
            "scoring in lockstep, the final model streamed to the folder one gathered parameter at a time"
        )
