"""`lmadapt merge`: weight interpolation between a base and its adapted model, on tiny random models."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import CORPUS, base_and_adapted, tiny_llama
from lmadapt.config.base import ConfigError, load_recipe
from lmadapt.config.merge import MergeConfig
from lmadapt.stages.merge import choose, run_merge
from lmadapt.runtime.outputs import write_meta


def _jsonl(path: Path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A base folder and an 'adapted' folder whose weights differ from it, recording the base as parent."""
    return base_and_adapted(tmp_path_factory.mktemp("merge"))


def recipe(pair, out, *overrides, **merge):
    data = {
        "model": {"path": str(pair["adapted"])},
        "merge": merge,
        "eval": {"sets": pair["sets"], "block_size": 32},
        "train": {"output_dir": str(out)},
    }
    return load_recipe(MergeConfig, data=data, overrides=list(overrides))


def logits(folder_or_model, ids):
    model = (
        folder_or_model
        if isinstance(folder_or_model, torch.nn.Module)
        else AutoModelForCausalLM.from_pretrained(folder_or_model).eval()
    )
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sweep_chooses_within_the_forgetting_budget_and_saves_that_model(pair, tmp_path):
    metrics = run_merge(recipe(pair, tmp_path / "out", alphas=[0.5]))
    sweep = {row["alpha"]: row["sets"] for row in metrics["sweep"]}
    assert sorted(sweep) == [0.0, 0.5, 1.0] and all(set(s) == {"domain", "general"} for s in sweep.values())
    # the anchors are the two models themselves
    ids = torch.tensor([pair["tok"](" ".join(CORPUS[:2]))["input_ids"]])
    from lmadapt.stages.evaluate import evaluate_model

    for alpha, folder in ((0.0, pair["base"]), (1.0, pair["adapted"])):
        res = evaluate_model(str(folder), [pair["sets"]["domain"]], block_size=32, max_tokens=20000)
        assert sweep[alpha]["domain"]["perplexity"] == pytest.approx(res["sets"]["domain"]["perplexity"], rel=1e-5)
    # the choice follows the stated rule, and the folder holds exactly the chosen interpolation
    want, _ = choose(sweep, {"domain": "domain", "general": "general"}, 0.05)
    assert metrics["alpha"] == want
    out = tmp_path / "out"
    base = AutoModelForCausalLM.from_pretrained(pair["base"])
    adapted = AutoModelForCausalLM.from_pretrained(pair["adapted"])
    merged = AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.0.mlp.up_proj.weight"
    expect = torch.lerp(base.state_dict()[name], adapted.state_dict()[name], want)
    assert torch.allclose(merged.state_dict()[name], expect, atol=1e-6)
    meta = json.loads((out / "lmadapt_meta.json").read_text())
    assert meta["stage"] == "merge" and meta["base"] == str(pair["base"]) and meta["alpha"] == want
    assert meta["parent"] == str(pair["adapted"]) and (out / "model.safetensors").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["heldout"]["general"]["before"] == sweep[0.0]["general"]
    assert saved["heldout"]["general"]["after"] == sweep[want]["general"]
    assert torch.allclose(logits(out, ids), logits(merged.eval(), ids))


def test_fixed_alpha_without_sets_is_the_exact_midpoint(pair, tmp_path):
    cfg = load_recipe(
        MergeConfig,
        data={
            "model": {"path": str(pair["adapted"])},
            "merge": {"alpha": 0.5},
            "train": {"output_dir": str(tmp_path / "half")},
        },
    )
    metrics = run_merge(cfg)
    assert metrics["alpha"] == 0.5 and metrics["sweep"] == [] and metrics["selection"]["rule"].startswith("fixed")
    base = AutoModelForCausalLM.from_pretrained(pair["base"]).state_dict()
    adapted = AutoModelForCausalLM.from_pretrained(pair["adapted"]).state_dict()
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "half").state_dict()
    for name in base:
        assert torch.allclose(half[name], (base[name] + adapted[name]) / 2, atol=1e-6), name


def test_choose_rule():
    def sets(d, g):
        return {"domain": {"perplexity": d}, "general": {"perplexity": g}}

    sweep = {0.0: sets(100, 50), 0.5: sets(60, 52), 0.75: sets(55, 54), 1.0: sets(50, 70)}
    roles = {"domain": "domain", "general": "general"}
    assert choose(sweep, roles, 0.05)[0] == 0.5  # 0.75 forgets 8% > 5%
    assert choose(sweep, roles, 0.10)[0] == 0.75
    assert choose(sweep, roles, 1.0)[0] == 1.0
    assert choose(sweep, roles, 0.0)[0] == 0.0  # nothing else is free of forgetting
    assert choose(sweep, {"domain": "domain", "general": None}, 0.0)[0] == 1.0


def test_bad_merges_are_refused_with_the_reason(pair, tmp_path):
    orphan = tmp_path / "orphan"
    tiny_llama(len(pair["tok"])).save_pretrained(orphan)
    pair["tok"].save_pretrained(orphan)
    with pytest.raises(ConfigError, match="records no parent model"):
        run_merge(
            load_recipe(
                MergeConfig,
                data={
                    "model": {"path": str(orphan)},
                    "merge": {"alpha": 0.5},
                    "train": {"output_dir": str(tmp_path / "o1")},
                },
            )
        )
    wide = tmp_path / "wide"
    tiny_llama(len(pair["tok"]), intermediate_size=96).save_pretrained(wide)
    pair["tok"].save_pretrained(wide)
    with pytest.raises(ConfigError, match=r"mlp\.\w+_proj\.weight has shape \(64, 32\) in .* but \(96, 32\)"):
        run_merge(
            load_recipe(
                MergeConfig,
                data={
                    "model": {"path": str(wide)},
                    "merge": {"alpha": 0.5, "base": str(pair["base"])},
                    "train": {"output_dir": str(tmp_path / "o2")},
                },
            )
        )
    write_meta(orphan, stage="finetune", parent=str(pair["base"]))
    with pytest.raises(ConfigError, match="fine-tuned task model"):
        run_merge(
            load_recipe(
                MergeConfig,
                data={
                    "model": {"path": str(orphan)},
                    "merge": {"alpha": 0.5},
                    "train": {"output_dir": str(tmp_path / "o3")},
                },
            )
        )
    with pytest.raises(ConfigError, match="eval.sets: choosing alpha needs held-out sets"):
        load_recipe(MergeConfig, data={"model": {"path": str(pair["adapted"])}})
    with pytest.raises(ConfigError, match=r"alpha: weights must be in \[0, 1\]"):
        recipe(pair, tmp_path / "o4", alpha=1.5)


def test_a_lora_adapter_folder_is_merged_into_its_base_first(pair, tmp_path):
    """The adapted model may be a LoRA pretrain output (adapter folder): alpha 1 is base + adapter."""
    from lmadapt.config.model import LoraConfig
    from lmadapt.models.lora import apply_lora, save_model

    base = AutoModelForCausalLM.from_pretrained(pair["base"])
    peft_model = apply_lora(base, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0), "causal")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    adapter = tmp_path / "adapter"
    save_model(peft_model, pair["tok"], adapter, merge=False)
    write_meta(adapter, stage="pretrain", objective="causal", parent=str(pair["base"]), lora=True)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    run_merge(
        load_recipe(
            MergeConfig,
            data={
                "model": {"path": str(adapter)},
                "merge": {"alpha": 1.0},
                "train": {"output_dir": str(tmp_path / "full")},
            },
        )
    )
    ids = torch.tensor([pair["tok"](" ".join(CORPUS[:2]))["input_ids"]])
    want = logits(peft_model.merge_and_unload().eval(), ids)
    assert torch.allclose(logits(tmp_path / "full", ids), want, atol=1e-5)


def test_an_encoder_pair_is_scored_with_its_own_objective(tmp_path):
    """BERT-style models: the sweep scores masked-LM pseudo-perplexity, the same rule chooses."""
    from helpers import tiny_bert, tiny_wordpiece_tokenizer

    tok = tiny_wordpiece_tokenizer(tmp_path / "base")
    torch.manual_seed(1)
    tiny_bert(len(tok)).save_pretrained(tmp_path / "base")
    adapted = tiny_bert(len(tok))
    with torch.no_grad():
        for p in adapted.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapted.save_pretrained(tmp_path / "adapted")
    tok.save_pretrained(tmp_path / "adapted")
    write_meta(tmp_path / "adapted", stage="pretrain", objective="masked", parent=str(tmp_path / "base"))
    sets = {"domain": _jsonl(tmp_path / "d.jsonl", CORPUS[:6]), "general": _jsonl(tmp_path / "g.jsonl", CORPUS[6:12])}
    metrics = run_merge(
        load_recipe(
            MergeConfig,
            data={
                "model": {"path": str(tmp_path / "adapted")},
                "merge": {"alphas": [0.5]},
                "eval": {"sets": sets, "block_size": 32},
                "train": {"output_dir": str(tmp_path / "out")},
            },
        )
    )
    assert metrics["objective"] == "masked"
    first = metrics["sweep"][0]["sets"]["domain"]
    assert "masked_loss" in first and first["perplexity"] == first["pseudo_perplexity"] > 1
    assert (
        metrics["alpha"]
        == choose({r["alpha"]: r["sets"] for r in metrics["sweep"]}, {"domain": "domain", "general": "general"}, 0.05)[
            0
        ]
    )


def test_refine_bisects_to_the_edge_of_the_forgetting_budget():
    """General perplexity 100(1 + a^2), domain 100(1 - a/2): a 5% budget ends at a = 0.2236; the grid's
    best is 0 (0.25 forgets 6.25%), three halvings land on 0.21875 (4.8% forgetting)."""
    from lmadapt.stages.merge import refine

    def score(a):
        return {"domain": {"perplexity": 100 * (1 - a / 2)}, "general": {"perplexity": 100 * (1 + a * a)}}

    roles = {"domain": "domain", "general": "general"}
    sweep = {a: score(a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert choose(sweep, roles, 0.05)[0] == 0.0
    asked = []
    refine(lambda a: asked.append(a) or score(a), sweep, roles, 0.05, 3)
    assert asked == [0.125, 0.1875, 0.21875]
    assert choose(sweep, roles, 0.05)[0] == 0.21875
    refine(lambda a: asked.append(a) or score(a), sweep, roles, 0.05, 0)
    assert len(asked) == 3  # refine: 0 scores nothing more
    flat = {a: {"domain": {"perplexity": 10 - a}, "general": {"perplexity": 10.0}} for a in (0.0, 0.5, 1.0)}
    refine(lambda a: asked.append(a), flat, roles, 0.05, 3)
    assert len(asked) == 3  # nothing breaks the budget


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="gloo two-process runs on Linux")
def test_two_processes_choose_and_save_what_one_process_does(pair, tmp_path):
    """Under torchrun every process scores its share of the blocks (all-reduced); the main process
    saves alone. The sweep, the choice and the saved weights equal one process's."""
    from helpers import torchrun

    args = [
        f"model.path={pair['adapted']}",
        f"eval.sets.domain={pair['sets']['domain']}",
        f"eval.sets.general={pair['sets']['general']}",
        "eval.block_size=8",
        "merge.alphas=[0.5]",
    ]
    proc = torchrun("-m", "lmadapt.cli", "merge", *args, f"train.output_dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one = run_merge(load_recipe(MergeConfig, data=None, overrides=args + [f"train.output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["alpha"] == one["alpha"] and [r["alpha"] for r in two["sweep"]] == [r["alpha"] for r in one["sweep"]]
    for a, b in zip(two["sweep"], one["sweep"]):
        for name in ("domain", "general"):
            assert a["sets"][name]["tokens"] == b["sets"][name]["tokens"]
            assert a["sets"][name]["perplexity"] == pytest.approx(b["sets"][name]["perplexity"], rel=1e-5)
    saved = {n: AutoModelForCausalLM.from_pretrained(tmp_path / n).state_dict() for n in ("one", "two")}
    assert all(torch.equal(saved["one"][k], saved["two"][k]) for k in saved["one"])
