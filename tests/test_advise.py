"""`lmadapt advise`: decision rules on synthetic measurements, measurements on hand-built cases,
one end-to-end run on a tiny model folder, and the pipeline YAML it writes."""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import pytest
import yaml
from helpers import CORPUS, tiny_bert, tiny_bpe_tokenizer, tiny_llama, tiny_wordpiece_tokenizer

from lmadapt.advise import add_arguments, main, measure, recommend
from lmadapt.advise.measure import DEFAULT_REFERENCE
from lmadapt.advise.vocabulary import word_pieces
from lmadapt.advise.pipeline import PREVIOUS
from lmadapt.advise.rules import NO_EVIDENCE, THRESHOLDS
from lmadapt.advise.text import distinctive_terms, vocabulary_overlap, word_counts, words
from lmadapt.config.base import load_recipe
from lmadapt.config.finetune import FinetuneConfig
from lmadapt.config.pretrain import PretrainConfig

GiB = 2**30


# ------------------------------------------------------------------ synthetic measurement dicts


def meas(
    *,
    domain_tokens=None,
    domain_docs=500,
    sampled_tokens=60_000,
    ratio=None,
    scored=8192,
    overlap=None,
    per_class=None,
    examples=None,
    split3=(0.1, 0.1),
    params=135_000_000,
    full_gib=3.0,
    avail_gib=64.0,
    shift_text=None,
    task_ratio=None,
):
    m = {
        "model": {"params": params, "max_position_embeddings": 2048, "lora_trainable_params": 5_000_000},
        "domain": None,
        "task": None,
        "shift": None,
        "vocabulary": None,
        "cost": {
            "memory": {"full_bytes": full_gib * GiB, "lora_bytes": 1.0 * GiB, "available_bytes": avail_gib * GiB},
            "probe": {"tokens_per_second": 1000.0, "device": "cpu"},
            "flops_per_epoch": 1e15,
            "seconds_per_epoch": 3600.0,
        },
    }
    if domain_tokens is not None:
        m["domain"] = {
            "documents": domain_docs,
            "sampled_documents": min(domain_docs, 80),
            "sampled_tokens": min(sampled_tokens, domain_tokens),
            "estimated_tokens": domain_tokens,
        }
    if per_class is not None:
        m["task"] = {
            "examples": sum(per_class),
            "classes": len(per_class),
            "per_class_min": min(per_class),
            "per_class_median": sorted(per_class)[len(per_class) // 2],
            "problem": "single_label",
            "tokens": 100 * sum(per_class),
            "length_tokens_p95": 120,
        }
    elif examples is not None:
        m["task"] = {"examples": examples, "classes": None, "tokens": 100 * examples, "length_tokens_p95": 120}
    text = shift_text or ("domain" if m["domain"] else "task")
    if ratio is not None:
        m["shift"] = {"metric": "perplexity", "reference": {"tokens": scored}, "domain": None, "task": None}
        m["shift"][text] = {"ratio": ratio, "tokens": scored}
    if task_ratio is not None:
        m["shift"]["task"] = {"ratio": task_ratio, "tokens": scored}
    if overlap is not None:
        m["vocabulary"] = {
            "text": text,
            "top_k": 3000,
            "overlap": overlap,
            "domain_split3_share": split3[0],
            "reference_split3_share": split3[1],
            "candidates": [{"word": "pyobject"}],
        }
    return m


def rules_of(advice):
    return {r["rule"] for r in advice.reasons}


def test_row1_lots_of_unlabeled_domain_data_means_continued_pretraining():
    for goal in ("classify", "understand"):
        a = recommend(meas(domain_tokens=20_000_000, ratio=2.5, overlap=0.2), goal)
        assert a.recommendation == "continued_pretraining", goal
        assert a.steps == ["dapt"]
        vol = next(r for r in a.reasons if r["rule"] == "volume")
        assert vol["value"] == 20_000_000 and vol["threshold"] == THRESHOLDS["lots_domain_tokens"]
    # a classify goal without labels: fine-tuning is still to come, and it says so
    a = recommend(meas(domain_tokens=20_000_000, ratio=2.5, overlap=0.2), "classify")
    assert any("labeled classify examples" in x for x in a.missing)
    assert a.confidence == "medium"
    assert a.arms == ["dapt_full", "dapt_lora"]


def test_row2_labeled_data_means_finetuning():
    a = recommend(meas(per_class=[40, 60, 80]), "extract")
    assert a.recommendation == "finetuning" and a.steps == ["ft"]
    assert "labels" in rules_of(a)
    assert a.arms == ["ft_only", "tapt_ft"]
    assert a.method == "full"


def test_row3_both_means_continued_pretraining_first_then_finetuning():
    a = recommend(meas(domain_tokens=8_000_000, ratio=2.0, overlap=0.25, per_class=[30, 50, 90]), "classify")
    assert a.recommendation == "continued_pretraining_then_finetuning"
    assert a.steps == ["dapt", "ft"]
    assert a.confidence == "high"
    assert a.arms == ["ft_only", "dapt_ft", "tapt_ft", "dapt_tapt_ft"]
    assert {"volume", "labels", "shift", "vocabulary"} <= rules_of(a)
    assert any(r["rule"] == "shift" and r["value"] == 2.0 and r["threshold"] == 1.5 for r in a.reasons)


def test_row4_goal_generate_or_understand_means_continued_pretraining():
    for goal in ("generate", "understand"):
        a = recommend(meas(domain_tokens=400_000, ratio=2.2, overlap=0.3), goal)  # far from "lots"
        assert a.recommendation == "continued_pretraining", goal
        assert "goal" in rules_of(a)
        assert a.method == "lora"  # little data: few trainable parameters, less forgetting
    # no domain corpus but labeled texts: continued pretraining on the task's own texts
    a = recommend(meas(per_class=[50, 50], ratio=1.8, overlap=0.3), "generate")
    assert a.recommendation == "task_adaptive_pretraining_then_finetuning"


def test_row5_goal_classify_extract_instruct_means_finetuning():
    for goal in ("classify", "extract", "instruct"):
        # a small domain corpus the model already models well adds nothing: fine-tune
        a = recommend(meas(domain_tokens=300_000, ratio=1.05, overlap=0.5, per_class=[20, 25, 30]), goal)
        assert a.recommendation == "finetuning", goal
        assert "goal" in rules_of(a)


def test_shifted_task_texts_add_task_adaptive_pretraining():
    a = recommend(meas(per_class=[100, 120], ratio=2.3, overlap=0.2), "classify")
    assert a.recommendation == "task_adaptive_pretraining_then_finetuning"
    assert a.steps == ["tapt", "ft"]
    assert "tapt" in rules_of(a)
    # the task texts' own perplexity outranks the vocabulary: a model that knows them gains little
    assert recommend(meas(per_class=[100, 120], ratio=1.0, overlap=0.2), "classify").recommendation == "finetuning"
    # ... unless that perplexity comes from too few tokens: then the vocabulary decides (less sure)
    thin = recommend(meas(per_class=[100, 120], ratio=1.0, scored=300, overlap=0.2), "classify")
    assert thin.recommendation == "task_adaptive_pretraining_then_finetuning" and thin.confidence == "medium"
    # a small domain corpus the model knows, but foreign task texts
    a = recommend(meas(domain_tokens=300_000, ratio=1.1, task_ratio=2.4, per_class=[100, 120]), "classify")
    assert a.recommendation == "task_adaptive_pretraining_then_finetuning"
    assert [r["value"] for r in a.reasons if r["rule"] == "shift"] == [1.1, 2.4]


def test_not_enough_evidence_instead_of_a_guess():
    a = recommend(meas(domain_tokens=3_000, domain_docs=5, sampled_tokens=3_000, ratio=3.0), "generate")
    assert a.confidence == NO_EVIDENCE and a.recommendation == "not_enough_evidence"
    assert a.arms == [] and a.missing
    a = recommend(meas(per_class=[3, 40]), "classify")
    assert a.confidence == NO_EVIDENCE and any("smallest class has 3" in w for w in a.warnings)
    a = recommend(meas(), "classify")
    assert a.confidence == NO_EVIDENCE and a.missing


def test_lora_when_full_training_does_not_fit_and_confidence_near_thresholds():
    a = recommend(
        meas(domain_tokens=20_000_000, ratio=2.0, overlap=0.2, per_class=[50, 50], full_gib=30.0, avail_gib=16.0),
        "classify",
    )
    assert a.method == "lora" and "memory" in rules_of(a)
    a = recommend(
        meas(domain_tokens=20_000_000, ratio=2.0, overlap=0.2, per_class=[50, 50], params=7_000_000_000, full_gib=8.0),
        "classify",
    )
    assert a.method == "lora" and "size" in rules_of(a)
    a = recommend(
        meas(domain_tokens=20_000_000, ratio=2.0, overlap=0.2, split3=(0.5, 0.1), params=7_000_000_000, full_gib=8.0),
        "understand",
    )
    assert a.train_embeddings and a.vocabulary_candidates == ["pyobject"]
    # a volume just above "lots" and a thin perplexity measurement: less sure
    sure = recommend(meas(domain_tokens=20_000_000, ratio=2.0, overlap=0.2, per_class=[50, 50]), "classify")
    unsure = recommend(
        meas(domain_tokens=5_200_000, ratio=2.0, scored=512, overlap=0.2, per_class=[50, 50]), "classify"
    )
    assert sure.confidence == "high" and unsure.confidence == "low"
    assert json.loads(json.dumps(sure.to_dict()))["thresholds"]["shift_ratio"] == 1.5


def test_default_probe_is_not_thin():
    # the default shift probe scores 8 causal blocks of 256: 8 x 255 tokens minus each document's
    # first token, e.g. 2,036 (seen with SmolLM2 on ../shared/data). That must count as evidence.
    default = recommend(
        meas(domain_tokens=5_200_000, ratio=2.0, scored=2036, overlap=0.2, per_class=[50, 50]), "classify"
    )
    thin = recommend(
        meas(domain_tokens=5_200_000, ratio=2.0, scored=6 * 255, overlap=0.2, per_class=[50, 50]), "classify"
    )
    assert default.confidence != "low" and thin.confidence == "low"


def test_shift_blocks_spread_over_documents():
    # eight long documents, each of one marker word: the first blocks scored must come from many of
    # them, not from the first document only (packed blocks come in document order)
    from types import SimpleNamespace

    from lmadapt.advise.shift import shuffled_blocks

    tok = tiny_bpe_tokenizer()
    texts = [" ".join([f"doc{i}"] * 300) for i in range(8)]
    blocks = shuffled_blocks(texts, SimpleNamespace(tokenizer=tok, objective="causal"), 64, "document")
    first = [tok.decode(blocks[i]["input_ids"]) for i in range(8)]
    sources = {i for text in first for i in range(8) if f"doc{i}" in text}
    assert len(sources) >= 4, first
    # only the order changes: the same blocks as packing them in document order
    from lmadapt.data.packing import pack_blocks, tokenize_documents

    ordered, _ = pack_blocks(
        tokenize_documents(texts, tok, separator="eos", cache=False),
        block_size=64,
        pad_id=tok.pad_token_id,
        mode="document",
    )
    assert sorted(map(tuple, blocks["input_ids"])) == sorted(map(tuple, ordered["input_ids"]))


def test_recommend_rejects_unknown_goal():
    with pytest.raises(ValueError, match="goal"):
        recommend(meas(), "summarise")


# ------------------------------------------------------------------ measurements on hand-built cases


def test_word_statistics():
    assert words("The Server's end-to-end TLS, and 42 x") == ["server's", "end-to-end", "tls"]
    same = word_counts(CORPUS * 3)
    assert vocabulary_overlap(same, copy.copy(same)) == {
        "overlap": 1.0,
        "top_k": len([c for c in same.values() if c >= 2]),
    }
    dom = word_counts(["kernel kernel kernel mutex mutex mutex mutex mutex the cat"] * 2)
    ref = word_counts(["the cat sat on the mat with another cat"] * 2)
    top = distinctive_terms(dom, ref, n=2)
    assert [t["word"] for t in top] == ["mutex", "kernel"] and top[0]["ratio"] > 1


def _consonant_words(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(6, 10))) for _ in range(n)]


def test_tokenizer_shreds_random_consonant_strings(tmp_path):
    tok = tiny_bpe_tokenizer(vocab_size=1500)  # big enough to hold most words of its training corpus whole
    shredded = " ".join(_consonant_words(300))
    pieces = word_pieces([shredded], tok)
    assert sum(min(p) >= 3 for p in pieces.values()) / len(pieces) > 0.95
    friendly = word_pieces(CORPUS, tok)  # the words the tokenizer was trained on
    assert sum(min(p) >= 3 for p in friendly.values()) / len(friendly) < 0.5
    # in-context counting agrees with encoding the word alone
    assert pieces[shredded.split()[1]][0] == len(tok(" " + shredded.split()[1], add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------ end to end on a tiny model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tok = tiny_bpe_tokenizer(folder)
    tiny_llama(len(tok)).save_pretrained(folder)
    return folder


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("advise_data")
    rng = random.Random(0)
    general = [{"text": " ".join(rng.sample(CORPUS, 8))} for _ in range(40)]
    pool = _consonant_words(200)
    shred = [{"text": " ".join(rng.choices(pool, k=60))} for i in range(40)]
    labels = ["a", "b", "c"]
    task = [{"text": " ".join(rng.sample(CORPUS, 2)), "label": labels[i % 3]} for i in range(60)]
    return {
        "general": _write_jsonl(d / "general.jsonl", general),
        "shred": _write_jsonl(d / "shred.jsonl", shred),
        "tiny": _write_jsonl(d / "tiny.jsonl", general[:3]),
        "task": _write_jsonl(d / "task.jsonl", task),
        "task_tiny": _write_jsonl(d / "task_tiny.jsonl", task[:9]),
    }


FAST = dict(max_eval_tokens=1024, time_budget=6.0, probe_steps=1)


def test_measure_identical_corpus_gives_overlap_one_and_ratio_one(model_dir, data):
    m = measure(str(model_dir), domain=data["general"], reference=data["general"], **FAST)
    assert m["vocabulary"]["overlap"] == 1.0
    assert m["shift"]["domain"]["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert m["shift"]["domain"]["tokens"] == m["shift"]["reference"]["tokens"] > 0
    assert m["shift"]["task"] is None
    dom = m["domain"]
    assert dom["documents"] == 40 and dom["sampled_tokens"] >= 5000
    assert dom["estimated_tokens"] == pytest.approx(dom["sampled_tokens"] + 40, rel=0.01)  # whole corpus sampled
    assert m["model"]["max_position_embeddings"] == 256 and m["model"]["lora_trainable_params"] > 0
    cost = m["cost"]
    assert cost["flops_per_epoch"] == 6 * m["model"]["params"] * dom["estimated_tokens"]
    assert cost["probe"]["activation_bytes_per_token"] > 0 and cost["probe"]["tokens_per_second"] > 0
    assert cost["memory"]["full_bytes"] > cost["memory"]["lora_bytes"] > 0
    json.dumps(m)  # plain JSON
    a = recommend(m, "generate")
    assert a.recommendation == "continued_pretraining"
    assert a.confidence != NO_EVIDENCE


def test_domain_is_spooled_and_sampled_as_in_memory(model_dir, data, tmp_path, monkeypatch):
    """The domain corpus goes to a temporary spool file as it is read (never all in memory); its
    sample, counts and length percentiles are those of the same corpus held as a list."""
    from lmadapt.advise.text import percentile, sample_texts
    from lmadapt.data.sources import read_source as real_read_source

    rng = random.Random(1)
    docs = [{"text": " ".join(rng.choices(CORPUS, k=rng.randint(5, 400)))} for _ in range(300)]
    domain = _write_jsonl(tmp_path / "domain.jsonl", docs)
    spools = []

    def spying_read_source(src, **kw):
        if kw.get("spool") is not None:
            spools.append(Path(kw["spool"]))
        return real_read_source(src, **kw)

    monkeypatch.setattr("lmadapt.data.sources.read_source", spying_read_source)
    m = measure(
        str(model_dir),
        domain=domain,
        reference=data["general"],
        probe=False,
        sample_chars=20_000,
        max_eval_tokens=256,
        time_budget=3.0,
    )
    assert len(spools) == 1 and not spools[0].parent.exists()  # spooled, then removed
    texts = [d["text"] for d in docs]
    sample = sample_texts(texts, 20_000)
    dom = m["domain"]
    assert dom["documents"] == 300 and dom["chars"] == sum(map(len, texts))
    assert dom["sampled_documents"] == len(sample) < 300 and dom["sampled_chars"] == sum(map(len, sample))
    tpc = dom["sampled_tokens"] / dom["sampled_chars"]
    est = [len(t) * tpc + 1 for t in texts]
    assert dom["length_tokens_p50"] == int(percentile(est, 50)) and dom["length_tokens_p95"] == int(percentile(est, 95))


def test_measure_encoder_uses_masked_loss(tmp_path, data):
    tok = tiny_wordpiece_tokenizer(tmp_path)
    tiny_bert(len(tok)).save_pretrained(tmp_path)
    m = measure(
        str(tmp_path),
        domain=data["general"],
        reference=data["general"],
        probe=False,
        max_eval_tokens=1024,
        time_budget=6.0,
    )
    assert m["model"]["objective"] == "masked" and m["shift"]["metric"] == "masked_perplexity"
    assert m["shift"]["domain"]["ratio"] == pytest.approx(1.0, abs=1e-6)  # same text, same fixed-seed masks
    assert m["cost"]["probe"]["activation_bytes_per_token"] > 0 and m["cost"]["probe"]["tokens_per_second"] > 0


def test_measure_tiny_inputs_give_not_enough_evidence(model_dir, data):
    m = measure(
        str(model_dir),
        domain=data["tiny"],
        task_train=data["task_tiny"],
        reference=data["general"],
        probe=False,
        max_eval_tokens=512,
        time_budget=10.0,
    )
    assert m["cost"]["probe"]["method"].startswith("estimated")
    a = recommend(m, "classify")
    assert a.confidence == NO_EVIDENCE and a.recommendation == "not_enough_evidence"
    assert any("domain sample too small" in w for w in a.warnings)
    assert any("smallest class has 3" in w for w in a.warnings)


def test_shipped_reference_sample():
    from lmadapt.config.data import SourceConfig
    from lmadapt.data.sources import read_source

    docs, stats = read_source(SourceConfig(path=str(DEFAULT_REFERENCE)))
    assert stats.documents >= 100 and 150_000 <= stats.chars <= 300_000
    assert (DEFAULT_REFERENCE.parent / "README.md").is_file()


def test_cli_writes_advice_json_and_pipeline_yaml(model_dir, data, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, pipe = tmp_path / "advice.json", tmp_path / "pipeline.yaml"
    args = parser.parse_args(
        [
            str(model_dir),
            "--goal",
            "classify",
            "--domain",
            data["shred"],
            "--task-train",
            data["task"],
            "--reference",
            data["general"],
            "--output",
            str(out),
            "--pipeline",
            str(pipe),
            "--max-eval-tokens",
            "1024",
            "--time-budget",
            "6",
            "--no-probe",
            "--seeds",
            "1",
            "2",
        ]
    )
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "recommendation:" in printed and "threshold" in printed
    saved = json.loads(out.read_text())
    assert saved["format"] == "lmadapt-advice/1" and saved["pipeline"] == str(pipe)
    assert saved["advice"]["thresholds"]["lots_domain_tokens"] == 5_000_000
    m = saved["measurements"]
    # a corpus of words the tokenizer shreds
    v = m["vocabulary"]
    assert v["domain_split3_share"] > 0.95 and v["domain_split3_share"] > v["reference_split3_share"]
    assert v["overlap"] == 0.0
    t = m["task"]
    assert t["examples"] == 60 and t["classes"] == 3 and t["per_class_min"] == 20 and t["problem"] == "single_label"
    assert 0 < t["length_tokens_p50"] <= t["length_tokens_p95"]
    # every text set is scored on the same number of blocks (first tokens of documents are not predicted)
    counts = [m["shift"][k]["tokens"] for k in ("domain", "task", "reference")]
    assert min(counts) > 0.9 * max(counts) > 0

    pipeline = yaml.safe_load(pipe.read_text())
    assert set(pipeline) == {"output_dir", "seeds", "arms", "baseline"} and pipeline["seeds"] == [1, 2]
    arms = pipeline["arms"]
    assert list(arms) == ["ft_only", "dapt_ft", "tapt_ft", "dapt_tapt_ft"]
    assert [s["kind"] for s in arms["dapt_tapt_ft"]] == ["pretrain", "pretrain", "finetune"]
    assert arms["ft_only"][0]["recipe"]["model"]["path"] == str(model_dir)
    assert arms["dapt_ft"][1]["recipe"]["model"]["path"] == PREVIOUS
    # every recipe is a valid PretrainConfig / FinetuneConfig once @previous names a model folder
    for stages in arms.values():
        for stage in stages:
            recipe = copy.deepcopy(stage["recipe"])
            recipe["model"]["path"] = str(model_dir)
            cls = PretrainConfig if stage["kind"] == "pretrain" else FinetuneConfig
            load_recipe(cls, data=recipe)

    # ... and the whole file is a valid `lmadapt run` pipeline
    from lmadapt.config.pipeline import load_pipeline

    cfg = load_pipeline(pipe)
    assert list(cfg.arms) == list(arms) and cfg.baseline.tfidf

    # decide again from the saved measurements, for another goal, without the model
    args = parser.parse_args(["--goal", "generate", "--measurements", str(out)])
    assert main(args) == 0
    assert "recommendation: continued_pretraining" in capsys.readouterr().out


def test_written_pipeline_runs_with_lmadapt_run(model_dir, data, tmp_path, capsys):
    """The pipeline advise writes is runnable as written, budgets shrunk for a test: every arm trains."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    pipe = tmp_path / "pipeline.yaml"
    args = parser.parse_args(
        [
            str(model_dir),
            "--goal",
            "classify",
            "--domain",
            data["general"],
            "--task-train",
            data["task"],
            "--reference",
            data["general"],
            "--pipeline",
            str(pipe),
            "--max-eval-tokens",
            "512",
            "--time-budget",
            "4",
            "--no-probe",
            "--seeds",
            "0",
        ]
    )
    assert main(args) == 0
    capsys.readouterr()
    pipeline = yaml.safe_load(pipe.read_text())
    for stages in pipeline["arms"].values():
        for stage in stages:
            train = stage["recipe"].setdefault("train", {})
            train.pop("max_tokens", None)
            train.update(
                report_to=[],
                **(
                    {"max_steps": 2, "batch_size": 2} if stage["kind"] == "pretrain" else {"epochs": 1, "batch_size": 8}
                ),
            )
            if stage["kind"] == "pretrain":
                stage["recipe"]["data"]["block_size"] = 32
    pipeline["output_dir"] = str(tmp_path / "run")
    pipe.write_text(yaml.safe_dump(pipeline))
    from lmadapt.cli import main as cli_main

    assert cli_main(["run", str(pipe)]) == 0
    results = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    finished = {r["arm"] for r in results if r["kind"] == "finetune" and r["status"] == "done"}
    assert finished == set(pipeline["arms"]), results
    assert all(
        "macro_f1" in r["task"]["test"] or "macro_f1" in r["task"]["dev"] for r in results if r["kind"] == "finetune"
    )
    report = (tmp_path / "run" / "report.md").read_text()
    for arm in pipeline["arms"]:
        assert arm in report


def test_with_held_out_domain_text_the_pipeline_adds_a_merge_arm(model_dir, data, tmp_path, capsys):
    """--domain-valid gives the merge stage its sets: dapt_merge_ft shares dapt's pretraining, then
    interpolates toward the base, then fine-tunes; the file is a valid pipeline."""
    from lmadapt.config.pipeline import load_pipeline

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    pipe = tmp_path / "pipeline.yaml"
    args = parser.parse_args(
        [
            str(model_dir),
            "--goal",
            "classify",
            "--domain",
            data["shred"],
            "--domain-valid",
            data["general"],
            "--task-train",
            data["task"],
            "--reference",
            data["general"],
            "--pipeline",
            str(pipe),
            "--max-eval-tokens",
            "512",
            "--time-budget",
            "4",
            "--no-probe",
        ]
    )
    assert main(args) == 0
    capsys.readouterr()
    arms = yaml.safe_load(pipe.read_text())["arms"]
    assert [s["kind"] for s in arms["dapt_merge_ft"]] == ["pretrain", "merge", "finetune"]
    assert arms["dapt_merge_ft"][0] == arms["dapt_ft"][0]  # one continued pretraining, shared
    assert arms["dapt_merge_ft"][1]["recipe"]["eval"]["sets"] == {"domain": data["general"], "general": data["general"]}
    cfg = load_pipeline(pipe)
    assert "dapt_merge_ft" in cfg.arms
