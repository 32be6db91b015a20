"""Issue 19 item 1 for `lmadapt run`: a non-empty folder that is not a run folder is never written over."""

import pytest

from lmadapt.config.base import ConfigError


def test_run_refuses_a_non_empty_folder_that_is_not_a_run_folder(tmp_path):
    from lmadapt.config.pipeline import load_pipeline
    from lmadapt.pipeline import run as prun
    from toy_pipeline import make_workspace, pipeline_dict

    ws = make_workspace(tmp_path / "ws")
    out = tmp_path / "project"
    out.mkdir()
    (out / "report.md").write_text("my own report")  # a run would write report.md over it
    with pytest.raises(ConfigError, match="not an `lmadapt run` folder"):
        prun.run_pipeline(load_pipeline(data=pipeline_dict(ws, out)))
    assert sorted(p.name for p in out.iterdir()) == ["report.md"] and (out / "report.md").read_text() == "my own report"
