"""Where a user reads the memory plan: `lmadapt pretrain RECIPE --dry-run` and `lmadapt advise`."""

from __future__ import annotations

import re

from helpers import tiny_bpe_tokenizer, tiny_llama
from lmadapt.cli import main
from lmadapt.models.memory_plan import Setup, model_shape, plan


def _model_folder(tmp_path):
    folder = tmp_path / "model"
    tok = tiny_bpe_tokenizer(folder)
    tiny_llama(len(tok)).save_pretrained(str(folder))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Domain text for a dry run.\n" * 20, encoding="utf-8")
    return folder, tok, corpus


def _row(out: str, label: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(label + "  "))
    return re.split(r"\s{2,}", line.strip())


def test_pretrain_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    folder, tok, corpus = _model_folder(tmp_path)
    out_dir = tmp_path / "out"
    common = [
        f"model.path={folder}",
        f"data.sources=[{{path: {corpus}}}]",
        f"train.output_dir={out_dir}",
        "data.block_size=64",
        "train.batch_size=2",
        "train.precision=fp32",
    ]
    assert main(["pretrain", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not out_dir.exists()  # nothing trained, no folder written
    shape = model_shape(tiny_llama(len(tok)))
    p = plan(shape, Setup(batch_size=2, block_size=64))
    assert f"{shape.params / 1e3:.3g}K parameters (llama: 2 layers, hidden 32, vocab {len(tok):,})" in out
    assert "this recipe (full, 1 process, unsharded): 16.00 B/param on the device" in out
    assert f"peak {p.device_bytes / 2**20:.1f} MiB per process" in out
    # every compared setup is a row: bytes per parameter as the arithmetic says
    assert _row(out, "full, data parallel x8")[1] == "20.00"
    assert _row(out, "full, fsdp x8")[1] == "2.00"
    assert _row(out, "full, fsdp x8 + cpu offload")[1] == "0.00 (+2.00 host)"
    assert _row(out, "full, 1 process")[-1] == "1/1/1/1"  # fits each GPU size

    assert (
        main(
            [
                "pretrain",
                *common,
                "lora.enabled=true",
                "train.sharding=fsdp",
                "train.fsdp.cpu_offload=true",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    lora = plan(shape, Setup(method="lora", sharding="fsdp", cpu_offload=True, batch_size=2, block_size=64))
    assert "this recipe (lora, fsdp x1 + cpu offload): 0.00 B/param on the device" in out
    assert f"host RAM {lora.host_bytes / 2**20:.3f} MiB per process" in out
    assert "note: train.sharding fsdp in a single process: launch with torchrun" in out
    assert f"the main process alone loads the whole model ({shape.params * 4 / 2**20:.3f} MiB)" in out

    # an `accelerate launch --config_file` with FSDP (its environment) is planned as the launch trains
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}):
        assert main(["pretrain", *common, "--dry-run"]) == 0
    assert "this recipe (full, fsdp x1 + cpu offload)" in capsys.readouterr().out
    # a DeepSpeed ZeRO-3 launch partitions as full sharding does: planned so, and said how
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    with mock.patch.dict(os.environ, zero3):
        assert main(["pretrain", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "this recipe (full, fsdp x1): " in out and "note: DeepSpeed ZeRO-3 launch: planned as full sharding" in out
    assert f"every process loads the whole model ({shape.params * 4 / 2**20:.3f} MiB) before the engine" in out
    with mock.patch.dict(os.environ, {**zero3, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}):
        assert main(["pretrain", *common, "--dry-run"]) == 0
    assert "this recipe (full, 1 process, unsharded)" in capsys.readouterr().out


def test_dry_run_of_a_scratch_model_counts_the_preset(tmp_path, capsys):
    from lmadapt.models.presets import count_params, scratch_config

    folder, tok, corpus = _model_folder(tmp_path)
    assert (
        main(
            [
                "pretrain",
                "model.init=scratch",
                "model.arch=llama",
                "model.size=8m",
                f"model.tokenizer={folder}",
                f"data.sources=[{{path: {corpus}}}]",
                f"train.output_dir={tmp_path / 'out'}",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    n = count_params(scratch_config("llama", "8m", {}, tok))
    assert f"memory plan: {n / 1e6:.3g}M parameters (llama: 10 layers, hidden 256" in out
    # precision auto on a machine without a GPU is planned as bf16, and said so
    assert "note: train.precision auto: planned as bf16" in out and "bf16 (weights float32)" in out


def test_dry_run_of_a_gguf_recipe_is_a_one_line_error(tmp_path, capsys):
    folder, _, corpus = _model_folder(tmp_path)
    code = main(
        [
            "pretrain",
            f"model.path={folder}",
            "model.gguf_file=x.gguf",
            f"data.sources=[{{path: {corpus}}}]",
            f"train.output_dir={tmp_path / 'out'}",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "convert the GGUF first" in err and "Traceback" not in err


def test_advise_report_shows_the_plan():
    from lmadapt.advise import recommend, render
    from lmadapt.advise.memory import advise_plan
    from test_advise import meas

    m = meas(domain_tokens=5_000_000)
    m["cost"]["memory"]["plan"] = advise_plan(tiny_llama(400), precision="fp32", batch_size=8, block_size=256)
    text = render(recommend(m, "generate"), m)
    assert "memory plan: 44.2K parameters (llama: 2 layers" in text
    assert "micro-batch 8 x 256 tokens, fp32" in text
    assert _row(text, "full, 1 process")[1] == "16.00"
    assert _row(text, "LoRA r=16, fsdp x8")[0] == "LoRA r=16, fsdp x8"
    # measurements saved before the planner existed still render
    del m["cost"]["memory"]["plan"]
    assert "memory plan" not in render(recommend(m, "generate"), m)
