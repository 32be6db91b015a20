"""How a recipe names a dataset on the Hugging Face Hub (parsed here, loaded by ``data.hub``).

Corpus sources say ``format: hub`` with ``split``/``subset``/``revision`` keys; labeled data, whose
train/dev/test are one string each, say ``hub:owner/name[@revision][[subset]][:split]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# owner/name or a canonical name: what the hub accepts as a dataset id
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
PREFIX = "hub:"
_SPEC = re.compile(
    r"hub:(?P<repo>[^@\[\]:]+)(?:@(?P<revision>[^@\[\]:]+))?(?:\[(?P<subset>[^\]]+)\])?"
    r"(?::(?P<split>[^:@\[\]]+))?"
)


@dataclass(frozen=True)
class HubSpec:
    repo: str
    subset: str | None = None
    split: str | None = None  # None: train (the spec named none)
    revision: str | None = None
    streaming: bool = False

    @property
    def label(self) -> str:
        """How errors and origins name it (the revision is left out: it is in the recipe)."""
        return f"{PREFIX}{self.repo}{f'[{self.subset}]' if self.subset else ''}:{self.split or 'train'}"


def is_hub_spec(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_hub_spec(value: str) -> HubSpec:
    """``hub:owner/name[@revision][[subset]][:split]`` -> HubSpec; ValueError for a malformed one."""
    m = _SPEC.fullmatch(value.strip())
    if not m:
        raise ValueError(
            f"{value!r}: expected hub:owner/name[@revision][[subset]][:split], e.g. hub:nyu-mll/glue[sst2]:validation"
        )
    return HubSpec(repo=m["repo"], subset=m["subset"], split=m["split"], revision=m["revision"])


def is_dataset_repo(repo: str) -> bool:
    """A hub dataset id (owner/name, or a canonical name) or a local folder: what load_dataset takes.
    Checked by shape only; whether the hub has it is known when it is read (that may need the network)."""
    return Path(repo).expanduser().is_dir() or bool(HUB_ID.fullmatch(repo))
