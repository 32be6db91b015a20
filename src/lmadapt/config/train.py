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
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    adam_beta2: float = opt(0.95, "AdamW beta2")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    scheduler: Literal["cosine", "linear", "constant"] = opt("cosine", "learning-rate schedule after warmup")
    warmup_ratio: float = opt(0.05, "fraction of steps spent warming up (ignored if warmup_steps > 0)")
    warmup_steps: int = opt(0, "warmup steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt("auto", "auto: bf16 on GPUs that support it, else fp32 (CPU bf16 is very slow)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    eval_every: int | None = opt(None, "steps between held-out evaluations (default: at the end only)")
    save_every: int | None = opt(None, "steps between checkpoints (default: none until the end)")
    save_total_limit: int | None = opt(2, "keep at most this many checkpoints")
    log_every: int = opt(10, "steps between log lines (JSONL + TensorBoard)")
    seed: int = opt(42, "random seed (data order, masking, initialisation)")
    resume: bool = opt(False, "resume from the latest checkpoint in output_dir")
    num_workers: int = opt(0, "dataloader workers")
    torch_threads: int | None = opt(None, "torch intra-op threads on CPU (default: torch's choice)")
    report_to: list[str] = opt(doc="extra trackers: tensorboard, wandb, ... (JSONL is always written)", factory=lambda: ["tensorboard"])
    overwrite: bool = opt(False, "allow writing into a non-empty output_dir without resume")
    sharding: Sharding = opt("none", "none: every process holds the whole model (data parallel); fsdp: parameters, "
                                     "gradients and optimizer state sharded over the processes (FSDP2)")
    fsdp: FsdpConfig = opt(doc="FSDP2 options (train.sharding: fsdp)", factory=FsdpConfig)

    def __post_init__(self):
        for key in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
