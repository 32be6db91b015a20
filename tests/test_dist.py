"""runtime/dist.py under torchrun with two CPU processes (gloo): splitting an evaluation, waiting for
the main process, and the collective timeout."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import torchrun
from lmadapt.runtime import dist


SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from lmadapt.runtime import dist

    out_dir, sleep = sys.argv[1], float(sys.argv[2])
    rank = int(os.environ["RANK"])
    dist.barrier()   # joins the process group
    gloo = torch.distributed.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    out = {"timeout": gloo.options._timeout.total_seconds()}
    for n in (0, 1, 5):
        shares = []

        def fn(share):
            shares.append(list(share))
            return [x * 10 for x in share], len(share)

        results, count = dist.map_split(fn, list(range(n)))
        out[f"map{n}"] = {"results": results, "count": count, "shares": shares}
        out[f"sum{n}"] = list(dist.sum_split(lambda share: (float(sum(share)), len(share)), list(range(n))))
    if dist.is_main_process():
        time.sleep(sleep)
    t0 = time.time()
    dist.barrier()
    out["waited"] = time.time() - t0
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(out, fh)
    dist.finish()
""")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process runs on Linux")


TOKENIZE = textwrap.dedent("""
    import json, os, sys
    from transformers import AutoTokenizer
    from lmadapt.data.packing import tokenize_documents
    from lmadapt.runtime import dist

    out_dir, fail = sys.argv[1], sys.argv[2] == "fail"
    rank = int(os.environ["RANK"])
    tok = AutoTokenizer.from_pretrained(os.path.join(out_dir, "tok"))
    texts = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(50)]

    def work():
        if fail and rank == 0:
            raise ValueError("bad corpus on the first process")
        return tokenize_documents(texts, tok, separator="eos", cache_dir=os.path.join(out_dir, "cache"))

    docs = dist.main_first(work, "tokenizing the corpus", per_node=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"cache_hit": docs.cache_hit, "tokens": sum(map(len, docs["input_ids"]))}, fh)
    dist.finish()
""")


def run_probe(tmp_path: Path, *args, script: str = SCRIPT, **env) -> subprocess.CompletedProcess:
    path = tmp_path / "probe.py"
    path.write_text(script)
    return torchrun(str(path), str(tmp_path), *map(str, args), env=env, timeout=120)


def test_split_work_comes_back_whole_in_order_and_barrier_waits_for_main(tmp_path):
    proc = run_probe(tmp_path, 3.0)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for n in (0, 1, 5):
        items = list(range(n))
        for got in ranks:  # every process gets every result, in item order, and the summed count
            assert got[f"map{n}"]["results"] == [x * 10 for x in items] and got[f"map{n}"]["count"] == n
            assert got[f"sum{n}"] == [float(sum(items)), n]
        # the work was split: contiguous shares, each process called fn once at most, sizes within one
        shares = [r[f"map{n}"]["shares"] for r in ranks]
        assert all(len(s) <= 1 for s in shares)
        first, second = (s[0] if s else [] for s in shares)
        assert first + second == items and abs(len(first) - len(second)) <= 1
    assert ranks[1]["waited"] > 2.5, "dist.barrier returned before the main process arrived"
    assert ranks[0]["timeout"] == ranks[1]["timeout"] == 1800  # the Trainer's ddp_timeout, not NCCL's 10 min


def test_collective_timeout_comes_from_the_environment(tmp_path):
    proc = run_probe(tmp_path, 8.0, LMADAPT_DIST_TIMEOUT="2")
    assert proc.returncode != 0
    assert "Timed out" in proc.stdout + proc.stderr
    assert not (tmp_path / "rank1.json").exists()


def test_the_first_process_tokenizes_and_the_other_reads_its_cache(tmp_path):
    from helpers import tiny_bpe_tokenizer

    tiny_bpe_tokenizer(tmp_path / "tok")
    proc = run_probe(tmp_path, "ok", script=TOKENIZE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert first["tokens"] == second["tokens"] > 0


def test_a_failure_on_the_first_process_stops_the_others_at_once(tmp_path):
    """Not a wait until the collective timeout (here 60 s): the other process hears of it."""
    from helpers import tiny_bpe_tokenizer
    import time

    tiny_bpe_tokenizer(tmp_path / "tok")
    t0 = time.time()
    proc = run_probe(tmp_path, "fail", script=TOKENIZE, LMADAPT_DIST_TIMEOUT="60")
    assert proc.returncode != 0 and time.time() - t0 < 45
    out = proc.stdout + proc.stderr
    assert "bad corpus on the first process" in out
    assert "tokenizing the corpus failed on process 0" in out
    assert not list(tmp_path.glob("rank*.json"))


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_bad_timeout_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("LMADAPT_DIST_TIMEOUT", value)
    with pytest.raises(ValueError, match="LMADAPT_DIST_TIMEOUT"):
        dist.timeout_seconds()


def test_one_process_runs_the_work_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []
    results, count = dist.map_split(lambda share: (calls.append(share) or [x + 1 for x in share], 7), [1, 2, 3])
    assert (results, count, calls) == ([2, 3, 4], 7, [[1, 2, 3]])
    assert dist.sum_split(lambda share: (sum(share), len(share)), [1, 2, 3]) == (6, 3)


@pytest.mark.parametrize(
    "env, sharding",
    [
        (
            {
                "ACCELERATE_USE_FSDP": "true",
                "FSDP_OFFLOAD_PARAMS": "false",
                "FSDP_RESHARD_AFTER_FORWARD": "false",
                "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
                "FSDP_ACTIVATION_CHECKPOINTING": "true",
            },
            "fsdp",
        ),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "none"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "none"),
        ({"ACCELERATE_USE_FSDP": "false"}, "none"),
    ],
)
def test_a_launch_that_shards_the_model_is_followed(tmp_path, monkeypatch, env, sharding):
    """`accelerate launch` with an FSDP config turns train.sharding: fsdp on with its options (it was
    refused before FSDP support); DeepSpeed ZeRO-3 is left to the Trainer, no longer refused."""
    from lmadapt.config import TrainConfig

    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.chdir(tmp_path)
    for name in (
        "ACCELERATE_USE_FSDP",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from lmadapt.train.fsdp import check_launch

    cfg = TrainConfig()
    check_launch(cfg)
    assert cfg.sharding == sharding
    if sharding == "fsdp":
        assert cfg.fsdp.reshard_after_forward is False and cfg.fsdp.cpu_offload is False
        assert cfg.fsdp.wrap == ["LlamaDecoderLayer"] and cfg.gradient_checkpointing is True


def test_fsdp_in_a_deepspeed_launch_is_refused(monkeypatch):
    from lmadapt.config import TrainConfig
    from lmadapt.config.base import ConfigError
    from lmadapt.train.fsdp import check_launch

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed"):
        check_launch(TrainConfig(sharding="fsdp"))


def test_micro_batch_search_in_a_deepspeed_launch_is_refused(monkeypatch):
    """The search's trial step would run before DeepSpeed's engine, on a model the Trainer leaves off
    the GPU for DeepSpeed (a GPU-only setting: the recipe refuses it on CPU, so the stage check is
    called here with the setting as a GPU run would have it)."""
    from types import SimpleNamespace

    from lmadapt.config.base import ConfigError
    from lmadapt.config.sharding import FsdpConfig
    from lmadapt.train.fsdp import check_config

    cfg = SimpleNamespace(sharding="none", fsdp=FsdpConfig(), micro_batch="auto")
    check_config(cfg)  # not a DeepSpeed launch: the search runs
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="train.micro_batch: auto in a DeepSpeed launch"):
        check_config(cfg)
    check_config(SimpleNamespace(sharding="none", fsdp=FsdpConfig(), micro_batch="fixed"))


OUTPUT_DIR = textwrap.dedent("""
    import json, os, sys, time
    from lmadapt.runtime import dist
    from lmadapt.runtime.run_folder import prepare_output_dir

    out_dir = sys.argv[1]
    rank = int(os.environ["RANK"])
    if rank == 1:
        time.sleep(3)          # looks at the folder late
    out = prepare_output_dir(os.path.join(out_dir, "stage"), resume=False, overwrite=False)
    if rank == 0:
        (out / "first-file").write_text("rank 0 started writing")
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"ok": True}, fh)
    dist.finish()
""")


def test_no_process_writes_the_output_folder_before_every_process_has_checked_it(tmp_path):
    """On CPU the check-then-write of a stage folder waits for all processes, so a slow process
    never refuses the folder because a fast one already started filling it."""
    proc = run_probe(tmp_path, script=OUTPUT_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all((tmp_path / f"rank{r}.json").exists() for r in (0, 1))
