"""How much memory training a model takes, per process, before launching it: pure arithmetic.

    shape = model_shape(config)                 # counted on the meta device: no weights allocated
    p = plan(shape, Setup(precision="bf16", processes=8, sharding="fsdp", batch_size=4, block_size=2048))
    p.device_bytes, p.host_bytes, p.bytes_per_param   # per process
    gpus_needed(shape, setup, gpu_gib=80)        # the fewest GPUs of 80 GiB that fit it (None: never)

Bytes per parameter (AdamW; Trainer keeps fp32 master weights under bf16/fp16 *mixed* precision):

full, one copy         4 weights + 4 grads + 8 Adam (m, v)                = 16 (+ 4 bytes of step counter per tensor)
                       bf16/fp16 mixed: the same 16, plus autocast's 2-byte copy of the weights while they are
                       in use; weights loaded in bf16 (model.dtype bfloat16, no fp32 master): 2 + 2 + 4 = 8
data parallel (N > 1)  + 4 DDP gradient buckets (torch's default gradient_as_bucket_view=False)
fsdp over N            16 / N, plus the gathered units: the root (embeddings, head, final norm; FSDP2 keeps it
                       gathered) and two layers in flight (current + prefetched) in the compute dtype, with one
                       layer's unsharded gradient; reshard_after_forward false: every layer stays gathered
fsdp + cpu_offload     the 16 / N live in host RAM; the device holds the gathered units and activations
LoRA                   frozen base at its weight bytes (4 fp32, 2 bf16), / N under fsdp; adapters 16 each

Activations (tokens T = micro-batch x block, Llama-style layer, sdpa/flash attention, measured on
transformers 5 with torch's saved-tensor hooks: see tests/models/test_memory_plan.py):
per layer  T x [hb x (8 h + 2 heads) + cb x (4 I + 2 kv_dim)]      (SwiGLU; GPT-2: 10 h, 5 I; BERT: 2 I)
eager attention adds T x heads x block x 4 per layer (the attention probabilities), attention dropout
(GPT-2, BERT checkpoints) T x heads x block x 12 (sdpa's math path on CPU; flash-attention 2 avoids it)
checkpointing keeps T x h x hb per layer plus one layer's worth during its recompute
logits     lmadapt's chunked LM loss (train/loss.py): one chunk's fp32 logits (~T x h floats), the hidden
           states' gradient and the head's fp32 gradient (vocab x h x 4); the standard loss: T x vocab x
           (cb + 4 + 4), the logits, their fp32 log-softmax kept for backward, and its gradient (sharded
           runs too: the fused loss runs inside the forward, on the head's gathered weight)
where hb is the residual stream's bytes (4 with fp32 weights, also under autocast) and cb the matmul
output's (2 under bf16/fp16). The planned peak adds weights, optimizer state, transients and the
larger of (activations + logits) and gradients: the Trainer sets gradients to None after each step,
so with one micro-batch per step they fill in as backward frees the activations (under gradient
accumulation both are counted). Checked on an H200 (1B Llama, bf16, 2 x 2,048 tokens): 23.0 GiB
planned, 21.0 measured unsharded; 7.9 planned, 6.1 measured under FSDP2 + offload: an upper bound
within ~10-30%. Host RAM: ``host`` (offloaded state) plus ``host_transient_bytes``. GPU sizes are GiB, of which
``usable`` (default 90%) is counted (CUDA context, allocator fragmentation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

GIB = 2**30
GPU_SIZES_GIB = (24, 40, 80, 141)
USABLE = 0.9
_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs to know about a model; see :func:`model_shape`."""

    params: int  # unique parameters (tied weights once)
    tensors: int  # unique parameter tensors (AdamW keeps a step counter per tensor)
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_dim: int  # key/value width (heads x head_dim, less with grouped-query attention)
    vocab: int
    layer_params: int  # the largest transformer layer (an FSDP unit)
    root_params: int  # everything outside the layers: embeddings, head, final norm
    gated_mlp: bool = True  # SwiGLU (Llama, Mistral, Qwen) vs plain GELU MLP (GPT-2, BERT)
    mlp_factor: int = 4  # intermediate-sized tensors a layer keeps for backward (see _mlp_factor)
    h_factor: int = 8  # hidden-sized ones (GPT-2's fused qkv output adds two)
    attn_dropout: float = 0.0  # attention-probability dropout: the CPU math path keeps heads x block per token
    outside_factor: int = 3  # hidden-sized tensors outside the layers (embeddings, final norm; BERT's MLM head: 7)
    model_type: str = ""
    lora_params: int = 0  # adapter parameters at lora_r on the default targets
    lora_tensors: int = 0
    lora_r: int = 16


@dataclass(frozen=True)
class Setup:
    """How the model is trained: method, precision, processes, sharding, batch."""

    method: str = "full"  # full | lora
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed: fp32 master weights)
    weights_dtype: str = "float32"  # the loaded weights' dtype (bfloat16: no fp32 master copy)
    processes: int = 1
    sharding: str = "none"  # none | fsdp
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    batch_size: int = 8
    block_size: int = 512
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | flash_attention_2 | eager
    loss: str = "chunked"  # chunked (train.loss auto/chunked/liger: never the full logits) | standard
    grad_accum: int = 1  # > 1: the gradients live through the next micro-batch's forward


@dataclass
class Plan:
    """Bytes per process. ``state`` is persistent (weights, grads, optimizer), split by kind."""

    setup: Setup
    params: int
    state: dict = field(default_factory=dict)  # kind -> bytes on the device
    host: dict = field(default_factory=dict)  # kind -> bytes in host RAM (cpu_offload)
    host_transient_bytes: int = 0  # host RAM at load / optimizer step / save, above ``host``
    transient_bytes: int = 0  # gathered units, autocast copies
    activation_bytes: int = 0
    logits_bytes: int = 0

    @property
    def state_bytes(self) -> int:
        return sum(self.state.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def host_peak_bytes(self) -> int:
        return self.host_bytes + self.host_transient_bytes

    @property
    def device_bytes(self) -> int:
        """The planned peak on the training device (GPU, or RAM when training on the CPU). The Trainer
        frees the gradients after each optimizer step (zero_grad sets them to None), so with one
        micro-batch per step they fill in only as backward frees the activations: the peak holds the
        larger of the two, not both (counting both planned 26.7 GiB for a 1B Llama that peaked at 21.0
        on an H200: benchmarks/results/fsdp_scaling.md)."""
        grads = self.state.get("grads", 0)
        live = self.activation_bytes + self.logits_bytes
        during_backward = max(live, grads) if self.setup.grad_accum <= 1 else live + grads
        return self.state_bytes - grads + self.transient_bytes + during_backward

    @property
    def bytes_per_param(self) -> float:
        """Persistent bytes per model parameter on the device, per process."""
        return self.state_bytes / max(self.params, 1)

    def to_dict(self) -> dict:
        return {
            "setup": asdict(self.setup),
            "params": self.params,
            "state": dict(self.state),
            "host": dict(self.host),
            "state_bytes": self.state_bytes,
            "host_bytes": self.host_bytes,
            "transient_bytes": self.transient_bytes,
            "activation_bytes": self.activation_bytes,
            "logits_bytes": self.logits_bytes,
            "host_transient_bytes": self.host_transient_bytes,
            "host_peak_bytes": self.host_peak_bytes,
            "device_bytes": self.device_bytes,
            "bytes_per_param": round(self.bytes_per_param, 3),
        }


# ------------------------------------------------------------------------------------------- shape


def _unique(params) -> list:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def lora_size(model, r: int = 16, targets=None) -> tuple[int, int]:
    """(parameters, tensors) LoRA rank ``r`` adds on ``targets`` (default: the registry's for this
    model): r x (in + out) per adapted linear layer, in two tensors (A and B)."""
    from .registry import is_head_module, is_linear_like, lora_targets

    targets = set(targets or lora_targets(model))
    n = tensors = 0
    for name, mod in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in targets and is_linear_like(mod) and not is_head_module(name):
            if hasattr(mod, "in_features"):
                fan_in, fan_out = mod.in_features, mod.out_features
            else:  # transformers Conv1D: weight [in, out]
                fan_in, fan_out = mod.weight.shape
            n += r * (int(fan_in) + int(fan_out))
            tensors += 2
    return n, tensors


def _layer_modules(model) -> list:
    """The transformer layers (FSDP's units): modules of a class in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def model_shape(config_or_model, *, lora_r: int = 16) -> ModelShape:
    """The :class:`ModelShape` of a model, or of the one a transformers config builds (on the meta
    device, so an 8B config costs no memory)."""
    model = config_or_model
    if not hasattr(model, "parameters"):
        from .presets import meta_model

        model = meta_model(config_or_model)
    cfg = model.config
    params = _unique(model.parameters())
    layers = _layer_modules(model)
    sizes = [sum(p.numel() for p in _unique(m.parameters())) for m in layers]
    total = sum(p.numel() for p in params)
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    lora_n, lora_t = lora_size(model, lora_r)
    dropout = max(
        float(getattr(cfg, k, 0.0) or 0.0) for k in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")
    )
    return ModelShape(
        params=int(total),
        tensors=len(params),
        hidden=hidden,
        layers=int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None) or len(layers)),
        intermediate=int(inter),
        heads=heads,
        kv_dim=kv_heads * head_dim,
        vocab=int(cfg.vocab_size),
        layer_params=max(sizes, default=0),
        root_params=int(total - sum(sizes)),
        gated_mlp=gated,
        mlp_factor=_mlp_factor(cfg, gated),
        h_factor=10 if getattr(cfg, "model_type", "") == "gpt2" else 8,
        attn_dropout=dropout,
        outside_factor=7
        if any(".predictions.transform" in n or n.endswith("predictions.transform") for n, _ in model.named_modules())
        else 3,
        model_type=str(getattr(cfg, "model_type", "")),
        lora_params=lora_n,
        lora_tensors=lora_t,
        lora_r=lora_r,
    )


def _mlp_factor(cfg, gated: bool) -> int:
    """Intermediate-sized tensors one MLP keeps for backward, measured with saved-tensor hooks:
    SwiGLU 4 (gate, SiLU(gate), up, their product), tanh-approximated GELU 5 (its polynomial's
    pieces + the down projection's input), exact GELU/ReLU 2 (its input and output)."""
    if gated:
        return 4
    act = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "") or "")
    return 5 if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_tanh") else 2


# ------------------------------------------------------------------------------------------- plan


def _precision_bytes(setup: Setup) -> tuple[int, int, int, bool]:
    """(weight bytes, residual-stream bytes, matmul-output bytes, autocast?) of a setup."""
    wb = _DTYPE_BYTES.get(setup.weights_dtype, 4)
    mixed = setup.precision in ("bf16", "fp16") and wb == 4
    cb = 2 if setup.precision in ("bf16", "fp16") or wb == 2 else 4
    hb = wb
    if setup.sharding == "fsdp" and mixed:
        hb = 2  # FSDP2's MixedPrecisionPolicy gathers the weights in the low dtype: no fp32 residual stream
    return wb, hb, cb, mixed and setup.sharding != "fsdp"


def layer_bytes_per_token(shape: ModelShape, setup: Setup) -> int:
    """Bytes one transformer layer keeps for backward per token (without checkpointing)."""
    _, hb, cb, _ = _precision_bytes(setup)
    per_layer = hb * (shape.h_factor * shape.hidden + 2 * shape.heads) + cb * (
        shape.mlp_factor * shape.intermediate + 2 * shape.kv_dim
    )
    if setup.attention == "eager":
        per_layer += 4 * shape.heads * setup.block_size
    elif shape.attn_dropout > 0 and setup.attention != "flash_attention_2":
        per_layer += 12 * shape.heads * setup.block_size  # probabilities, dropout mask, dropped probabilities
    return per_layer


def activation_bytes(shape: ModelShape, setup: Setup) -> tuple[int, int]:
    """(activation bytes, logits bytes) of one micro-batch's forward pass, kept for backward."""
    _, hb, cb, _ = _precision_bytes(setup)
    tokens = setup.batch_size * setup.block_size
    per_layer = layer_bytes_per_token(shape, setup)
    outside = shape.outside_factor * shape.hidden * hb  # embedding output, final norm (an MLM head's transform)
    if setup.gradient_checkpointing:
        acts = tokens * (shape.layers * shape.hidden * hb + per_layer + outside)
    else:
        acts = tokens * (shape.layers * per_layer + outside)
    return int(acts), int(logits_bytes(shape, setup))


def _chunk_rows(n_rows: int, vocab: int, hidden: int) -> int:
    """train/loss.py's chunk size (Liger's rule): about vocab / hidden chunks of a power of two rows."""
    chunks = max(1, math.ceil(vocab / max(hidden, 1)))
    return max(1, 1 << max(0, math.ceil(math.log2(max(1, math.ceil(n_rows / chunks))))))


def logits_bytes(shape: ModelShape, setup: Setup) -> int:
    """Peak bytes of the LM head + loss. standard: T x vocab x (cb + 4 + 4), the logits, their fp32
    log-softmax kept for backward and its gradient. chunked (lmadapt's default LM loss): one chunk's
    fp32 logits, the hidden states' gradient and the head's fp32 gradient accumulator, both computed
    in forward, plus the head weight cast to the compute dtype under autocast."""
    wb, hb, cb, _ = _precision_bytes(setup)
    tokens = setup.batch_size * setup.block_size
    if setup.loss == "standard":
        return tokens * shape.vocab * (cb + 4 + 4)
    chunk = min(tokens, _chunk_rows(tokens, shape.vocab, shape.hidden))
    head = shape.vocab * shape.hidden
    # FSDP2 gathers the head's weight in the compute dtype already (the root unit's, counted there): no cast copy
    cast = head * cb if cb != wb and setup.sharding != "fsdp" else 0
    return chunk * shape.vocab * 4 + tokens * shape.hidden * hb + head * 4 + cast


def plan(shape: ModelShape, setup: Setup) -> Plan:
    """Bytes per process of training ``shape`` as ``setup`` says (see the module doc for the rules)."""
    wb, _, cb, autocast = _precision_bytes(setup)
    n = max(1, setup.processes) if setup.sharding == "fsdp" else 1
    lora = setup.method == "lora"
    trainable = shape.lora_params if lora else shape.params
    t_tensors = shape.lora_tensors if lora else shape.tensors
    frozen = shape.params if lora else 0
    # trainable weights are fp32 masters (4) unless the weights were loaded in the low dtype
    tb = 4 if lora else wb
    state = {
        "weights": math.ceil(trainable * tb / n) + math.ceil(frozen * wb / n),
        "grads": math.ceil(trainable * tb / n),
        "optimizer": math.ceil(trainable * 2 * tb / n) + 4 * t_tensors,  # m, v (+ a float32 step per tensor)
    }
    if setup.sharding != "fsdp" and setup.processes > 1:
        state["ddp_buckets"] = trainable * tb  # DDP's flat gradient buckets beside the .grad tensors
    transient = 0
    if autocast:
        transient += (shape.params if not lora else shape.params + shape.lora_params) * 2  # autocast weight copies
    if setup.sharding == "fsdp":
        gathered_layers = shape.layers if not setup.reshard_after_forward else min(2, shape.layers)
        gb = cb if setup.precision in ("bf16", "fp16") else wb
        transient += (shape.root_params + gathered_layers * shape.layer_params) * gb
        transient += (shape.lora_params if lora else shape.layer_params) * 4  # one unit's unsharded gradient
    host: dict = {}
    # host RAM beyond the offloaded state: the whole model once while it loads (before it moves to the
    # device or is sharded); under cpu_offload, at the optimizer step torch's foreach AdamW on the CPU
    # makes a float32 temporary per trainable parameter, and at save rank 0 gathers the full state dict
    # beside the offloaded state. Checked on an H200: 1B Llama, FSDP2 + offload, 24.25 GB planned
    # (16.17 state + 4.04 + 4.04), 24.6 GB measured above the process's baseline.
    load_copy = shape.params * wb
    host_transient = load_copy
    if setup.sharding == "fsdp" and setup.cpu_offload:
        host, state = state, {}
        host_transient = load_copy + math.ceil(trainable * 4 / n)
    acts, logits = activation_bytes(shape, setup)
    return Plan(
        setup=setup,
        params=shape.params,
        state=state,
        host=host,
        transient_bytes=int(transient),
        activation_bytes=acts,
        logits_bytes=logits,
        host_transient_bytes=int(host_transient),
    )


def gpus_needed(
    shape: ModelShape, setup: Setup, gpu_gib: float, *, usable: float = USABLE, max_gpus: int = 4096
) -> int | None:
    """The fewest processes (one GPU each) of ``gpu_gib`` GiB whose planned peak fits ``usable`` of
    it under ``setup``'s sharding; None when no count fits (unsharded: more GPUs do not help)."""
    budget = gpu_gib * GIB * usable
    if setup.sharding != "fsdp":
        return 1 if plan(shape, replace(setup, processes=1)).device_bytes <= budget else None
    lo = 1
    if plan(shape, replace(setup, processes=max_gpus)).device_bytes > budget:
        return None
    hi = max_gpus
    while lo < hi:  # per-process bytes fall as processes grow: bisect
        mid = (lo + hi) // 2
        if plan(shape, replace(setup, processes=mid)).device_bytes <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo
