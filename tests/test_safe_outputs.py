"""Issue 19 item 1: commands that write a folder never delete what lmadapt did not write there."""

import os
import time

import pytest

from lmadapt.cli import main
from lmadapt.config.base import ConfigError
from lmadapt.data import token_cache
from lmadapt.runtime.folders import MANIFEST, write_folder


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\n".join(
            f"the {w} jumps over the lazy dog number {i}." for i, w in enumerate(["fox", "cat", "bird", "cow"] * 10)
        )
    )
    return str(path)


def _project(folder):
    """A folder of the user's: a model and notes, nothing lmadapt wrote."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("mine")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _unchanged(folder, before):
    return all((folder / rel).read_bytes() == data for rel, data in before.items())


def test_tokenizer_train_refuses_a_foreign_folder_and_overwrite_keeps_its_files(tmp_path, corpus, capsys):
    out = tmp_path / "project"
    before = _project(out)
    args = ["tokenizer", "train", "--data", corpus, "--vocab-size", "300", "--output", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "model.safetensors" in err
    assert len(err.strip().splitlines()) == 1
    assert _unchanged(out, before) and sorted(p.name for p in out.iterdir()) == ["model.safetensors", "sub"]

    assert main(args + ["--overwrite"]) == 0  # the tokenizer lands beside the user's files
    assert _unchanged(out, before) and (out / "tokenizer.json").is_file() and (out / MANIFEST).is_file()
    assert main(args) == 2  # still the user's folder: asks again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    own = tmp_path / "tok"  # a folder lmadapt wrote whole is replaced on a rerun
    assert main(["tokenizer", "train", "--data", corpus, "--vocab-size", "300", "--output", str(own)]) == 0
    assert main(["tokenizer", "train", "--data", corpus, "--vocab-size", "320", "--output", str(own)]) == 0
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["tokenizer", "train", "--data", corpus, "--output", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "x"


def test_overwrite_replaces_only_our_files_and_removes_only_our_stale_ones(tmp_path):
    out = tmp_path / "out"

    def fill_ab(tmp):
        for name in ("a.txt", "b.txt"):
            open(os.path.join(tmp, name), "w").write("1")

    out.mkdir()  # an empty folder is simply filled
    write_folder(out, fill_ab)
    (out / "c.txt").write_text("user")  # the user adds a file
    with pytest.raises(ConfigError, match="c.txt"):
        write_folder(out, fill_ab)
    write_folder(out, lambda tmp: open(os.path.join(tmp, "a.txt"), "w").write("2"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.txt", "c.txt"]  # b.txt was ours, now stale
    assert (out / "a.txt").read_text() == "2" and (out / "c.txt").read_text() == "user"

    with pytest.raises(RuntimeError):  # an interrupted write leaves the folder as it was
        write_folder(out, lambda tmp: (_ for _ in ()).throw(RuntimeError("killed")), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "a.txt", "c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_convert_refuses_a_foreign_folder_before_reading_the_gguf(tmp_path, capsys):
    out = tmp_path / "project"
    before = _project(out)
    assert main(["convert", str(tmp_path / "missing.gguf"), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and _unchanged(out, before)


def test_cache_clear_leaves_folders_that_are_not_cache_entries(tmp_path, capsys):
    for name in ("gguf", ".git", "project"):  # e.g. $LMADAPT_CACHE/gguf, or --dir given by mistake
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("keep")
        old = time.time() - 3 * 86400
        os.utime(tmp_path / name, (old, old))
    assert token_cache.entries(tmp_path) == []
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "gguf", "project"]


def test_atomic_file_commits_discards_and_keeps_the_first_of_two_writers(tmp_path):
    """runtime.outputs.AtomicFile, the one temp-then-rename writer: the target appears whole on commit,
    an error leaves neither target nor temp file, and clobber=False keeps a file another writer put first."""
    import pytest
    from lmadapt.runtime.outputs import AtomicFile, atomic_write_text

    target = tmp_path / "sub" / "f.txt"
    with AtomicFile(target) as out:
        out.tmp.write_text("one")
        assert not target.exists()
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as out:
            out.tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "one"
    with AtomicFile(target, clobber=False) as out:
        out.tmp.write_text("second")
    assert target.read_text() == "one"
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]
