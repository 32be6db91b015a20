"""Where a sharded model's starting weights come from: the main process, either way.

* The model was loaded whole on every process (the default): before sharding, every parameter and
  buffer is broadcast from the main process (:func:`broadcast_from_main`), as DDP does.
* It was loaded on the main process only (models.on_main: the others hold an empty copy on the
  meta device): after ``fully_shard``, the others allocate their shards (``to_empty``) and every
  process's shards are filled from the main process's full state dict, one tensor at a time, as
  ``set_model_state_dict(..., broadcast_from_rank0=True)`` does (:func:`fill_from_main`). Then only
  the main process ever holds the whole model in host RAM.

Buffers are not sharded and not all are in a state dict (non-persistent ones: a rotary
embedding's ``inv_freq``, BERT's ``position_ids``); the empty copy's are garbage after
``to_empty``, so every buffer is broadcast from the main process (exact, and no recomputation that
could differ from how the model computed them at load time). Tied weights stay tied: ``to_empty``
on sharded (DTensor) parameters swaps their contents in place, so a parameter two modules share
remains one object.
"""

from __future__ import annotations

import torch

from ..runtime import dist


def broadcast_from_main(model) -> None:
    """Every process starts from the main process's weights (as DDP does): a fresh head or LoRA
    init drawn differently on one process would otherwise be sharded from different values."""
    import torch.distributed as tdist

    if dist.world_size() == 1:
        return
    device = dist.process_device()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device == device:
                tdist.broadcast(t.data, src=0)
            else:  # nccl needs device tensors: one tensor at a time, so the peak is one tensor
                tmp = t.data.to(device)
                tdist.broadcast(tmp, src=0)
                t.data.copy_(tmp.to(t.device))


def main_state(model) -> dict:
    """Before sharding: the main process's whole state dict (its own tensors, not copies); {} on
    the others (their model is empty)."""
    return dict(model.state_dict()) if dist.is_main_process() else {}


def fill_from_main(model, state: dict, cpu_offload: bool) -> None:
    """After ``fully_shard``: the empty processes' shards allocated, then every process's shards
    and buffers filled from the main process's ``state`` (a collective; see the module doc).

    What ``set_model_state_dict(..., StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))``
    does, one tensor at a time, but always sent on the process's device: that function sends on the
    shards' own device, which with ``cpu_offload`` is host RAM, where nccl cannot send."""
    import torch.distributed as tdist
    from torch.distributed.tensor import DTensor, distribute_tensor

    device, main = dist.process_device(), dist.is_main_process()
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        # offloaded shards live in host RAM (FSDP2 moves them to the GPU per unit as it computes)
        model.to_empty(device="cpu" if cpu_offload else device)
    with torch.no_grad():
        for name, like in model.named_parameters():  # sharded (DTensors); a tied one once; buffers below
            full = (
                state[name].to(device, like.dtype) if main else torch.empty(like.shape, dtype=like.dtype, device=device)
            )
            if isinstance(like, DTensor):  # the main process's tensor cut the way FSDP2 cut this one
                piece, local = distribute_tensor(full, like.device_mesh, like.placements).to_local(), like.to_local()
                if piece.shape != local.shape:
                    raise RuntimeError(
                        f"FSDP2: {name}: cut {tuple(piece.shape)} from the main process's "
                        f"{tuple(full.shape)}, but this process holds {tuple(local.shape)}"
                    )
                local.data.copy_(piece)  # a view: writes through to the storage FSDP2 gathers from
            else:
                tdist.broadcast(full, src=0)
                like.data.copy_(full)
            del full
        for module in model.modules():  # every buffer, non-persistent ones too (see the module doc)
            for name, buf in list(module._buffers.items()):
                if buf is None:
                    continue
                if buf.device != device:  # buffers are not offloaded: the forward uses them on the device
                    buf = module._buffers[name] = buf.to(device)
                tdist.broadcast(buf, src=0)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"FSDP2: filling the shards from the main process left {left[:3]} empty")


__all__ = ["broadcast_from_main", "fill_from_main", "main_state"]
