"""`lmadapt run` under torchrun with two CPU processes (gloo): one set of results, not two.

Every process runs the stages; the main process alone writes DONE markers, results.jsonl and the
report, and the others must follow its decisions (cached, locked) rather than make their own.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.cache import DONE_FILE
from helpers import torchrun
from toy_pipeline import make_workspace, pipeline_dict

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process runs on Linux")


def run_pipeline_procs(pipeline: Path, procs: int = 2) -> subprocess.CompletedProcess:
    return torchrun("-m", "lmadapt.cli", "run", str(pipeline), procs=procs)


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("pipe_dist"))
    out = ws["dir"] / "run"
    data = pipeline_dict(ws, out)
    path = ws["dir"] / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_pipeline_procs(path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return ws, data, path, out, proc


def test_two_processes_write_one_set_of_results(dist_run):
    ws, data, path, out, proc = dist_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["arm"], r["seed"], r["stage"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    stage_keys = {k for k, r in zip(keys, rows) if r["kind"] in ("pretrain", "finetune", "evaluate")}
    assert stage_keys == {
        (arm, seed, st)
        for seed in (0, 1)
        for arm, sts in (("ft_only", ["base", "ft"]), ("dapt_ft", ["base", "dapt", "dapt_ft-3", "ft"]))
        for st in sts
    }
    assert sum(r["kind"] == "baseline" for r in rows) == 2
    dones = [json.loads(p.read_text()) for p in (out / "stages").glob(f"*/{DONE_FILE}")]
    assert len(dones) == 7 and all(d["processes"] == 2 for d in dones)
    # Tokens seen (and so tokens/s) count both processes: steps x batch x block on each.
    base = next(r for r in rows if r["stage"] == "base")
    pre = data["defaults"]["pretrain"]
    one_process = pre["train"]["max_steps"] * pre["train"]["batch_size"] * pre["data"]["block_size"]
    assert one_process < base["perf"]["tokens_seen"] <= 2 * one_process
    # The log is the main process's alone: the plan is announced once.
    assert proc.stdout.count("7 distinct stages: 0 cached, 7 to run") == 1
    report = (out / "report.md").read_text()
    assert "dapt_ft" in report and "ft_only" in report


def test_sharded_evidence_matches_one_process(dist_run, tmp_path):
    """Held-out perplexity split over two processes and all-reduced equals one process's number."""
    ws, data, path, out, proc = dist_run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    base = next(r for r in rows if r["stage"] == "dapt")
    cfg = load_pipeline(data=data)
    again = prun.lm_evidence(str(out / base["folder"]), cfg, tmp_path / "ev.json")
    for name in ("domain", "general"):
        assert again["sets"][name]["tokens"] == base["lm"][name]["tokens"]
        assert again["sets"][name]["perplexity"] == pytest.approx(base["lm"][name]["perplexity"], rel=1e-5)


def test_sharded_task_evaluation_matches_one_process(dist_run):
    """Each process scores its share of dev/test and the metrics are computed over the gathered
    predictions: they equal one process scoring the saved model on the whole split."""
    from lmadapt.stages.finetune import read_splits
    from lmadapt.stages.predict import load_predictor

    ws, data, path, out, proc = dist_run
    folders = sorted((out / "stages").glob("finetune-ft-*"))
    assert len(folders) == 4
    for folder in folders:
        saved = json.loads((folder / "metrics.json").read_text())
        p = load_predictor(folder)
        splits, _, space = read_splits(p.task, p.cfg)
        for split in ("dev", "test"):
            again = p.task.evaluate(p.model, p.tokenizer, splits[split], space, p.cfg)
            assert again["n"] == saved[split]["n"] == 20
            for key in ("accuracy", "macro_f1"):
                assert saved[split][key] == pytest.approx(again[key], abs=1e-9), (folder.name, split, key)
            assert saved[split]["confusion_matrix"] == again["confusion_matrix"]
            assert saved[split]["per_class"] == again["per_class"]


def test_two_process_predict_writes_what_one_process_writes(dist_run, tmp_path):
    """`lmadapt predict` under torchrun: each process predicts its share, the main process writes
    one file in input order, the same as one process writes."""
    from lmadapt.stages.predict import predict_file

    ws, data, path, out, proc = dist_run
    folder = next((out / "stages").glob("finetune-ft-*"))
    one = predict_file(folder, ws["test"], tmp_path / "one.jsonl", batch_size=3)
    two = torchrun(
        "-m",
        "lmadapt.cli",
        "predict",
        str(folder),
        "--input",
        ws["test"],
        "--output",
        str(tmp_path / "two.jsonl"),
        "--batch-size",
        "3",
        timeout=120,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == one["records"] == 20
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert [r["prediction"]["label"] for r in a] == [r["prediction"]["label"] for r in b]
    assert [r["prediction"]["score"] for r in a] == pytest.approx([r["prediction"]["score"] for r in b], rel=1e-5)
    assert not list(tmp_path.glob(".two.jsonl.*")), "a temp file was left behind"


def test_second_distributed_run_reuses_everything(dist_run):
    ws, data, path, out, proc = dist_run
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "stages").glob(f"*/{DONE_FILE}")}
    again = run_pipeline_procs(path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "7 cached, 0 to run" in again.stdout
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "stages").glob(f"*/{DONE_FILE}")} == before


def test_interrupted_stage_resumes_on_every_process(dist_run):
    """A stage left without DONE (killed after its step-2 checkpoint) resumes from it on both
    processes: the main process decides, the other must not start it over; the stages after it
    train again, on both processes."""
    import shutil

    ws, data, path, out, proc = dist_run
    dapt = next((out / "stages").glob("pretrain-dapt-*"))
    (dapt / DONE_FILE).unlink()
    shutil.rmtree(dapt / "checkpoints" / "checkpoint-4")
    (dapt / "model.safetensors").unlink()
    again = run_pipeline_procs(path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("interrupted earlier; resuming from its last checkpoint") == 1
    # what starts from dapt (its evaluate stage, two fine-tunes) trains again from the resumed dapt
    assert "3 cached, 4 to run" in again.stdout
    assert again.stdout.count("it starts from dapt, which runs again: removing its folder") == 3
    done = json.loads((dapt / DONE_FILE).read_text())
    assert done["resumed"] == "checkpoint" and done["processes"] == 2
    assert (dapt / "model.safetensors").is_file() and (dapt / "checkpoints" / "checkpoint-4").is_dir()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["arm"], r["seed"], r["stage"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_every_process_stops_when_the_output_dir_is_locked(dist_run):
    """Only the main process takes the lock; the others must hear its refusal, not hang or run."""
    ws, data, path, out, proc = dist_run
    with prun.RunLock(out):
        locked = run_pipeline_procs(path)
    assert locked.returncode != 0
    assert "is in use by another `lmadapt run`" in locked.stderr + locked.stdout


def _numbers(row: dict, prefix: str = "") -> dict:
    """The row's results (held-out scores, task metrics), flattened; not its ids, folders or timings."""
    out = {}
    for key, value in row.items():
        if key in ("id", "folder", "hash", "parent", "perf", "input_model", "position", "executed"):
            continue
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str)) or value is None:
            out[prefix + key] = value
    return out


def test_sharded_pipeline_gives_the_same_rows(dist_run, tmp_path):
    """The same pipeline with train.sharding: fsdp in its pretrain and finetune stages (FSDP2 over the
    two processes) gives the rows of the data-parallel run: the same perplexities and task metrics."""
    ws, data, path, out, proc = dist_run
    sharded = dict(
        data,
        output_dir=str(tmp_path / "run"),
        seeds=[0],
        defaults={
            kind: dict(section, train={**section["train"], "sharding": "fsdp"})
            for kind, section in data["defaults"].items()
        },
    )
    spath = tmp_path / "sharded.yaml"
    spath.write_text(yaml.safe_dump(sharded))
    again = run_pipeline_procs(spath)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert "FSDP2: 2 units + root sharded over 2 process(es)" in again.stdout

    def rows(folder):
        return {
            (r["arm"], r["seed"], r["stage"]): _numbers(r)
            for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())
        }

    mine, theirs = rows(tmp_path / "run"), rows(out)
    assert mine and set(mine) <= set(theirs)
    for key, numbers in mine.items():
        assert set(numbers) == set(theirs[key]), key
        for name, value in numbers.items():
            if isinstance(value, float):
                assert value == pytest.approx(theirs[key][name], rel=1e-5, abs=1e-9), (key, name)
            else:
                assert value == theirs[key][name], (key, name)
