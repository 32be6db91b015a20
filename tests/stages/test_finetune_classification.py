"""`lmadapt finetune` with the classification task, and `lmadapt predict`, on tiny random models.

The toy task: a text's label follows from one keyword hidden among filler words, so even a
2-layer, 32-wide model learns it in a few seconds.
"""

import json
import re
import random
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_bert, tiny_bpe_tokenizer, tiny_llama, tiny_wordpiece_tokenizer
from lmadapt.config.base import ConfigError, load_recipe, to_dict
from lmadapt.config.finetune import FinetuneConfig
from lmadapt.stages.finetune import attach_adapters, read_splits, resolve_source, run_finetune
from lmadapt.stages.predict import predict_file
from lmadapt.tasks import TASKS
from lmadapt.tasks.base import DataError

# Whole tokens in both tiny tokenizers, so one position decides the label.
KEYWORDS = {"pos": "over", "neg": "was"}
FILLER = "the quick brown fox jumps lazy dog a journey of thousand miles begins single step".split()


def toy_rows(n, seed, keywords=KEYWORDS):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        present = [lab for lab in keywords if rng.random() < 0.5] if isinstance(keywords, tuple) else None
        label = rng.choice(sorted(keywords)) if present is None else present
        words = rng.sample(FILLER, 5)
        for lab in [label] if present is None else present:
            words.insert(rng.randrange(1, len(words) + 1), keywords[lab] if isinstance(keywords, dict) else lab)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def recipe(base, train, dev, out, *overrides, test=None, **sections):
    data = {
        "model": {"path": str(base), "max_length": 32},
        "data": {"train": train, "dev": dev, "test": test},
        "train": {
            "output_dir": str(out),
            "epochs": 10,
            "lr": 3e-3,
            "batch_size": 8,
            "warmup_ratio": 0.0,
            "report_to": [],
            "log_every": 4,
            "torch_threads": 1,
            "seed": 0,
        },
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return load_recipe(FinetuneConfig, data=data, overrides=list(overrides))


def run(cfg):
    return run_finetune(cfg, to_dict(cfg))


def losses(out):
    rows = [json.loads(line) for line in (Path(out) / "logs.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    tok = tiny_wordpiece_tokenizer(folder)
    tiny_bert(len(tok)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return {
        "train": write_jsonl(d / "train.jsonl", toy_rows(96, 1)),
        "dev": write_jsonl(d / "dev.jsonl", toy_rows(40, 2)),
        "test": write_jsonl(d / "test.jsonl", toy_rows(40, 3)),
    }


@pytest.fixture(scope="module")
def bert_run(bert_base, toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_run") / "out"
    cfg = recipe(bert_base, toy["train"], toy["dev"], out, "train.early_stopping_patience=2", test=toy["test"])
    return cfg, run(cfg), out


# --- training ---------------------------------------------------------------------------------


def test_encoder_learns_keyword_and_writes_folder(bert_run):
    cfg, metrics, out = bert_run
    loss = losses(out)
    assert loss[-1] < loss[0] - 0.2
    assert metrics["dev"]["accuracy"] >= 0.8 and metrics["test"]["accuracy"] >= 0.8
    assert metrics["train"]["stopped_early"] and metrics["train"]["epochs"] < 10
    assert set(metrics["dev"]["per_class"]) == {"neg", "pos"} and "confusion_matrix" in metrics["test"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "lmadapt_recipe.yaml", "metrics.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    meta = json.loads((out / "lmadapt_meta.json").read_text())
    assert meta["stage"] == "finetune" and meta["task"] == "classification" and meta["parent"] == str(cfg.model.path)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["selection"]["metric"] == "macro_f1" and saved["dev"]["accuracy"] == metrics["dev"]["accuracy"]
    assert yaml.safe_load((out / "lmadapt_recipe.yaml").read_text())["data"]["train"] == cfg.data.train


def test_dev_metrics_are_the_best_checkpoints_not_a_second_pass(bert_run):
    """Dev was scored at every epoch; the final dev metrics are those of the best checkpoint's
    evaluation (its weights are what was saved), equal to scoring the saved model again."""
    from lmadapt.stages.predict import load_predictor

    cfg, metrics, out = bert_run
    sel = metrics["selection"]
    assert sel["dev_scored"] == "at the best checkpoint's evaluation"
    assert metrics["dev"]["macro_f1"] == pytest.approx(sel["best_value"])
    p = load_predictor(out)
    splits, _, space = read_splits(p.task, p.cfg)
    again = p.task.evaluate(p.model, p.tokenizer, splits["dev"], space, p.cfg)
    assert metrics["dev"]["confusion_matrix"] == again["confusion_matrix"]
    assert metrics["dev"]["per_class"] == again["per_class"] and metrics["dev"]["truncated"] == again["truncated"]


def test_label_space_saved_in_config_and_reloads(bert_run):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _, metrics, out = bert_run
    config = AutoConfig.from_pretrained(out)
    assert config.label2id == {"neg": 0, "pos": 1} and config.id2label == {0: "neg", 1: "pos"}
    assert config.problem_type == "single_label_classification"
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]


def test_predict_file_and_single_text(bert_run, toy, tmp_path):
    _, metrics, out = bert_run
    pred_path = tmp_path / "pred.jsonl"
    summary = predict_file(out, toy["test"], pred_path, batch_size=7)
    rows = [json.loads(line) for line in pred_path.read_text().splitlines()]
    assert summary["records"] == len(rows) == 40
    p = rows[0]["prediction"]
    assert set(p) == {"label", "score", "top_k"} and len(p["top_k"]) == 2
    assert abs(sum(t["score"] for t in p["top_k"]) - 1) < 1e-4
    acc = sum(r["prediction"]["label"] == r["label"] for r in rows) / len(rows)
    assert acc == pytest.approx(metrics["test"]["accuracy"])
    one = predict_file(out, text="the lazy dog was here")
    assert one["text"] == "the lazy dog was here" and one["prediction"]["label"] == "neg"


def test_decoder_pools_last_real_token_with_eos_as_pad(toy, tmp_path):
    base = tmp_path / "llama"
    tok = tiny_bpe_tokenizer()
    tok.pad_token = None  # like most decoder tokenizers
    tok.save_pretrained(base)
    tiny_llama(len(tok)).save_pretrained(base)
    cfg = recipe(
        base,
        toy["train"],
        toy["dev"],
        tmp_path / "out",
        "train.lr=1e-2",
        "train.epochs=8",
        data={"class_weights": "balanced"},
    )
    metrics = run(cfg)
    assert metrics["dev"]["accuracy"] >= 0.75
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] == tok.eos_token_id
    # Padding must not change a prediction: batched (padded) == one by one.
    texts = [r["text"] for r in toy_rows(6, 9)]
    batch = predict_file(
        out, write_jsonl(tmp_path / "x.jsonl", [{"text": t} for t in texts]), tmp_path / "x.pred.jsonl", batch_size=6
    )
    rows = [json.loads(line)["prediction"] for line in Path(batch["output"]).read_text().splitlines()]
    for text, row in zip(texts, rows):
        single = predict_file(out, text=text)["prediction"]
        assert single["label"] == row["label"] and single["score"] == pytest.approx(row["score"], abs=1e-4)


def test_multi_label(bert_base, tmp_path):
    kw = ("over", "was")
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(96, 1, kw))
    dev = write_jsonl(tmp_path / "dev.jsonl", toy_rows(32, 2, kw))
    cfg = recipe(
        bert_base,
        train,
        dev,
        tmp_path / "out",
        "train.epochs=3",
        task={"problem": "multi_label"},
        data={"balanced_sampling": True},
    )
    metrics = run(cfg)
    assert {"micro_f1", "macro_f1", "subset_accuracy"} <= set(metrics["dev"])
    assert metrics["selection"]["metric"] == "micro_f1"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and set(config["label2id"]) == set(kw)
    one = predict_file(tmp_path / "out", text="the dog was over")["prediction"]
    assert set(one["probabilities"]) == set(kw) and all(one["probabilities"][x] >= 0.5 for x in one["labels"])


def test_regression(bert_base, tmp_path):
    def rows(n, seed):
        return [{"text": r["text"], "label": 1.0 if r["label"] == "pos" else 0.0} for r in toy_rows(n, seed)]

    train = write_jsonl(tmp_path / "train.jsonl", rows(96, 1))
    dev = write_jsonl(tmp_path / "dev.jsonl", rows(32, 2))
    cfg = recipe(bert_base, train, dev, tmp_path / "out", "train.epochs=3", task={"problem": "regression"})
    metrics = run(cfg)
    assert {"mse", "mae", "pearson"} <= set(metrics["dev"]) and metrics["selection"]["metric"] == "mse"
    assert losses(tmp_path / "out")[-1] < losses(tmp_path / "out")[0]
    value = predict_file(tmp_path / "out", text="a dog was here")["prediction"]["value"]
    assert isinstance(value, float)


# --- starting from a LoRA adapter folder (a `lmadapt pretrain` output) ------------------------


@pytest.fixture(scope="module")
def adapter_dir(bert_base, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(
        AutoModelForMaskedLM.from_pretrained(bert_base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter, so merging changes weights
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(bert_base).save_pretrained(folder)
    (folder / "lmadapt_meta.json").write_text(json.dumps({"stage": "pretrain", "parent": str(bert_base), "lora": True}))
    return folder


def test_adapter_attach_modes(bert_base, adapter_dir, toy, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    task = TASKS["classification"]
    stack = recipe(adapter_dir, toy["train"], toy["dev"], tmp_path / "a")
    src = resolve_source(stack)
    assert (src.base, src.adapter) == (str(bert_base), str(adapter_dir))
    _, _, space = read_splits(task, stack)
    plain = task.load_model(src.base, space, stack)
    merged = attach_adapters(task.load_model(src.base, space, stack), task, src, stack)
    expected = PeftModel.from_pretrained(
        AutoModelForMaskedLM.from_pretrained(bert_base), adapter_dir
    ).merge_and_unload()
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(merged.state_dict()[q], expected.state_dict()[q], atol=1e-6)
    assert not torch.allclose(merged.state_dict()[q], plain.state_dict()[q])

    cont = recipe(
        bert_base,
        toy["train"],
        toy["dev"],
        tmp_path / "b",
        model={"adapter": str(adapter_dir), "adapter_mode": "continue"},
    )
    model = attach_adapters(task.load_model(str(bert_base), space, cont), task, resolve_source(cont), cont)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert any("pooler" in n for n in trainable)  # not in the masked-LM checkpoint: trained in full
    assert not any("query.base_layer" in n for n in trainable)


@pytest.mark.parametrize("mode", ["stack", "continue"])
def test_finetune_from_adapter_folder(mode, bert_base, adapter_dir, toy, tmp_path):
    model = {"adapter": str(adapter_dir), "adapter_mode": mode}
    lora = {"enabled": True, "r": 4} if mode == "stack" else {}
    epochs = "train.epochs=2" if mode == "stack" else "train.epochs=1"  # 2: the best LoRA epoch is reloaded
    cfg = recipe(bert_base, toy["train"], toy["dev"], tmp_path / "out", epochs, model=model, lora=lora)
    metrics = run(cfg)
    out = tmp_path / "out"
    meta = json.loads((out / "lmadapt_meta.json").read_text())
    assert meta["adapter"] == str(adapter_dir) and meta["adapter_mode"] == mode
    if mode == "stack":  # the merged base exists only in memory: always saved in full
        assert (out / "model.safetensors").is_file() and not meta["lora"]
    else:  # the continued adapter (+ trained head) on the original base
        assert (out / "adapter_model.safetensors").is_file() and meta["lora_base"] == str(bert_base)
    one = predict_file(out, text="the dog was here")
    assert one["prediction"]["label"] in {"pos", "neg"}
    # the dev metrics kept from the best epoch's evaluation are those of the saved model (the
    # Trainer reloaded that epoch's LoRA weights before saving)
    from lmadapt.stages.predict import load_predictor

    p = load_predictor(out)
    splits, _, space = read_splits(p.task, p.cfg)
    again = p.task.evaluate(p.model, p.tokenizer, splits["dev"], space, p.cfg)
    assert metrics["selection"]["dev_scored"] == "at the best checkpoint's evaluation"
    assert metrics["dev"]["confusion_matrix"] == again["confusion_matrix"]
    assert one["prediction"]["score"] == pytest.approx(
        predict_file(out, text="the dog was here")["prediction"]["score"]
    )


# --- data errors and recipe validation (no training) -----------------------------------------


def test_unseen_dev_label_names_file_line_field(bert_base, toy, tmp_path):
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "a dog", "label": "pos"}, {"text": "a fox", "label": "maybe"}])
    with pytest.raises(DataError, match=r"dev\.jsonl:2: field 'label': label 'maybe' in the dev set never occurs"):
        run(recipe(bert_base, toy["train"], dev, tmp_path / "out"))


def test_bad_training_records_raise_or_skip(bert_base, toy, tmp_path):
    rows = toy_rows(20, 5)
    rows[2] = {"text": "no label here"}
    rows[4] = {"text": "", "label": "pos"}
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:3: field 'label' missing \(keys: text\)"):
        run(recipe(bert_base, train, toy["dev"], tmp_path / "out"))
    cfg = recipe(bert_base, train, toy["dev"], tmp_path / "out2", data={"on_error": "skip"})
    splits, reports, space = read_splits(TASKS["classification"], cfg)
    assert len(splits["train"]) == 18 and reports["train"].skipped == 2 and reports["train"].examples == 18
    assert reports["train"].skip_reasons == {"field 'label' missing": 1, "field 'text' empty": 1}


def test_truncation_needs_consent(bert_base, toy, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", toy_rows(10, 1) + [{"text": " ".join(FILLER * 4), "label": "pos"}])
    cfg = recipe(bert_base, long, toy["dev"], tmp_path / "out", "model.max_length=40")
    task = TASKS["classification"]
    splits, reports, space = read_splits(task, cfg)
    tok = tiny_wordpiece_tokenizer()
    with pytest.raises(DataError, match=r"long\.jsonl:11: \d+ tokens, more than model\.max_length=40"):
        task.encode(splits["train"], tok, space, cfg, reports["train"])
    cfg.data.allow_truncation = True
    ds = task.encode(splits["train"], tok, space, cfg, reports["train"])
    assert max(ds["length"]) == 40 and reports["train"].truncated == 1


def test_split_off_dev_and_label_budget(bert_base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(100, 1))
    cfg = recipe(bert_base, train, None, tmp_path / "out", "data.dev_fraction=0.2", "data.max_examples=30")
    splits, reports, space = read_splits(TASKS["classification"], cfg)
    assert len(splits["dev"]) == 20 and len(splits["train"]) == 30 and space["labels"] == ["neg", "pos"]
    again, _, _ = read_splits(TASKS["classification"], cfg)
    assert [e.origin for e in again["train"]] == [e.origin for e in splits["train"]]
    assert not {e.origin for e in splits["dev"]} & {e.origin for e in splits["train"]}


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
        (["data.train=/nope.jsonl"], "data.train: file not found"),
        (["task.problem=regression", "train.metric=macro_f1"], "not a regression metric"),
        (["data.label_separator=|"], "only meaningful with task.problem: multi_label"),
        (["data.class_weights=balanced", "data.balanced_sampling=true"], "corrects the imbalance twice"),
        (["task.problem=regression", "data.class_weights=balanced"], "regression has no classes"),
        (["task.type=extraction", "task.problem=multi_label"], "applies to classification only"),
        (["model.path=./missing/model"], "model.path: folder not found"),
        (["data.dev_fraction=0.6", "data.test_fraction=0.5"], "leave no training data"),
    ],
)
def test_recipe_validation(bert_base, toy, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        recipe(bert_base, toy["train"], toy["dev"], tmp_path / "out", *override)
    assert message in str(err.value)


def test_adapter_key_must_be_an_adapter_folder(bert_base, toy, tmp_path):
    with pytest.raises(ConfigError, match="is not a LoRA adapter folder"):
        recipe(bert_base, toy["train"], toy["dev"], tmp_path / "out", model={"adapter": str(bert_base)})


def test_predict_options(bert_run):
    _, _, out = bert_run
    # generation options (the CLI always passes them) do not apply to a classifier and are ignored
    one = predict_file(out, text="a dog was here", max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=1)
    assert len(one["prediction"]["top_k"]) == 1
    with pytest.raises(ConfigError, match="does not apply to task 'classification'"):
        predict_file(out, text="a dog", bogus=1)


def test_class_weights_and_weighted_loss():
    from lmadapt.tasks.base import Example

    task = TASKS["classification"]
    ex = [Example({"text": "x", "label": lab}, f"f:{i}") for i, lab in enumerate("aaab")]
    space = {"problem": "single_label", "labels": ["a", "b", "c"], "counts": {"a": 3, "b": 1, "c": 5}}
    w = task.class_weights(ex, space)  # counts of the examples given, not of the space
    assert w.tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    loss = task.loss_function(space, w)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=w, reduction="sum") / 2
    assert loss({"logits": logits}, labels).item() == pytest.approx(expected.item())
    assert loss({"logits": logits}, labels, num_items_in_batch=4).item() == pytest.approx(expected.item() / 2)
    assert task.sample_weights(ex, space) == [1 / 3, 1 / 3, 1 / 3, 1.0]


def test_finetune_from_hub_splits_equals_the_same_records_from_files(bert_base, toy, tmp_path):
    """data.train/dev as ``hub:`` specs: a dataset repo laid out as on the hub (parquet with class-id
    labels, resolved by datasets.load_dataset as a hub repo is) trains exactly as its JSONL twin."""
    datasets = pytest.importorskip("datasets")
    names = sorted(KEYWORDS)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    repo = tmp_path / "owner_toy"
    for split, key in (("train", "train"), ("validation", "dev")):
        rows = [json.loads(line) for line in Path(toy[key]).read_text().splitlines()]
        ds = datasets.Dataset.from_dict(
            {"text": [r["text"] for r in rows], "label": [names.index(r["label"]) for r in rows]}, features=features
        )
        ds.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    hub_cfg = recipe(bert_base, f"hub:{repo}", f"hub:{repo}:validation", tmp_path / "hub", "train.epochs=2")
    file_cfg = recipe(bert_base, toy["train"], toy["dev"], tmp_path / "files", "train.epochs=2")
    hub_metrics, file_metrics = run(hub_cfg), run(file_cfg)
    assert hub_metrics["dev"]["macro_f1"] == file_metrics["dev"]["macro_f1"]
    assert losses(tmp_path / "hub") == losses(tmp_path / "files")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert set(config["label2id"]) == set(names)  # names, not class ids
    summary = predict_file(tmp_path / "hub", f"hub:{repo}:validation", tmp_path / "pred.jsonl")
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert summary["records"] == len(predicted) == 40 and predicted[0]["prediction"]["label"] in names

    # a row without a label (class id -1, as in GLUE's test splits) is a null label, with its row
    ds = datasets.Dataset.from_dict({"text": ["the dog was", "over the dog"], "label": [0, -1]}, features=features)
    ds.to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=rf"hub:{repo}:test#1: field 'label' is null"):
        TASKS["classification"].read(f"hub:{repo}:test", file_cfg, split="test", report=None)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("hub:bad id:train", "is neither a hub dataset id"),
        ("hub:owner/name[sub:train", "expected hub:owner/name"),
    ],
)
def test_hub_specs_are_checked_in_the_recipe(bert_base, toy, tmp_path, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe(bert_base, spec, toy["dev"], tmp_path / "out")
