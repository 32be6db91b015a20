"""Every shipped YAML (src/lmadapt/recipes, benchmarks/**) validates against its schema.

A file with ``arms:`` is a pipeline (`lmadapt run`); otherwise ``data.train`` makes it a finetune
recipe and anything else a pretrain recipe. Templates carry ``${NAME}`` placeholders that their
driver fills in; here each known name gets a stand-in (the bundled sample data laid out like the
benchmark data, a tiny tokenizer and model, a temp folder). A new placeholder must be added to
``stand_ins`` below, so a typo in a template cannot hide. Nothing is trained.
"""

import gzip
import os
from pathlib import Path

import pytest
import yaml

from helpers import tiny_bpe_tokenizer, tiny_llama
from lmadapt.config.base import load_recipe
from lmadapt.config.finetune import FinetuneConfig
from lmadapt.config.pipeline import PipelineConfig, deep_merge, load_pipeline, sample_data_dir, substitute_vars
from lmadapt.config.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "src" / "lmadapt" / "recipes").glob("*.yaml")) + sorted(
    p for p in (REPO / "benchmarks").glob("**/*.yaml") if "results" not in p.relative_to(REPO).parts
)
# Keys a template's driver removes before validating (benchmarks/dapt/recipes/finetune.yaml:
# `schedule` maps a label budget to train.epochs / train.batch_size).
DRIVER_KEYS = ("schedule",)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_ins")
    tok = root / "tok"
    tokenizer = tiny_bpe_tokenizer(tok)
    model = root / "model"
    # a real model's context (RoPE: no weights): the recipes' block sizes are checked against it
    tiny_llama(len(tokenizer), max_position_embeddings=8192).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data = root / "data"  # sample data in the layout of the benchmark data
    data.mkdir()
    for name in ("general", "computing", "foldoc"):
        os.symlink(Path(sample_data_dir()) / name, data / name)
    os.symlink(tok, data / "tok")
    # licenses/ (benchmarks/dapt): not in the sample; gzipped stand-ins in its file layout, built
    # from the FOLDOC sample (text + label; the corpus is text only)
    lic = data / "licenses"
    lic.mkdir()
    foldoc = Path(sample_data_dir()) / "foldoc"
    for split in ("train", "dev", "test"):
        with gzip.open(lic / f"{split}.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.write((foldoc / f"{split}.jsonl").read_text(encoding="utf-8"))
    with (
        gzip.open(foldoc / "unlabeled.jsonl.gz", "rt", encoding="utf-8") as src,
        gzip.open(lic / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh,
    ):
        fh.write(src.read())
    work = root / "work"
    # Benchmark recipes read ../shared/data relative to the repo; tests must not need it, so they
    # run from a folder whose ../shared/data is the bundled sample (same file names).
    (root / "shared").mkdir()
    os.symlink(data, root / "shared" / "data")
    (root / "cwd").mkdir()
    return {
        "CWD": str(root / "cwd"),
        "tokenizer": str(tok),
        "sample_data": sample_data_dir(),
        "DATA": str(data),
        "WORK": str(work),
        "OUTDIR": str(work / "out"),
        "STAGE": "stage",
        "MODEL": str(model),
        "PARENT": str(model),
        "SEED": 0,
        "BUDGET": None,
    }


def test_demo_recipe_is_shipped():
    assert (REPO / "src" / "lmadapt" / "recipes" / "demo.yaml") in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_validates(path, stand_ins, tmp_path, monkeypatch):
    monkeypatch.chdir(stand_ins["CWD"])
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict), f"{path}: not a mapping"
    if "arms" in raw:
        overrides = [f"output_dir={tmp_path / 'run'}"]
        model_var = (raw.get("vars") or {}).get("model")
        if model_var and not Path(model_var).exists():
            overrides.append(f"vars.model={stand_ins['MODEL']}")  # a machine-specific model folder
        cfg = load_pipeline(path, overrides, variables={"tokenizer": stand_ins["tokenizer"]})
        assert isinstance(cfg, PipelineConfig) and cfg.arms
        from lmadapt.pipeline.plan import plan

        runs = plan(cfg)  # every stage of every arm resolves and hashes
        assert len(runs) == len(cfg.arms) * len(cfg.seeds)
        return
    data = substitute_vars(raw, stand_ins)
    variants = [{}]
    for key in DRIVER_KEYS:
        table = data.pop(key, None)
        if table:
            variants = [{"train": entry} for entry in table.values()]
    cls = FinetuneConfig if "train" in (data.get("data") or {}) else PretrainConfig
    model = data.get("model") or {}
    if model.get("path") and not Path(model["path"]).exists():
        model["path"] = stand_ins["MODEL"]  # a machine-specific model folder; the schema is what is tested
    for extra in variants:
        load_recipe(cls, data=deep_merge(data, extra))
