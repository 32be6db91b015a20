"""The bundled offline harness task: the committed file is what the generator script builds, and
every question is well formed (four distinct words, the answer among them, the same ending)."""

import importlib.util
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "src" / "lmadapt" / "harness_tasks"


def _script():
    spec = importlib.util.spec_from_file_location("build_harness_task", REPO / "scripts" / "build_harness_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_cloze_task_is_the_generators_output_and_well_formed():
    built = _script().build()
    lines = (TASKS / "lmadapt_cloze.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in built] == lines
    assert len(built) >= 200
    labels = [q["label"] for q in built]
    assert min(labels.count(i) for i in range(4)) > len(built) / 8  # the answer's position is shuffled
    for q in built:
        assert len(set(q["options"])) == 4 and 0 <= q["label"] < 4
        assert q["choices"] == [f" {o} {q['rest']}".rstrip() for o in q["options"]]
        answer = q["options"][q["label"]]
        assert all(o not in q["context"].split() + q["rest"].split() for o in q["options"] if o != answer)
        assert all(abs(len(o) - len(answer)) <= 1 for o in q["options"])  # length gives nothing away


def test_task_yaml_names_its_local_loader():
    text = (TASKS / "lmadapt_cloze.yaml").read_text()
    assert "custom_dataset: !function local_data.lmadapt_cloze" in text
    body = yaml.safe_load(text.replace("!function ", ""))
    assert body["task"] == "lmadapt_cloze" and body["output_type"] == "multiple_choice"
    import sys

    sys.path.insert(0, str(TASKS))
    try:
        import local_data

        ds = local_data.lmadapt_cloze()
    finally:
        sys.path.remove(str(TASKS))
    assert list(ds) == ["test"] and len(ds["test"]) == len((TASKS / "lmadapt_cloze.jsonl").read_text().splitlines())
