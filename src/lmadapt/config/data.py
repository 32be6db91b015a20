"""Recipe sections for unlabeled corpora: where text comes from and how it becomes blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import ConfigError, opt
from .hub import is_hub_spec, parse_hub_spec

Format = Literal["auto", "txt", "dir", "jsonl", "json", "csv", "parquet", "hf", "hub"]
# Keys that only a hub dataset has (``datasets.load_dataset`` arguments); refused on local files.
HUB_KEYS = ("subset", "revision", "streaming")


@dataclass
class SourceConfig:
    """One corpus: a file, a directory, a glob, a datasets folder (save_to_disk) or a hub dataset."""

    path: str = opt(
        doc="file, directory, glob pattern or datasets folder (.gz variants are read transparently); "
        "with format: hub, a dataset id on the Hugging Face Hub (e.g. allenai/c4) or a local dataset repo folder; "
        "or hub:owner/name[@revision][[subset]][:split] for both at once"
    )
    name: str | None = opt(
        None, "label used in token accounting and metrics (default: the file stem, or the hub dataset's name)"
    )
    format: Format = opt(
        "auto",
        "reader; 'auto' decides from the suffix (.txt/.md, .jsonl, .json, .csv, .parquet, a directory, "
        "a datasets folder); 'hub' loads `path` with datasets.load_dataset",
    )
    split: str | None = opt(
        None, "split of a hub dataset (default: train) or of a datasets folder holding a DatasetDict"
    )
    subset: str | None = opt(None, "hub dataset: its configuration (load_dataset's `name`, e.g. 'en' for allenai/c4)")
    revision: str | None = opt(
        None,
        "hub dataset: branch, tag or commit to read (pin it: a stage cache keys on the recipe, not the remote files)",
    )
    streaming: bool = opt(
        False,
        "hub dataset: read records as they download instead of downloading and converting the whole "
        "split first (for large datasets, with max_documents)",
    )
    max_documents: int | None = opt(
        None,
        "read at most this many documents of the source: the first ones in reading order, "
        "before deduplication (e.g. a slice of a large hub dataset); recorded in the accounting",
    )
    text_field: str = opt("text", "field holding the text (jsonl/json/csv/parquet/hf)")
    split_docs: Literal["file", "blank_line", "line"] = opt(
        "file",
        "how a .txt/.md file splits into documents: the whole file, paragraphs separated by blank lines, or one per line",
    )
    glob: str = opt(
        "**/*",
        "pattern of files to read inside a directory (recursive by default); only .txt/.md/.jsonl/.json/.csv/.parquet and .gz variants",
    )
    weight: float = opt(
        1.0, "sampling weight; token shares of training sources are proportional to weight x size unless `share` is set"
    )
    share: float | None = opt(
        None,
        "fraction of training tokens this source should supply (e.g. 0.05 replays 5% general text); sources without a share fill the rest",
    )

    def __post_init__(self):
        if not self.path:
            raise ConfigError("path: a source needs a path")
        if is_hub_spec(self.path):
            self._take_hub_spec()
        if self.weight <= 0:
            raise ConfigError(f"weight: must be > 0, got {self.weight}")
        if self.share is not None and not 0 < self.share < 1:
            raise ConfigError(f"share: must be between 0 and 1 (exclusive), got {self.share}")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError(f"max_documents: must be at least 1, got {self.max_documents}")
        if self.format != "hub":
            given = [k for k in HUB_KEYS if getattr(self, k) not in (None, False)]
            if given:
                raise ConfigError(
                    f"{given[0]}: only for a hub dataset (format: hub); {self.path} is read as format {self.format!r}"
                )
        if self.split is not None and self.format not in ("hub", "hf", "auto", "dir"):
            raise ConfigError(f"split: only for a hub dataset or a datasets folder, not format {self.format!r}")

    def _take_hub_spec(self) -> None:
        """``path: hub:owner/name[@revision][[subset]][:split]`` (the form command-line arguments and
        labeled data use) -> format: hub with the same keys a recipe may spell out."""
        try:
            spec = parse_hub_spec(self.path)
        except ValueError as exc:
            raise ConfigError(f"path: {exc}") from None
        if self.format not in ("auto", "hub"):
            raise ConfigError(f"format: {self.format!r} does not go with a hub: path ({self.path})")
        for key in ("subset", "revision", "split"):
            given, value = getattr(self, key), getattr(spec, key)
            if given is not None and value is not None and given != value:
                raise ConfigError(f"{key}: {given!r} contradicts the path {self.path!r}")
            setattr(self, key, value if value is not None else given)
        self.path, self.format = spec.repo, "hub"


@dataclass
class CorpusConfig:
    """Training and held-out text for continued pretraining."""

    sources: list[SourceConfig] = opt(doc="training corpora, each with an optional weight or share", factory=list)
    eval_sources: list[SourceConfig] = opt(
        doc="held-out corpora, each reported separately (e.g. domain and general)", factory=list
    )
    eval_fraction: float = opt(
        0.0, "fraction of training documents held out (by a hash of the text) when no eval_sources are given"
    )
    dedup: bool = opt(True, "remove exact-duplicate documents (counted in the accounting)")
    on_error: Literal["raise", "skip"] = opt(
        "raise", "bad input (malformed line, missing field, bad bytes): stop with file:line, or skip and count"
    )
    min_chars: int = opt(1, "documents shorter than this (after stripping) are dropped and counted")
    block_size: int = opt(512, "tokens per training block")
    packing: Literal["auto", "document", "concat"] = opt(
        "auto",
        "document: attention and positions restart at each document; concat: plain concatenation; auto: document where the model supports it",
    )
    max_eval_tokens: int | None = opt(None, "cap on tokens per held-out set (sampled deterministically)")
    cache_dir: str | None = opt(None, "tokenization cache (default: ~/.cache/lmadapt/tokenized or $LMADAPT_CACHE)")
    num_proc: int | None = opt(None, "tokenization processes (default: min(4, cores))")
    mlm_probability: float = opt(0.15, "masked LM: fraction of tokens selected for prediction")
    whole_word_mask: bool = opt(True, "masked LM: mask every piece of a word together")

    def __post_init__(self):
        if self.block_size < 8:
            raise ConfigError(f"block_size: must be at least 8, got {self.block_size}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability: must be in (0, 1), got {self.mlm_probability}")
        shares = [s.share for s in self.sources if s.share is not None]
        if sum(shares) >= 1:
            raise ConfigError(f"sources: shares add up to {sum(shares):.3f}; they must leave room (< 1)")
        if shares and len(shares) == len(self.sources):
            raise ConfigError("sources: every source has a share; leave at least one without to take the rest")


def heldout_roles(names: list[str], domain_set: str | None, general_set: str | None) -> dict[str, str | None]:
    """Which held-out set is the domain and which is general text: the named ones, else the sets
    called 'domain' and 'general', else the first and the second (None where there is none)."""
    domain = domain_set or ("domain" if "domain" in names else (names[0] if names else None))
    rest = [n for n in names if n != domain]
    general = general_set or ("general" if "general" in names else (rest[0] if rest else None))
    return {"domain": domain, "general": general}
