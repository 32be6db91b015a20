"""`lmadapt run --jobs N`: independent stages in worker processes give what a sequential run gives.

The miniature pipeline of test_pipeline.py (two arms x two seeds, seven distinct stages) runs once
sequentially and once with two jobs; then a pipeline with a stage that breaks at run time shows
what a failure does to the stages beside it and below it.
"""

import json
import time
from pathlib import Path

import pytest
import yaml

from lmadapt.config.pipeline import load_pipeline
from lmadapt.pipeline import run as prun
from lmadapt.pipeline.cache import DONE_FILE, read_done
from lmadapt.pipeline.jobs import LOGS_DIR, chain_lengths
from lmadapt.pipeline.plan import plan, unique_instances
from lmadapt.pipeline.report import write_report
from toy_pipeline import make_workspace, pipeline_dict


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("jobs"))


def rows_of(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {(r["arm"], r["seed"], r["stage"], r["kind"]): r for r in rows}


def stamp(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S%z"))


@pytest.fixture(scope="module")
def both_runs(workspace):
    seq, par = workspace["dir"] / "seq", workspace["dir"] / "par"
    prun.run_pipeline(load_pipeline(data=pipeline_dict(workspace, seq)), report=False)
    summary = prun.run_pipeline(load_pipeline(data=pipeline_dict(workspace, par)), report=True, jobs=2)
    return seq, par, summary


def test_jobs_give_the_sequential_results(both_runs):
    seq, par, summary = both_runs
    assert sorted(p.name for p in (seq / "stages").iterdir()) == sorted(p.name for p in (par / "stages").iterdir())
    assert len(summary["executed"]) == 7 and summary["reused"] == []
    a, b = rows_of(seq), rows_of(par)
    assert a.keys() == b.keys()
    for key, r in a.items():
        s = b[key]
        assert s["id"] == r["id"]
        if r["kind"] == "finetune":
            for split in ("dev", "test"):
                assert s["task"][split]["macro_f1"] == pytest.approx(r["task"][split]["macro_f1"], abs=1e-6), key
        for role, m in (r.get("lm") or {}).items():
            assert s["lm"][role]["perplexity"] == pytest.approx(m["perplexity"], rel=1e-4), (key, role)
        if r["kind"] in ("pretrain", "finetune"):
            assert s["perf"]["wall_seconds"] > 0 and s["perf"]["peak_rss_mb"] > 0
    state = json.loads((par / "run_state.json").read_text())
    assert state["status"] == "done" and sorted(state["executed"]) == sorted(summary["executed"])
    assert "ft_only" in (par / "report.md").read_text()


def test_each_stage_ran_in_its_own_logged_process_after_its_parent(both_runs):
    _, par, _ = both_runs
    state = json.loads((par / "run_state.json").read_text())
    resolved = yaml.safe_load((par / "pipeline.yaml").read_text())
    insts = {i.id: i for i in unique_instances(plan(load_pipeline(data={**resolved, "output_dir": str(par)})))}
    assert set(insts) == set(state["stages"])
    pids = set()
    for sid, inst in insts.items():
        text = (par / LOGS_DIR / f"{sid}.log").read_text()
        assert f"{sid}: done in" in text
        pids.add(int(text.split(" in process ")[1].split()[0]))
        if inst.parent is not None:  # started only once the parent's DONE was written
            assert stamp(state["stages"][sid]["started"]) >= stamp(read_done(inst.parent.folder)["finished"]), sid
            # and the worker recorded which training of the parent it started from (plan.reusable)
            assert read_done(inst.folder)["parent_run"] == read_done(inst.parent.folder)["run_id"], sid
    assert len(pids) == 7


def test_baseline_is_computed_while_the_jobs_run(both_runs):
    # The parent computes the TF-IDF row while its workers train, not after the last stage: its
    # file is older than the first fine-tune's DONE (fine-tunes start after the base has trained).
    _, par, _ = both_runs
    (baseline,) = (par / "baselines").glob("tfidf-*.json")
    finished = [stamp(read_done(d)["finished"]) for d in (par / "stages").iterdir() if d.name.startswith("finetune-")]
    assert len(finished) == 4
    assert baseline.stat().st_mtime < min(finished)


def test_critical_path_starts_first(workspace):
    cfg = load_pipeline(data=pipeline_dict(workspace, workspace["dir"] / "unused"))
    todo = unique_instances(plan(cfg))
    lengths = chain_lengths(todo)
    by_name = {}
    for inst in todo:
        by_name.setdefault(inst.name, set()).add(lengths[inst.id])
    # an evaluate stage passes its parent's model on: it and dapt_ft's fine-tunes are all dapt's children
    assert by_name["base"] == {3} and by_name["dapt"] == {2} and by_name["ft"] == {1}


def test_a_failed_stage_stops_what_needs_it_and_nothing_else(workspace, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine first line"}\n{"text": broken\n', encoding="utf-8")
    d = pipeline_dict(workspace, tmp_path / "run")
    d["seeds"] = [0]
    d["stages"]["broken"] = {
        "kind": "pretrain",
        "recipe": {"model": {"path": "@previous"}, "data": {"sources": [{"path": str(bad), "name": "bad"}]}},
    }
    d["arms"] = {"ft_only": ["base", "ft"], "broken_ft": ["base", "broken", "ft"]}
    with pytest.raises(RuntimeError) as err:
        prun.run_pipeline(load_pipeline(data=d), report=False, jobs=2)
    out = tmp_path / "run"
    state = json.loads((out / "run_state.json").read_text())
    status = {sid: s["status"] for sid, s in state["stages"].items()}
    broken = next(s for s in status if s.startswith("pretrain-broken-"))
    assert status[broken] == "failed" and state["status"] == "failed"
    assert broken in str(err.value) and "not run because of it: finetune-ft-" in str(err.value)
    log = (out / LOGS_DIR / f"{broken}.log").read_text()
    assert "bad.jsonl" in log and "line 2" in log  # the stage's own error, naming file and line
    # the base and the fine-tune that does not need the broken stage finished and are cached
    done = sorted(s.split("-")[1] for s in status if (out / "stages" / s / DONE_FILE).is_file())
    assert done == ["base", "ft"]
    assert not (out / "stages" / broken / DONE_FILE).exists()
    # what finished is in results.jsonl, as a sequential run would have written it, and reported
    rows = rows_of(out)
    assert {(a, st) for a, _, st, _ in rows} == {("ft_only", "base"), ("ft_only", "ft"), ("broken_ft", "base")}
    assert 0 <= rows[("ft_only", 0, "ft", "finetune")]["task"]["test"]["macro_f1"] <= 1
    write_report(out)
    assert "ft_only" in (out / "report.md").read_text()


# --- the scheduler alone, with a stand-in worker (no models: each "stage" is a short script) -----

FAKE_WORKER = r"""
import json, os, sys, time
from pathlib import Path
out, sid = Path(sys.argv[1]), sys.argv[2]
behaviour = json.loads((out / "behaviour.json").read_text()).get(sid.split("-")[1], "ok")
busy = out / "busy"
busy.mkdir(exist_ok=True)
me = busy / sid
me.write_text("")
time.sleep(0.6)
others = [p.name for p in busy.iterdir() if p.name != sid]
with (out / "events.jsonl").open("a") as fh:
    fh.write(json.dumps({"id": sid, "others": others, "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "threads": os.environ.get("OMP_NUM_THREADS")}) + "\n")
if behaviour == "oom_if_shared" and others or behaviour == "oom":
    me.unlink()
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 6.00 GiB.")
    sys.exit(1)
time.sleep(0.3)
folder = out / "stages" / sid
folder.mkdir(parents=True, exist_ok=True)
(folder / "DONE").write_text(json.dumps({"wall_seconds": 0.9, "peak_rss_mb": 1.0}))
me.unlink()
"""


@pytest.fixture
def fake_jobs(workspace, tmp_path, monkeypatch):
    """run_jobs over the toy plan (base -> {ft x2, dapt -> {evaluate, ft x2}}) with the stand-in worker."""
    from lmadapt.pipeline import jobs as jobs_mod

    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(
        jobs_mod, "worker_command", lambda out, sid: [__import__("sys").executable, str(script), str(out), sid]
    )
    monkeypatch.setattr(jobs_mod, "visible_gpus", lambda: ["0"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "run"
    todo = unique_instances(plan(load_pipeline(data=pipeline_dict(workspace, out))))
    out.mkdir()

    def run(behaviour: dict, jobs: int = 3):
        (out / "behaviour.json").write_text(json.dumps(behaviour))
        changes, lines = [], []
        try:
            ran = jobs_mod.run_jobs(
                out, todo, set(), jobs, lambda i, st, ex: changes.append((i.name, st)), lines.append
            )
        except RuntimeError as exc:
            ran = exc
        events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
        return ran, changes, lines, events

    return run, todo


def test_out_of_memory_beside_others_runs_again_alone(fake_jobs):
    run, todo = fake_jobs
    ran, changes, lines, events = run({"dapt": "oom_if_shared"})
    assert sorted(ran) == sorted(i.id for i in todo)  # every stage finished in the end
    dapt = [e for e in events if e["id"].startswith("pretrain-dapt-")]
    assert len(dapt) == 2 and dapt[0]["others"] and dapt[1]["others"] == [], dapt
    assert all(e["device"] == "0" for e in events)
    assert any("ran out of memory beside other jobs" in x for x in lines)
    assert any("dapt (pretrain) started on GPU 0 alone" in x for x in lines)
    assert ("dapt", "pending") in changes and changes.count(("dapt", "done")) == 1
    # the children of dapt started only after its second, lone run
    second = events.index(dapt[1])
    assert all(
        events.index(e) > second
        for e in events
        if any(i.id == e["id"] and i.parent is not None and i.parent.name == "dapt" for i in todo)
    )


def test_out_of_memory_alone_is_a_failure(fake_jobs):
    run, todo = fake_jobs
    ran, changes, lines, events = run({"base": "oom"})
    assert isinstance(ran, RuntimeError) and "pretrain-base-" in str(ran) and "not run because of it" in str(ran)
    assert [e["id"].split("-")[1] for e in events] == ["base"]  # ran once, alone, nothing after it
    assert ("base", "failed") in changes and not any("runs again alone" in x for x in lines)


def test_cpu_jobs_share_the_cores_among_those_running_together(fake_jobs, monkeypatch):
    from lmadapt.pipeline import jobs as jobs_mod

    run, todo = fake_jobs
    monkeypatch.setattr(jobs_mod, "visible_gpus", lambda: [])
    monkeypatch.setattr(jobs_mod.os, "cpu_count", lambda: 6)
    ran, changes, lines, events = run({}, jobs=3)
    assert sorted(ran) == sorted(i.id for i in todo)
    threads = {e["id"]: int(e["threads"]) for e in events}
    assert len(threads) == len(events) == 7 and not any(e["device"] for e in events)
    by_name = lambda name: sorted(t for sid, t in threads.items() if sid.split("-")[1] == name)  # noqa: E731
    assert by_name("base") == [6]  # alone: every core
    assert by_name("dapt") == [2]  # beside the two ft_only fine-tunes: a third each
    for e in events:  # never more threads at once than cores
        assert threads[e["id"]] + sum(threads[o] for o in e["others"]) <= 6, e
