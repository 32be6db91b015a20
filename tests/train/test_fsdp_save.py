"""train/fsdp_save.py: a sharded model streamed into a save_pretrained folder, on one process
(FSDP2 over a group of one, gloo): split at the shard limit, the index, tied weights, reload equal."""

import json

import pytest
import torch

from helpers import tiny_llama


@pytest.fixture(scope="module")
def group():
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    yield


def _sharded(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (1,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


@pytest.mark.parametrize("tied", [True, False])
def test_streamed_save_matches_save_pretrained(group, tmp_path, tied):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from lmadapt.train.fsdp_save import save_streamed

    plain = tiny_llama(96, tie_word_embeddings=tied)
    plain.save_pretrained(tmp_path / "hf")
    copy = tiny_llama(96, tie_word_embeddings=tied)
    copy.load_state_dict(plain.state_dict())
    sharded = _sharded(copy)
    limit = 20_000  # bytes: the 96x32 fp32 embedding (12 KB) and two layers' blocks split over several files
    save_streamed(sharded, None, tmp_path / "out", max_shard_bytes=limit)

    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted({f for f in index["weight_map"].values()})
    assert len(files) >= 3 and files == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as ref:
        ref_keys = set(ref.keys())
        expected = {k: ref.get_tensor(k) for k in ref_keys}
    assert set(index["weight_map"]) == ref_keys  # the same keys: lm_head.weight dropped when tied
    assert ("lm_head.weight" in ref_keys) is not tied
    total = 0
    for f in files:
        with safe_open(out / f, "pt") as fh:
            sizes = [fh.get_tensor(k).numel() * 4 for k in fh.keys()]
            assert sum(sizes) <= limit or len(sizes) == 1
            for k in fh.keys():
                assert index["weight_map"][k] == f and torch.equal(fh.get_tensor(k), expected[k])
            total += sum(sizes)
    assert index["metadata"]["total_size"] == total
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (out / "generation_config.json").is_file() and not list(out.glob(".shard-*"))
    again = AutoModelForCausalLM.from_pretrained(out)
    for k, v in plain.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_one_shard_is_a_plain_model_file(group, tmp_path):
    from lmadapt.train.fsdp_save import save_streamed

    sharded = _sharded(tiny_llama(96))
    save_streamed(sharded, None, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
