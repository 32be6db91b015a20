"""The tokenization cache on disk: what is in it, and removing what has not been used lately.

Every corpus tokenized with a new tokenizer or new text adds an entry of about 4 bytes a token (5 for
masked models), and nothing removes entries by itself: a corpus of a billion tokens leaves 4 GB.

    lmadapt cache list                       # entries, size, last use
    lmadapt cache clear --older-than 30      # remove entries not used for 30 days (--dry-run to see)

An entry's last use is the time of its ``meta.json``, which a cache hit touches. Clearing an entry
that a running job has memory-mapped is safe on Linux: the job keeps its pages until it exits.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from .token_store import default_cache_dir
from .tokenized_docs import FORMAT_VERSION

ENTRY_NAME = re.compile(r"[0-9a-f]{64}|\.[0-9a-f]{16}-\w+")
# A temp folder (a tokenization that is running, or one that died) older than this is debris.
STALE_TEMP_SECONDS = 24 * 3600


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def entries(root: str | Path | None = None) -> list[dict]:
    """One dict per folder under ``root``: key, state (complete / incomplete / old format), documents,
    tokens, tokenizer, bytes, last_used (epoch seconds); most recently used first."""
    root = Path(root) if root is not None else default_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        # Only folders named like an entry (sha256 key) or its temp folder (".KEY16-..."): `clear`
        # never deletes anything else (a --dir given by mistake, or $LMADAPT_CACHE's gguf/ beside them).
        if not folder.is_dir() or not ENTRY_NAME.fullmatch(folder.name):
            continue
        meta_path = folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            state = "complete" if meta.get("format") == FORMAT_VERSION else "old format"
            last_used = meta_path.stat().st_mtime
        except (OSError, ValueError):
            meta, state, last_used = {}, "incomplete", folder.stat().st_mtime
        out.append(
            {
                "key": folder.name,
                "path": str(folder),
                "state": state,
                "documents": meta.get("documents"),
                "tokens": meta.get("tokens"),
                "tokenizer": meta.get("tokenizer"),
                "bytes": folder_bytes(folder),
                "last_used": last_used,
            }
        )
    return sorted(out, key=lambda e: -e["last_used"])


def clear(
    root: str | Path | None = None,
    *,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[dict]:
    """Remove entries not used for ``older_than_days`` (all when None) and temp folders older than a
    day (a younger one may be a tokenization in progress); returns what was (or would be) removed."""
    now = time.time() if now is None else now
    gone = []
    for entry in entries(root):
        age = now - entry["last_used"]
        if entry["state"] == "incomplete":
            doomed = age > STALE_TEMP_SECONDS
        else:
            doomed = older_than_days is None or age > older_than_days * 86400
        if doomed:
            if not dry_run:
                shutil.rmtree(entry["path"], ignore_errors=True)
            gone.append(entry)
    return gone


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def _count(rows: list[dict]) -> str:
    return f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} ({human_bytes(sum(e['bytes'] for e in rows))})"


def _num(value, width: int) -> str:
    return f"{value:>{width},}" if isinstance(value, int) else f"{'-':>{width}}"


def table(rows: list[dict], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'key':<16} {'state':<10} {'documents':>10} {'tokens':>14} {'size':>10} {'last used':>11}  tokenizer"]
    for e in rows:
        days = (now - e["last_used"]) / 86400
        used = f"{days:.1f} d ago" if days >= 1 else f"{days * 24:.1f} h ago"
        lines.append(
            f"{e['key'][:16]:<16} {e['state']:<10} {_num(e['documents'], 10)} {_num(e['tokens'], 14)} "
            f"{human_bytes(e['bytes']):>10} {used:>11}  {e['tokenizer'] or '-'}"
        )
    lines.append(_count(rows))
    return "\n".join(lines)


def main(args) -> int:
    root = Path(args.dir) if args.dir else default_cache_dir()
    if args.action == "list":
        print(f"tokenization cache: {root}")
        print(table(entries(root)))
        return 0
    gone = clear(root, older_than_days=args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {_count(gone)} from {root}")
    return 0
