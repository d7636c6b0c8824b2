"""What export and import share: the archive's layout, the reports, the error."""

from __future__ import annotations

import dataclasses
import posixpath
from pathlib import Path

from styxcache.errors import TransferError
from styxcache.inventory import EntryInfo

__all__ = [
    "ENTRIES_DIR",
    "EXPORT_FORMAT",
    "INDEX_NAME",
    "MAX_SMALL_MEMBER",
    "ExportReport",
    "ImportReport",
    "TransferError",
    "link_stays_inside",
]

EXPORT_FORMAT = 1
INDEX_NAME = "styxcache-export.json"
ENTRIES_DIR = "entries"
MAX_SMALL_MEMBER = 64 << 20
"""A manifest or index larger than this is refused (they are read whole)."""


@dataclasses.dataclass
class ExportReport:
    """What an export wrote.

    Attributes:
        path: The archive.
        entries: The entries written.
        skipped: Keys left out, with why.
    """

    path: Path
    entries: list[EntryInfo] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Total size of the entries written."""
        return sum(e.size for e in self.entries)

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return {
            "path": str(self.path),
            "entries": [e.as_dict() for e in self.entries],
            "bytes": self.bytes,
            "skipped": self.skipped,
        }


@dataclasses.dataclass
class ImportReport:
    """What an import did.

    Attributes:
        imported: Keys committed to the cache.
        present: Keys already in the cache (left as they were).
        skipped: Keys not imported because the cache is unsafe there, with why.
    """

    imported: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


def link_stays_inside(path: str, link: str) -> bool:
    """Return True when a relative symlink at `path` points inside its tree.

    Args:
        path: The link's POSIX path inside the tree.
        link: Its target text.
    """
    if posixpath.isabs(link):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
    return resolved != ".." and not resolved.startswith("../")
