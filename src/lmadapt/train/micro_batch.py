"""``train.micro_batch: auto`` (GPU): the largest micro-batch that fits, the tokens per step kept.

Before the first step, one trial training micro-batch (forward + backward through the Trainer's own
``compute_loss``: fused loss, compiled blocks, autocast as the run will have them) is run at
``batch_size``, then at each smaller divisor of it while it runs out of memory (accelerate's
``should_reduce_batch_size`` tells an out-of-memory error from others). The trial has no optimizer
step, so AdamW's two fp32 moments (8 bytes per trainable parameter, allocated at the first step) are
added to its peak, and a micro-batch whose total passes ``HEADROOM`` of the device's memory counts as
not fitting. The micro-batch found replaces ``batch_size`` and ``grad_accum`` grows by the same
factor: ``batch_size x grad_accum`` (tokens per optimizer step, hence the schedule and ``max_steps``)
is unchanged. Divisors only, so the product stays exact. The trial takes the first examples: packed
blocks are all full length; fine-tuning's dynamically padded batches can be longer later (leave room
with a smaller batch_size there). A resume searches again. CPU: refused by the recipe (host memory does
not fail as an out-of-memory error does; ``--dry-run``'s memory plan sizes a CPU run).
"""

from __future__ import annotations

from typing import Callable

HEADROOM = 0.92


def divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def find_micro_batch(trial: Callable[[int], None], batch_size: int, *, say=print) -> int:
    """The largest divisor of ``batch_size`` whose ``trial(b)`` runs without running out of memory."""
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    for b in divisors_desc(batch_size):
        try:
            trial(b)
            return b
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
            if not should_reduce_batch_size(exc):
                raise
            say(f"train.micro_batch auto: {b} x block does not fit ({str(exc).splitlines()[0][:120]})")
            clear_device_cache(garbage_collection=True)
    raise RuntimeError(
        "train.micro_batch auto: not even a micro-batch of 1 fits on this device; shorten "
        "data.block_size, enable train.gradient_checkpointing or LoRA"
    )


def trainer_trial(trainer, dataset) -> Callable[[int], None]:
    """``trial(b)``: one forward + backward of ``b`` training examples through ``trainer.compute_loss``,
    gradients dropped; raises ``torch.OutOfMemoryError`` when the peak (+ optimizer moments) passes
    ``HEADROOM`` of the device's memory."""
    import torch

    model = trainer.model
    moments = 8 * sum(p.numel() for p in model.parameters() if p.requires_grad)

    def trial(b: int) -> None:
        batch = trainer.data_collator([dataset[i % len(dataset)] for i in range(b)])
        batch = trainer._prepare_inputs(batch)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model.train()
        try:
            with trainer.accelerator.autocast():  # the run's mixed precision (the model is not prepared yet)
                loss = trainer.compute_loss(model, batch)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
        if cuda:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            if torch.cuda.max_memory_allocated() + moments > HEADROOM * total:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (trial peak + optimizer moments above "
                    f"{HEADROOM:.0%} of {total / 2**30:.0f} GiB)"
                )

    return trial


def choose_micro_batch(trainer, dataset, *, say=print) -> tuple[int, int]:
    """:func:`find_micro_batch` with the Trainer's trial, the smallest over all processes (they step
    together), applied to the Trainer; returns (micro-batch, grad_accum)."""
    from ..runtime.dist import gather

    micro = min(
        gather(find_micro_batch(trainer_trial(trainer, dataset), trainer.args.per_device_train_batch_size, say=say))
    )
    return apply_micro_batch(trainer, micro)


def apply_micro_batch(trainer, micro: int) -> tuple[int, int]:
    """Set the Trainer's micro-batch to ``micro`` and grow gradient accumulation to keep the tokens per
    step; returns (micro-batch, grad_accum)."""
    args = trainer.args
    factor = args.per_device_train_batch_size // micro
    args.per_device_train_batch_size = micro
    args.gradient_accumulation_steps *= factor
    trainer._train_batch_size = args.train_batch_size  # read by train() for its data loader
    return micro, args.gradient_accumulation_steps
