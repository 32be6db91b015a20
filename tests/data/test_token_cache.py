"""`lmadapt cache`: listing the tokenization cache and clearing entries by last use."""

import os
import time

from helpers import CORPUS, tiny_bpe_tokenizer

from lmadapt.cli import main
from lmadapt.data import token_cache
from lmadapt.data.packing import tokenize_arrays

DAY = 86400


def _age(entry_path, days):
    t = time.time() - days * DAY
    os.utime(os.path.join(entry_path, "meta.json"), (t, t))


def test_list_clear_by_last_use_and_dry_run(tmp_path, capsys):
    tok = tiny_bpe_tokenizer()
    old = tokenize_arrays(CORPUS[:6], tok, cache_dir=tmp_path)
    new = tokenize_arrays(CORPUS[6:], tok, cache_dir=tmp_path)
    (tmp_path / ".0123456789abcdef-x").mkdir()  # a temp folder a dead tokenization left
    os.utime(tmp_path / ".0123456789abcdef-x", (time.time() - 2 * DAY,) * 2)
    (tmp_path / ".fedcba9876543210-y").mkdir()  # one in progress right now
    _age(tmp_path / old.key, 40)
    _age(tmp_path / new.key, 40)
    tokenize_arrays(CORPUS[6:], tok, cache_dir=tmp_path)  # a hit marks `new` used today

    rows = {e["key"]: e for e in token_cache.entries(tmp_path)}
    assert rows[new.key]["state"] == rows[old.key]["state"] == "complete"
    assert rows[old.key]["documents"] == 6 and rows[old.key]["tokens"] == old.num_tokens
    assert rows[old.key]["bytes"] >= old.num_tokens * 4
    assert time.time() - rows[new.key]["last_used"] < 60 < time.time() - rows[old.key]["last_used"]
    assert rows[".0123456789abcdef-x"]["state"] == rows[".fedcba9876543210-y"]["state"] == "incomplete"

    assert main(["cache", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 entries" in out and old.key[:16] in out and f"{old.num_tokens:,}" in out

    assert main(["cache", "clear", "--older-than", "30", "--dir", str(tmp_path), "--dry-run"]) == 0
    assert "would remove 2 entries" in capsys.readouterr().out
    assert len(token_cache.entries(tmp_path)) == 4

    assert main(["cache", "clear", "--older-than", "30", "--dir", str(tmp_path)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.key, ".fedcba9876543210-y"])
    # what was kept still serves hits; clearing everything leaves only the running temp folder
    assert tokenize_arrays(CORPUS[6:], tok, cache_dir=tmp_path).cache_hit
    assert [e["key"] for e in token_cache.clear(tmp_path)] == [new.key]
    assert [p.name for p in tmp_path.iterdir()] == [".fedcba9876543210-y"]


def test_missing_cache_folder_lists_nothing(tmp_path, capsys):
    assert token_cache.entries(tmp_path / "none") == []
    assert main(["cache", "list", "--dir", str(tmp_path / "none")]) == 0
    assert "0 entries" in capsys.readouterr().out
