"""Recipe section for the optimisation loop, shared by every training stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ConfigError, opt
from .sharding import FsdpConfig, Sharding


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, checkpoints and logging."""

    output_dir: str = opt("runs/out", "output folder (model, tokenizer, recipe, metrics, checkpoints)")
    epochs: float = opt(1.0, "passes over the training data (ignored when max_steps or max_tokens is set)")
    max_steps: int | None = opt(None, "stop after this many optimizer steps")
    max_tokens: int | None = opt(None, "stop after about this many training tokens (turned into max_steps)")
    batch_size: int = opt(8, "sequences per device per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    micro_batch: Literal["fixed", "auto"] = opt(
        "fixed",
        "auto (GPU): before training, the largest divisor of batch_size whose trial step fits in memory, "
        "grad_accum grown to keep batch_size x grad_accum (train/micro_batch.py); fixed: batch_size as given",
    )
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    adam_beta2: float = opt(0.95, "AdamW beta2")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    scheduler: Literal["cosine", "linear", "constant", "wsd"] = opt(
        "cosine",
        "learning-rate schedule after warmup; wsd: warmup-stable-decay (MiniCPM), a constant peak then a "
        "cosine decay over the last decay_fraction of the steps; a wsd run resumed with a larger max_steps "
        "continues its stable phase",
    )
    min_lr_ratio: float = opt(0.0, "cosine and wsd decay to this fraction of the peak lr (0: to zero)")
    decay_fraction: float = opt(0.1, "wsd: fraction of max_steps spent decaying")
    warmup_ratio: float = opt(0.05, "fraction of steps spent warming up (ignored if warmup_steps > 0)")
    warmup_steps: int = opt(0, "warmup steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "auto: bf16 on GPUs that support it, else fp32 (CPU bf16 is very slow)"
    )
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    eval_every: int | None = opt(None, "steps between held-out evaluations (default: at the end only)")
    save_every: int | None = opt(None, "steps between checkpoints (default: none until the end)")
    save_total_limit: int | None = opt(2, "keep at most this many checkpoints")
    log_every: int = opt(10, "steps between log lines (JSONL + TensorBoard)")
    seed: int = opt(42, "random seed (data order, masking, initialisation)")
    resume: bool = opt(
        False,
        "resume from the newest complete checkpoint in output_dir (refused if that run's "
        "seed, model or data differ from this recipe)",
    )
    num_workers: int = opt(0, "dataloader workers")
    torch_threads: int | None = opt(None, "torch intra-op threads on CPU (default: torch's choice)")
    report_to: list[str] = opt(
        doc="extra trackers: tensorboard, wandb, ... (JSONL is always written)", factory=lambda: ["tensorboard"]
    )
    overwrite: bool = opt(
        False,
        "start over in a non-empty output_dir: what a previous run wrote there "
        "(model, metrics, logs, checkpoints) is removed first",
    )
    nan_policy: Literal["stop", "skip"] = opt(
        "stop",
        "a non-finite loss or gradient norm (or a spike): stop naming the first bad step, or skip the "
        "step's update (one host sync per step)",
    )
    max_bad_steps: int = opt(
        0,
        "nan_policy skip: after this many skipped steps roll back to the newest complete "
        "checkpoint and skip the batches since (0: never roll back)",
    )
    spike_factor: float | None = opt(
        None, "treat a step whose loss exceeds this many times the running mean loss as bad (e.g. 3.0; default: off)"
    )
    sharding: Sharding = opt(
        "none",
        "none: every process holds the whole model (data parallel); fsdp: parameters, "
        "gradients and optimizer state sharded over the processes (FSDP2)",
    )
    fsdp: FsdpConfig = opt(doc="FSDP2 options (train.sharding: fsdp)", factory=FsdpConfig)
    loss: Literal["auto", "standard", "chunked", "liger"] = opt(
        "auto",
        "LM loss: chunked computes head + cross-entropy over token chunks, never the full logits "
        "(memory); liger: Liger Kernel's fused Triton version (CUDA, pip install liger-kernel); "
        "auto: liger on a GPU where installed, else chunked; standard for task heads",
    )
    compile: bool | Literal["auto"] = opt(
        "auto", "torch.compile each transformer block (auto: on a GPU, off on CPU, where it does not pay)"
    )
    liger_kernels: bool | Literal["auto"] = opt(
        "auto",
        "Liger Kernel's RMSNorm/RoPE/SwiGLU for the architectures it supports (auto: on a GPU where "
        "liger-kernel is installed and the blocks are not compiled: under compile they measured slower)",
    )

    def __post_init__(self):
        for key in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.micro_batch == "auto":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "micro_batch: auto searches GPU memory; this machine has no GPU (set batch_size "
                    "and grad_accum; `--dry-run` prints the memory plan)"
                )
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:  # 0 once saved an untrained model with exit status 0
            raise ConfigError(f"epochs: must be > 0, got {self.epochs}")
        if not 0 <= self.min_lr_ratio < 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1), got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        if self.spike_factor is not None and self.spike_factor <= 1:
            raise ConfigError(f"spike_factor: must be > 1, got {self.spike_factor}")
        if self.max_bad_steps < 0:
            raise ConfigError(f"max_bad_steps: must be >= 0, got {self.max_bad_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
