"""What reading a corpus source yields, shared by the readers (sources.py, formats.py) and the spool
(spool.py) that holds the documents on disk: kept apart so that neither has to import the other.
Conventions on ``text`` and ``origin``: see sources.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    text: str
    source: str
    origin: str


@dataclass
class SourceStats:
    name: str
    files: int = 0
    documents: int = 0
    chars: int = 0
    duplicates_removed: int = 0
    too_short: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_skips: list[str] = field(default_factory=list)
    capped_at: int | None = None  # max_documents reached: reading stopped after this many documents
