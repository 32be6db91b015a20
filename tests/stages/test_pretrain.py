"""End to end through `run_pretrain` on tiny models: learning, outputs, resume, LoRA, two processes."""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_bpe_tokenizer, tiny_wordpiece_tokenizer, torchrun
from lmadapt.config import PretrainConfig, load_recipe


def learnable_corpus(path: Path, n_docs: int, seed: int) -> Path:
    """Documents following a strict pattern: a small model can learn it in a few dozen steps."""
    rng = random.Random(seed)
    animals = ["the fox", "the dog", "the cat", "the bird"]
    verbs = ["jumps over", "runs past", "sleeps near", "looks at"]
    with path.open("w") as fh:
        for _ in range(n_docs):
            a, v = rng.choice(animals), rng.choice(verbs)
            fh.write(json.dumps({"text": " ".join(f"{a} {v} the lazy dog." for _ in range(rng.randint(2, 6)))}) + "\n")
    return path


@pytest.fixture
def workspace(tmp_path):
    tok_dir = tmp_path / "tok"
    tiny_bpe_tokenizer(tok_dir)
    train = learnable_corpus(tmp_path / "train.jsonl", 120, 0)
    valid = learnable_corpus(tmp_path / "valid.jsonl", 12, 1)
    return tmp_path, tok_dir, train, valid


def recipe(tmp_path, tok_dir, train, valid, out="out", **train_over):
    data = {
        "model": {
            "init": "scratch",
            "arch": "llama",
            "size": None,
            "tokenizer": str(tok_dir),
            "dims": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        },
        "data": {
            "sources": [{"path": str(train)}],
            "eval_sources": [{"path": str(valid), "name": "valid"}],
            "block_size": 64,
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {
            "output_dir": str(tmp_path / out),
            "max_steps": 30,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 2,
            "log_every": 5,
            "report_to": [],
            "seed": 0,
            **train_over,
        },
    }
    return data


def test_scratch_pretrain_learns_and_writes_output_folder(workspace):
    tmp_path, tok_dir, train, valid = workspace
    from lmadapt.stages.pretrain import run_pretrain

    cfg = load_recipe(PretrainConfig, data=recipe(tmp_path, tok_dir, train, valid))
    metrics = run_pretrain(cfg)
    held = metrics["heldout"]["valid"]
    assert held["after"]["loss"] < held["before"]["loss"] - 1.0, held
    # every phase of the stage is timed, and together they fit in the stage's wall time
    phases = metrics["phase_seconds"]
    assert list(phases) == [
        "read_corpus",
        "load_model",
        "tokenize_and_pack",
        "evaluate_before",
        "train",
        "evaluate_after",
    ]
    assert all(v >= 0 for v in phases.values()) and phases["train"] >= metrics["train"]["train_seconds"] - 0.05
    assert sum(phases.values()) <= metrics["train"]["wall_seconds"] + 0.05
    out = tmp_path / "out"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "lmadapt_recipe.yaml",
        "lmadapt_meta.json",
        "metrics.json",
        "token_accounting.json",
        "logs.jsonl",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")), "weights must be safetensors only"
    assert not (out / ".lmadapt-blocks").exists(), "the packed training blocks are removed when the stage ends"
    accounting = json.loads((out / "token_accounting.json").read_text())
    assert accounting["train"]["tokens_dropped"] == 0
    meta = json.loads((out / "lmadapt_meta.json").read_text())
    assert meta["objective"] == "causal" and "transformers" in meta["versions"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2

    # Continued pretraining from that folder: the next stage reads it like any HF model.
    data2 = recipe(tmp_path, tok_dir, train, valid, out="cpt", max_steps=5)
    data2["model"] = {"path": str(out)}
    m2 = run_pretrain(load_recipe(PretrainConfig, data=data2))
    assert m2["heldout"]["valid"]["before"]["loss"] == pytest.approx(held["after"]["loss"], rel=1e-4)


def test_resume_matches_uninterrupted_run(workspace):
    tmp_path, tok_dir, train, valid = workspace
    from lmadapt.stages.pretrain import run_pretrain

    full = run_pretrain(
        load_recipe(PretrainConfig, data=recipe(tmp_path, tok_dir, train, valid, out="full", max_steps=12))
    )
    # An interrupted run: the same recipe with checkpoints, whose last checkpoint and final files are lost.
    data = recipe(tmp_path, tok_dir, train, valid, out="int", max_steps=12, save_every=6, save_total_limit=3)
    run_pretrain(load_recipe(PretrainConfig, data=data))
    out = tmp_path / "int"
    shutil.rmtree(out / "checkpoints" / "checkpoint-12")
    for f in ("model.safetensors", "metrics.json"):
        (out / f).unlink()
    data["train"]["resume"] = True
    resumed = run_pretrain(load_recipe(PretrainConfig, data=data))
    assert resumed["train"]["resumed_from"].endswith("checkpoint-6")
    assert resumed["heldout"]["valid"]["after"]["loss"] == pytest.approx(
        full["heldout"]["valid"]["after"]["loss"], rel=1e-4
    )


def test_a_rerun_reuses_the_packed_blocks_of_an_unfinished_stage(workspace, monkeypatch):
    """An interrupted stage leaves its blocks files; the resumed run reads them instead of mixing and
    packing again, and trains on the same blocks (the same result); a changed seed packs anew."""
    tmp_path, tok_dir, train, valid = workspace
    from lmadapt.stages import pretrain, pretrain_data

    data = recipe(tmp_path, tok_dir, train, valid, out="re", max_steps=6)
    monkeypatch.setattr(pretrain, "remove_stage_data", lambda out: None)  # as if it stopped before the end
    first = pretrain.run_pretrain(load_recipe(PretrainConfig, data=data))
    folder = tmp_path / "re" / pretrain_data.BLOCKS_DIR
    manifest = json.loads((folder / pretrain_data.MANIFEST).read_text())
    assert [p.name for p in folder.glob("train-*.arrow")] == [manifest["train"]]
    assert [p.name for p in folder.glob("eval-*.arrow")] == [manifest["eval"]["valid"]]
    assert not list(folder.glob("spool-*")), "the spooled texts outlived their tokenization"

    def no_packing(*a, **k):
        raise AssertionError("packed again")

    monkeypatch.undo()  # the stage removes its blocks again from here on
    monkeypatch.setattr(pretrain_data, "mix_documents", no_packing)  # mixing the training documents
    monkeypatch.setattr(pretrain_data, "pack_blocks", no_packing)  # packing training or held-out blocks
    data["train"]["overwrite"] = True
    again = pretrain.run_pretrain(load_recipe(PretrainConfig, data=data))
    assert again["heldout"]["valid"]["after"]["loss"] == pytest.approx(
        first["heldout"]["valid"]["after"]["loss"], rel=1e-6
    )
    assert not folder.exists()
    data["train"]["seed"] = 1
    with pytest.raises(AssertionError, match="packed again"):
        pretrain.run_pretrain(load_recipe(PretrainConfig, data=data))


def test_masked_lm_pretrain_on_bert(tmp_path):
    from lmadapt.stages.pretrain import run_pretrain

    tok_dir = tmp_path / "wp"
    tiny_wordpiece_tokenizer(tok_dir)
    train = learnable_corpus(tmp_path / "train.jsonl", 120, 0)
    valid = learnable_corpus(tmp_path / "valid.jsonl", 12, 1)
    data = recipe(tmp_path, tok_dir, train, valid, max_steps=30)
    data["model"] = {
        "init": "scratch",
        "arch": "bert",
        "tokenizer": str(tok_dir),
        "dims": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    }
    metrics = run_pretrain(load_recipe(PretrainConfig, data=data))
    assert metrics["objective"] == "masked"
    held = metrics["heldout"]["valid"]
    assert held["after"]["masked_loss"] < held["before"]["masked_loss"] - 0.5
    assert "pseudo_perplexity" in held["after"]


def test_lora_pretrain_adapter_and_merge(workspace):
    tmp_path, tok_dir, train, valid = workspace
    from lmadapt.stages.pretrain import run_pretrain

    base = run_pretrain(
        load_recipe(PretrainConfig, data=recipe(tmp_path, tok_dir, train, valid, out="base", max_steps=3))
    )
    assert base
    for merge in (False, True):
        data = recipe(tmp_path, tok_dir, train, valid, out=f"lora{int(merge)}", max_steps=10, lr=1e-2)
        data["model"] = {"path": str(tmp_path / "base")}
        data["lora"] = {"enabled": True, "r": 4, "alpha": 8, "merge": merge}
        m = run_pretrain(load_recipe(PretrainConfig, data=data))
        out = tmp_path / f"lora{int(merge)}"
        assert (out / "adapter_config.json").is_file() != merge
        assert (out / "model.safetensors").is_file() == merge
        assert m["heldout"]["valid"]["after"]["loss"] < m["heldout"]["valid"]["before"]["loss"]


def errors_of(stderr: str) -> str:
    """What each process said went wrong (the launcher's own traceback last, cut short)."""
    said = [line for line in stderr.splitlines() if "error:" in line or "Error:" in line]
    return "\n".join(said[-20:]) + "\n---\n" + stderr[-1500:]


# The pretrain command, where a node's other processes fail if they read or tokenize the corpus.
FIRST_READS = """
import os, sys
from lmadapt.stages import pretrain_data
if os.environ["LOCAL_RANK"] != "0":
    def refuse(*args, **kwargs):
        raise AssertionError("a process other than the node's first read or tokenized the corpus")
    pretrain_data.read_corpus = pretrain_data.tokenize_arrays = refuse
from lmadapt.cli import main
sys.exit(main(["pretrain", sys.argv[1]]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process test runs on Linux")
def test_two_processes_match_one_process(workspace):
    """Same global batch (2 procs x 2 vs 1 proc x 4): the same final held-out loss; only the first
    process reads the text, the other trains on the blocks it packed."""
    tmp_path, tok_dir, train, valid = workspace
    import yaml

    script = tmp_path / "first_reads.py"
    script.write_text(FIRST_READS)
    results = {}
    for procs, bs in ((1, 4), (2, 2)):
        data = recipe(tmp_path, tok_dir, train, valid, out=f"p{procs}", max_steps=8, batch_size=bs)
        path = tmp_path / f"p{procs}.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = torchrun(str(script), str(path), procs=procs)
        assert proc.returncode == 0, errors_of(proc.stderr)
        results[procs] = json.loads((tmp_path / f"p{procs}" / "metrics.json").read_text())
        assert not (tmp_path / f"p{procs}" / ".lmadapt-blocks").exists()
    one, two = results[1]["heldout"]["valid"]["after"]["loss"], results[2]["heldout"]["valid"]["after"]["loss"]
    assert results[1]["heldout"]["valid"]["before"]["loss"] == pytest.approx(
        results[2]["heldout"]["valid"]["before"]["loss"], rel=1e-5
    )
    assert one == pytest.approx(two, rel=2e-3), (one, two)
    assert one < results[1]["heldout"]["valid"]["before"]["loss"]
    assert torch.distributed.is_available()


def two_nodes(*args: str, timeout: int = 240) -> list:
    """``torchrun --nnodes 2`` as two launchers on this machine, one process each: two "nodes"
    whose first processes share one disk, as nodes share a network file system."""
    import os
    import random
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(29700 + random.randint(0, 800))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(node),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for node in (0, 1)
    ]
    return [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process test runs on Linux")
def test_two_nodes_sharing_a_disk_prepare_the_same_data_at_once(workspace):
    """Each node's first process reads, tokenizes and packs into the same cache and output folder at
    the same time: the cache keeps one complete entry per source, both train on the same blocks
    (the held-out loss before training matches one process), and no temp file or block is left."""
    tmp_path, tok_dir, train, valid = workspace
    import yaml

    results = {}
    for name, bs in (("one", 4), ("nodes", 2)):
        data = recipe(tmp_path, tok_dir, train, valid, out=name, max_steps=8, batch_size=bs)
        data["data"]["cache_dir"] = str(tmp_path / f"cache-{name}")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        if name == "one":
            proc = torchrun("-m", "lmadapt.cli", "pretrain", str(path), procs=1)
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            done = two_nodes("-m", "lmadapt.cli", "pretrain", str(path))
            assert [code for code, _ in done] == [0, 0], "\n=====\n".join(errors_of(err) for _, err in done)
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())["heldout"]["valid"]
        assert not (tmp_path / name / ".lmadapt-blocks").exists()
        entries = sorted(p.name for p in (tmp_path / f"cache-{name}").iterdir())
        assert len(entries) == 2 and not any(e.startswith(".") for e in entries), entries  # train + valid
    assert results["nodes"]["before"]["loss"] == pytest.approx(results["one"]["before"]["loss"], rel=1e-5)
    assert results["nodes"]["after"]["loss"] == pytest.approx(results["one"]["after"]["loss"], rel=2e-3)


def test_evaluations_outside_the_trainer_run_on_the_process_device(workspace, monkeypatch):
    """The held-out scoring before training and `evaluate_model` (pipeline evidence, `lmadapt
    evaluate`) move the model to this process's device first; on a GPU job it would otherwise stay
    on the CPU where it was loaded. Here the device is recorded, not changed."""
    from lmadapt.stages.evaluate import evaluate_model
    from lmadapt.stages.pretrain import run_pretrain
    from lmadapt.runtime import dist

    tmp_path, tok_dir, train, valid = workspace
    asked = []
    monkeypatch.setattr(dist, "process_device", lambda: asked.append("device") or torch.device("cpu"))
    run_pretrain(load_recipe(PretrainConfig, data=recipe(tmp_path, tok_dir, train, valid, max_steps=2)))
    assert asked, "run_pretrain scored the model before training without placing it"
    asked.clear()
    evaluate_model(str(tmp_path / "out"), [str(valid)], block_size=64)
    assert asked, "evaluate_model scored the model without placing it"


def test_process_device_is_the_local_rank_gpu(monkeypatch):
    from lmadapt.runtime import dist

    monkeypatch.setattr(dist, "use_cpu", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dist.process_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert dist.process_device() == torch.device("cuda", 0)
    monkeypatch.setattr(dist, "use_cpu", lambda: True)
    assert dist.process_device() == torch.device("cpu")
