"""Recipe section for sharded training (FSDP2): ``train.sharding`` picks it, ``train.fsdp`` tunes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import opt

Sharding = Literal["none", "fsdp"]


@dataclass
class FsdpConfig:
    """FSDP2 options (used when train.sharding is fsdp, or an `accelerate launch` config turns FSDP on)."""

    reshard_after_forward: bool = opt(
        True,
        "free each layer's gathered weights after its forward pass and gather them again for backward "
        "(ZeRO-3, least memory); false keeps them until backward (ZeRO-2-like: faster, more memory)",
    )
    cpu_offload: bool = opt(
        False,
        "keep the sharded parameters, gradients and AdamW state in host RAM (FSDP2 CPUOffloadPolicy: "
        "the optimizer step runs on the CPU); fits a larger model, trains slower",
    )
    reduce_fp32: bool = opt(
        True,
        "under train.precision bf16/fp16: reduce gradients in fp32 (weights are gathered and computed in "
        "the low precision, master weights and optimizer state stay fp32); false reduces in the low precision",
    )
    wrap: list[str] = opt(
        doc="module class names sharded as one unit each (default: the model's transformer layers, from its "
        "_no_split_modules); the whole model is always a unit too",
        factory=list,
    )
