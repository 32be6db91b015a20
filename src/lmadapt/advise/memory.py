"""The memory plan as a user reads it: `lmadapt advise` and `lmadapt pretrain RECIPE --dry-run`.

The arithmetic is :mod:`lmadapt.models.memory_plan`; this module finds the model's shape from a
recipe without loading weights (its config on the meta device), turns the recipe's train section
into a :class:`Setup`, and renders the table: bytes per parameter for full / LoRA / sharded over N
processes with and without CPU offload, and how many GPUs of 24/40/80/141 GiB each one needs.

    lmadapt pretrain recipe.yaml --dry-run            # prints the plan, trains nothing
"""

from __future__ import annotations

from dataclasses import replace

from ..config.base import ConfigError
from ..models.memory_plan import GIB, GPU_SIZES_GIB, USABLE, ModelShape, Setup, gpus_needed, model_shape, plan

ILLUSTRATIVE_PROCESSES = 8  # one node of 8 GPUs, when the dry run is not itself launched on several


def recipe_model_config(model_cfg):
    """The transformers config a recipe's model section builds, read without loading any weights."""
    from transformers import AutoConfig

    from ..models.load import adapter_base, hub_options, resolve_local, load_tokenizer

    if model_cfg.init == "scratch":
        from ..models.presets import scratch_config

        return scratch_config(model_cfg.arch, model_cfg.size, model_cfg.dims, load_tokenizer(model_cfg.tokenizer))
    if model_cfg.gguf_file:
        raise ConfigError(
            "model.gguf_file: the memory plan reads a model folder's config.json; convert the GGUF "
            "first (lmadapt convert FILE.gguf --output DIR) and plan with model.path: DIR"
        )
    hub = hub_options(model_cfg)
    local = resolve_local(model_cfg.path, "model")
    where = local or model_cfg.path
    base = adapter_base(local) if local else None
    try:
        return AutoConfig.from_pretrained(base or where, **hub)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: cannot read the model config of {base or where}: {exc}") from exc


def _weights_dtype(model_cfg, config) -> str:
    if model_cfg.dtype != "auto":
        return model_cfg.dtype
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(d).replace("torch.", "") if d else "float32"


def _precision(requested: str) -> tuple[str, str | None]:
    """train.precision as the launch will resolve it. 'auto' on a machine without a GPU (a login node
    planning a GPU job) is planned as bf16, what a bf16-capable GPU picks, and said so."""
    if requested != "auto":
        return requested, None
    import torch

    if torch.cuda.is_available():  # train.loop.resolve_precision's rule, without importing the Trainer (~5 s)
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), None
    return "bf16", "train.precision auto: planned as bf16 (what a recent GPU resolves it to; fp32 on this CPU)"


def recipe_setup(cfg, *, block_size: int, processes: int | None = None) -> tuple[ModelShape, Setup, list[str]]:
    """(shape, setup, notes) of a pretrain (or finetune) recipe, launched on ``processes`` (default:
    WORLD_SIZE, else 1)."""
    from ..runtime.dist import world_size

    config = recipe_model_config(cfg.model)
    shape = model_shape(config, lora_r=cfg.lora.r)
    precision, note = _precision(cfg.train.precision)
    attn = cfg.model.attn_implementation or "sdpa"
    fsdp = getattr(cfg.train, "fsdp", None)
    setup = Setup(
        method="lora" if cfg.lora.enabled else "full",
        precision=precision,
        weights_dtype=_weights_dtype(cfg.model, config),
        processes=processes or world_size(),
        sharding=getattr(cfg.train, "sharding", "none"),
        cpu_offload=bool(fsdp and fsdp.cpu_offload),
        reshard_after_forward=bool(fsdp is None or fsdp.reshard_after_forward),
        batch_size=cfg.train.batch_size,
        block_size=block_size,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        attention=attn,
        loss="standard" if getattr(cfg.train, "loss", "auto") == "standard" else "chunked",
        grad_accum=cfg.train.grad_accum,
    )
    return shape, setup, [note] if note else []


def _gib(b: float) -> str:
    """Bytes as GiB (MiB below 1 GiB, so a tiny model's plan is still readable)."""
    if b < GIB:
        return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 2**20:.3f} MiB"
    return f"{b / GIB:.2f} GiB" if b < 10 * GIB else f"{b / GIB:.1f} GiB"


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def comparison_rows(shape: ModelShape, base: Setup, processes: int) -> list[tuple[str, Setup]]:
    """The setups the table compares: full and LoRA, alone, data parallel, sharded, sharded + offload."""
    full, lora = replace(base, method="full"), replace(base, method="lora")
    n = processes
    rows = [
        ("full, 1 process", replace(full, processes=1, sharding="none")),
        (f"full, data parallel x{n}", replace(full, processes=n, sharding="none")),
        (f"full, fsdp x{n}", replace(full, processes=n, sharding="fsdp", cpu_offload=False)),
        (f"full, fsdp x{n} + cpu offload", replace(full, processes=n, sharding="fsdp", cpu_offload=True)),
        (f"LoRA r={shape.lora_r}, 1 process", replace(lora, processes=1, sharding="none")),
        (f"LoRA r={shape.lora_r}, fsdp x{n}", replace(lora, processes=n, sharding="fsdp", cpu_offload=False)),
    ]
    return rows


def plan_summary(
    shape: ModelShape, base: Setup, *, processes: int = ILLUSTRATIVE_PROCESSES, gpu_sizes=GPU_SIZES_GIB
) -> dict:
    """Plain-JSON plan: this setup's bytes and, per compared setup, bytes and GPUs needed per size."""
    this = plan(shape, base)
    rows = []
    for label, s in comparison_rows(shape, base, processes):
        p = plan(shape, s)
        rows.append(
            {"label": label, **p.to_dict(), "gpus_needed": {str(g): gpus_needed(shape, s, g) for g in gpu_sizes}}
        )
    return {
        "shape": shape.__dict__,
        "this": this.to_dict(),
        "rows": rows,
        "usable_fraction": USABLE,
        "gpu_sizes_gib": list(gpu_sizes),
    }


def _fmt_gpus(n: int | None, sharded: bool) -> str:
    return "-" if n is None else str(n) if sharded else "1"


def render_plan(summary: dict, notes: list[str] | None = None) -> str:
    """The table a user reads before launching (see :func:`plan_summary`)."""
    sh, this = summary["shape"], summary["this"]
    st = this["setup"]
    sizes = summary["gpu_sizes_gib"]
    ckpt = "on" if st["gradient_checkpointing"] else "off"
    lines = [
        f"memory plan: {_count(sh['params'])} parameters ({sh['model_type']}: {sh['layers']} layers, hidden "
        f"{sh['hidden']}, vocab {sh['vocab']:,}); micro-batch {st['batch_size']} x {st['block_size']} tokens, "
        f"{st['precision']} (weights {st['weights_dtype']}), activation checkpointing {ckpt}",
        f"activations {_gib(this['activation_bytes'])} + logits {_gib(this['logits_bytes'])} per process "
        f"(estimate, ~15%)",
    ]
    where = (
        f"fsdp x{st['processes']}" + (" + cpu offload" if st["cpu_offload"] else "")
        if st["sharding"] == "fsdp"
        else f"{st['processes']} process{'es' if st['processes'] > 1 else ''}, unsharded"
    )
    lines.append(
        f"this recipe ({st['method']}, {where}): {this['bytes_per_param']:.2f} B/param on the device, "
        f"peak {_gib(this['device_bytes'])} per process"
        + (f", host RAM {_gib(this['host_bytes'])} per process" if this["host_bytes"] else "")
        + f"; host RAM peak {_gib(this.get('host_peak_bytes', this['host_bytes']))} (loading, and under "
        "offload the optimizer step and the save)"
    )
    head = ("setup", "B/param", "state", "peak", "host", "GPUs of " + "/".join(str(g) for g in sizes) + " GiB")
    rows = []
    for r in summary["rows"]:
        sharded = r["setup"]["sharding"] == "fsdp"
        host_bpp = r["host_bytes"] / max(r["params"], 1)
        bpp = f"{r['bytes_per_param']:.2f}" + (f" (+{host_bpp:.2f} host)" if r["host_bytes"] else "")
        rows.append(
            (
                r["label"],
                bpp,
                _gib(r["state_bytes"] + r["host_bytes"]),
                _gib(r["device_bytes"]),
                _gib(r["host_bytes"]) if r["host_bytes"] else "-",
                "/".join(_fmt_gpus(r["gpus_needed"][str(g)], sharded) for g in sizes),
            )
        )
    cells = [head, *rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"GPUs: fsdp rows: the fewest processes (one GPU each) whose planned peak fits {USABLE:.0%} of a GPU "
        "of that size; unsharded rows: 1 = fits on each GPU; '-': does not fit at any count. cpu offload "
        "moves the state to host RAM: 16 B/param / processes per process. Peak = weights + optimizer state "
        "+ gathered layers + the larger of activations + logits and gradients (both under gradient "
        "accumulation; an upper bound); B/param: persistent bytes per parameter per process."
    )
    lines += [f"note: {n}" for n in notes or []]
    return "\n".join(lines)


def dry_run(cfg, *, block_size: int | None = None) -> str:
    """`lmadapt pretrain RECIPE --dry-run`: the plan of this recipe, as the launch would run it."""
    from ..runtime.dist import world_size
    from ..train.fsdp import apply_launch_options
    from ..train.zero3 import zero3_launch

    apply_launch_options(cfg.train)  # under `accelerate launch --config_file` with FSDP: as the launch would train
    block = block_size or getattr(getattr(cfg, "data", None), "block_size", None) or 512
    shape, setup, notes = recipe_setup(cfg, block_size=block)
    whole = shape.params * (2 if setup.weights_dtype in ("bfloat16", "float16") else 4)
    zero3 = zero3_launch()
    if zero3:
        # ZeRO-3 partitions weights, gradients and optimizer state over the processes as FSDP2 does
        setup = replace(setup, sharding="fsdp", cpu_offload=False)
        notes.append(
            "DeepSpeed ZeRO-3 launch: planned as full sharding (weights, gradients and optimizer state "
            "partitioned over the processes), a lower bound: not counted are DeepSpeed's fp32 master copy of "
            "each partition, its buckets, the parameters it keeps gathered (up to stage3_max_live_parameters, "
            "1e9 by default: a smaller model is held whole while it runs) and its offload options (measured on "
            "CPU: benchmarks/results/fsdp_scaling.md). Host RAM: every process loads the whole model "
            f"({_gib(whole)}) before the engine partitions it (train/zero3.py)."
        )
    n = world_size() if world_size() > 1 else ILLUSTRATIVE_PROCESSES
    if setup.sharding == "fsdp" and setup.processes == 1:
        notes.append(
            f"{'a ZeRO-3 launch' if zero3 else 'train.sharding fsdp'} in a single process: launch with torchrun "
            f"--nproc_per_node N (or accelerate launch) to shard over N; the table shows N = {n}."
        )
    if setup.sharding == "fsdp" and not zero3:
        notes.append(
            f"host RAM: the main process alone loads the whole model ({_gib(whole)}) and fills every "
            "process's shards from it; the final model is written one gathered parameter at a time (a "
            "LoRA model is gathered whole on the main process; train/fsdp.py, train/fsdp_save.py)."
        )
    src = cfg.model.path or f"scratch {cfg.model.arch} {cfg.model.size or ''}".strip()
    return f"dry run: {src}; nothing is trained\n" + render_plan(plan_summary(shape, setup, processes=n), notes)


def advise_plan(model, *, precision: str, batch_size: int = 8, block_size: int = 512, lora_r: int = 16) -> dict:
    """The plan section of `lmadapt advise`'s measurements, from the loaded model."""
    shape = model_shape(model, lora_r=lora_r)
    setup = Setup(precision=precision, batch_size=batch_size, block_size=block_size)
    return plan_summary(shape, setup)


def render_advise_plan(summary: dict | None) -> list[str]:
    """Lines for `lmadapt advise`'s report (none for measurements saved before the planner)."""
    if not summary or "rows" not in summary:
        return []
    return render_plan(summary).splitlines()


__all__ = ["advise_plan", "dry_run", "plan_summary", "recipe_setup", "render_advise_plan", "render_plan"]
