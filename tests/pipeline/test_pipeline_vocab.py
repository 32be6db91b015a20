"""A pipeline arm with vocabulary extension runs through fine-tuning and predict, and the report
compares arms with different tokenizers by per-word perplexity."""

from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.compare import arm_values, load_run
from toy_pipeline import make_workspace, pipeline_dict


def test_vocabulary_arm_runs_through_finetune_and_predict(tmp_path):
    from transformers import AutoTokenizer

    from lmadapt.stages.predict import predict_file

    ws = make_workspace(tmp_path)
    out = tmp_path / "run"
    p = pipeline_dict(ws, out)
    p.update(seeds=[0], baseline={"tfidf": False}, keep_checkpoints=False)
    p["defaults"]["pretrain"]["train"].update(
        max_steps=2, eval_every=None, save_every=None
    )  # fewer steps, no checkpoints
    p["stages"]["vocab"] = {
        "kind": "pretrain",
        "recipe": {
            "model": {"path": "@previous"},
            "data": {"sources": [{"path": ws["domain"], "name": "domain"}]},
            "vocab": {"extend": 4, "min_frequency": 2, "warmup_steps": 2, "embedding_lr": 1e-2},
        },
    }
    p["arms"] = {"vocab_ft": ["base", "vocab", "ft"]}  # the report's columns are the same for any other arm
    prun.run_pipeline(load_pipeline(data=p))

    run = load_run(out)
    vocab_row = next(r for r in run.rows if r.get("stage") == "vocab")
    assert vocab_row["lm"]["domain"]["word_perplexity"] > 1 and vocab_row["lm"]["domain"]["words"] > 0
    keys = [c.key for c in run.columns]
    assert "domain_wppl" in keys and "general_wppl" in keys
    values = arm_values(run)
    assert values["vocab_ft"]["domain_wppl"].mean == vocab_row["lm"]["domain"]["word_perplexity"]
    report = (out / "report.md").read_text()
    assert "domain word ppl" in report and "## Vocabulary extension" in report
    v = vocab_row["vocab"]
    assert v["added"] == 4 and v["tokens_per_word_after"] < v["tokens_per_word_before"]
    assert f"| vocab | 4 | mean | {v['tokens_per_word_before']:.3f} | {v['tokens_per_word_after']:.3f} |" in report
    assert "Vocabulary extension" in (out / "report.html").read_text()

    ft = next(r for r in run.rows if r.get("arm") == "vocab_ft" and r.get("kind") == "finetune")
    assert ft["task"]["test"]
    folder = out / ft["folder"]
    base_tok = AutoTokenizer.from_pretrained(ws["tok"])
    assert len(AutoTokenizer.from_pretrained(folder)) == len(base_tok) + 4
    result = predict_file(str(folder), None, None, text="the quick brown fox jumps over")
    assert result


def test_the_verdict_judges_an_extended_vocabulary_per_word():
    """Per-token perplexity favours a tokenizer that splits text into fewer tokens no matter what the model
    learned: where an arm extended its vocabulary, the verdict compares per-word perplexity; otherwise
    it keeps per-token perplexity."""
    from types import SimpleNamespace

    from lmadapt.pipeline.compare import LM_COLUMNS, word_columns
    from lmadapt.pipeline.verdict import sentence, verdicts

    def cells(tok_ppl, word_ppl):
        return {
            "domain_ppl": {"stat": SimpleNamespace(mean=tok_ppl, ids=[])},
            "domain_wppl": {"stat": SimpleNamespace(mean=word_ppl, ids=[])},
        }

    rows = [
        {"arm": "dapt", "id": "p1", "stage": "dapt", "kind": "pretrain", "lm": {"domain": {"word_perplexity": 9.0}}},
        {"arm": "vocab", "id": "p2", "stage": "vocab", "kind": "pretrain", "vocab": {"added": 4}},
    ]
    columns = [c for c in LM_COLUMNS + word_columns(rows) if c.role == "domain"]
    comp = {
        "reference": "dapt",
        "rows": [
            {"arm": "dapt", "cells": cells(4.0, 9.0)},
            {"arm": "vocab", "cells": cells(6.0, 4.5)},
            {"arm": "plain", "cells": cells(2.0, 8.0)},
        ],
    }
    by_arm = {v["arm"]: v for v in verdicts(rows, comp, columns)}
    assert by_arm["vocab"]["domain_factor"] == 0.5 and "domain word ppl ÷2" in sentence(by_arm["vocab"])
    assert by_arm["plain"]["domain_factor"] == 0.5 and "; domain ppl ÷2" in sentence(by_arm["plain"])
