"""A sharded (FSDP2, or DeepSpeed ZeRO-3) model saved as a plain transformers folder, streamed one tensor at a time.

Every process walks the model's state dict in the same order and materialises one whole tensor at a
time (``DTensor.full_tensor()``, or ZeRO-3's ``GatheredParameters``: a collective); the main process moves it to host RAM and appends it
to the current ``model-0000i-of-0000n.safetensors`` file, which is written and freed when it reaches
``max_shard_bytes``. So the main process never holds more than one shard plus one tensor, where a
gathered state dict needed the whole model (32 GB for an 8B model in fp32). The layout is what
``save_pretrained`` writes: the same keys (a tied copy dropped by transformers' own rule), the
tensors' own dtype, ``model.safetensors`` alone when one shard holds everything, else the shards and
``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``), then config.json and
generation_config.json.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from ..runtime import dist
from .zero3 import gathered, is_partitioned

# transformers' save_pretrained writes 50GB shards; 5 GB keeps the main process's peak far below the
# model (a test sets a tiny value to see several shards)
MAX_SHARD_BYTES = int(os.environ.get("LMADAPT_MAX_SHARD_BYTES", 5 * 10**9))


def saved_names(model) -> list[str]:
    """The state-dict keys ``save_pretrained`` writes, in state-dict order: ignored keys dropped, and of
    names sharing one parameter object (tied weights) those transformers' tied-key patterns name, as
    its remove_tied_weights_from_state_dict does (it compares storages, which sharded tensors do not share)."""
    import re
    from collections import defaultdict

    from transformers.modeling_utils import _get_tied_weight_keys

    ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or [])
    names = [k for k in model.state_dict() if k not in ignored]
    shared = defaultdict(list)
    for k in names:
        shared[id(model.get_parameter_or_buffer(k))].append(k)
    patterns = set(_get_tied_weight_keys(model))
    drop = set()
    for group in (g for g in shared.values() if len(g) > 1):
        found = 0
        for k in sorted(group):
            if any(re.search(p, k) for p in patterns):
                found += 1
                if found < len(group):
                    drop.add(k)
    return [k for k in names if k not in drop]


class _ShardWriter:
    """The main process's side: tensors appended, a shard file written when the next one would pass the limit."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.current: dict[str, torch.Tensor] = {}
        self.size = self.total = 0
        self.files: list[tuple[Path, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.limit:  # as split_torch_state_dict_into_shards cuts
            self.flush()
        self.current[name] = tensor
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.current:
            return
        path = self.folder / f".shard-{len(self.files):05d}.part"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.current)))
        self.current, self.size = {}, 0

    def finish(self, total_parameters: int) -> None:
        self.flush()
        if len(self.files) == 1:
            os.replace(self.files[0][0], self.folder / "model.safetensors")
            return
        weight_map = {}
        for i, (path, names) in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(path, self.folder / final)
            weight_map.update({n: final for n in names})
        index = {
            "metadata": {"total_parameters": total_parameters, "total_size": self.total},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _full(tensor, device):
    """The whole tensor on every process (a collective for a DTensor; offloaded shards first go to the
    process's device, where the backend can gather them)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor
    if tensor.to_local().device != device:
        tensor = tensor.to(device)
    return tensor.full_tensor()


def write_weights(model, folder: Path | None, max_shard_bytes: int | None = None) -> None:
    """The weights of sharded or partitioned ``model`` (a plain transformers model, not a peft wrapper) streamed into
    ``folder`` on the main process (None on the others); every process must call it."""
    limit = max_shard_bytes or MAX_SHARD_BYTES
    writer = _ShardWriter(folder, limit) if dist.is_main_process() else None
    device = dist.process_device()
    state = model.state_dict()
    partitioned = is_partitioned(model)
    with torch.no_grad():
        for name in saved_names(model):
            if partitioned:  # DeepSpeed ZeRO-3: the parameter's whole value while gathered, copied out
                tensor = model.get_parameter_or_buffer(name)
                with gathered([tensor], partitioned=hasattr(tensor, "ds_id")):
                    full = tensor.detach().to("cpu", copy=True).contiguous() if writer is not None else None
            else:
                full = _full(state[name], device)
            if writer is not None:
                # (a gathered DTensor is a fresh tensor: no copy when it is on the CPU already)
                writer.add(name, full.detach().to("cpu").contiguous())
            del full
    if writer is not None:
        writer.finish(model.num_parameters())


def save_streamed(model, tokenizer, output_dir, max_shard_bytes: int | None = None) -> None:
    """Sharded plain ``model`` (not a peft wrapper: see fsdp.save_whole) saved into ``output_dir`` as
    ``save_pretrained`` lays a folder out, with the tokenizer; written into a temp folder renamed into
    place (models.lora.staged_folder). A collective."""
    from ..models.lora import staged_folder

    main = dist.is_main_process()
    with staged_folder(output_dir) if main else nullcontext(None) as tmp:
        write_weights(model, tmp, max_shard_bytes)
        if main:
            model.config.dtype = str(model.dtype).split(".")[1]
            model.config.architectures = [type(model).__name__.removeprefix("FSDP")]
            model.config.save_pretrained(str(tmp))
            if model.can_generate():
                model.generation_config.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
    dist.barrier()


__all__ = ["MAX_SHARD_BYTES", "save_streamed", "saved_names", "write_weights"]
