"""What a garbage collection is asked to do, and the report of what it did."""

from __future__ import annotations

import dataclasses

from styxcache.inventory import EntryInfo

__all__ = [
    "DAY",
    "GcLimits",
    "GcReport",
    "Removal",
    "Skip",
    "SweepAges",
    "Swept",
    "Unsafe",
]

DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class GcLimits:
    """What to trim to. Unset limits do not apply; with none, only sweeps run.

    Attributes:
        max_size: Keep at most this many bytes of entries.
        max_entries: Keep at most this many entries.
        older_than_s: Remove entries not used for this many seconds.
    """

    max_size: int | None = None
    max_entries: int | None = None
    older_than_s: float | None = None

    def __post_init__(self) -> None:
        """Reject negative limits before anything is removed."""
        for name in ("max_size", "max_entries", "older_than_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"GcLimits.{name} must not be negative, got {value}")


@dataclasses.dataclass(frozen=True)
class SweepAges:
    """How old leftovers must be before they are swept (seconds).

    Attributes:
        staging_s: Staging folders of runs that no lease holds (crashed runs),
            and empty shard folders.
        failed_s: Failed runs kept for inspection under `.failed/`.
        quarantine_s: Damaged entries moved to `.quarantine/`.
        trash_s: Leftovers in `.trash/` (a deletion that crashed).
    """

    staging_s: float = DAY
    failed_s: float = 7 * DAY
    quarantine_s: float = 30 * DAY
    trash_s: float = 3600.0


@dataclasses.dataclass(frozen=True)
class Removal:
    """An entry removed (or, in a dry run, that would be).

    Attributes:
        entry: The entry as scanned.
        why: Which limit selected it: `"max-size"`, `"max-entries"`,
            `"older-than"` or `"clear"`.
    """

    entry: EntryInfo
    why: str


@dataclasses.dataclass(frozen=True)
class Skip:
    """An entry selected for removal but kept, and why.

    Attributes:
        key: The entry's key.
        reason: For example "held by a running execution".
    """

    key: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Swept:
    """A leftover removed (or that would be) from a housekeeping folder.

    Attributes:
        kind: `"staging"`, `"failed"`, `"quarantine"`, `"trash"`, `"index"`
            or `"shard"`.
        path: Its path when found.
        size: Bytes it held.
    """

    kind: str
    path: str
    size: int


@dataclasses.dataclass(frozen=True)
class Unsafe:
    """A link (or file) found where a cache folder should be: never followed.

    Attributes:
        path: Where it is.
        reason: What it is, for example "is a symlink to /home/ana (not
            followed)".
    """

    path: str
    reason: str


@dataclasses.dataclass
class GcReport:
    """What a collection did.

    Attributes:
        dry_run: Nothing was removed; the lists say what would have been.
        started: Unix time the collection started.
        entries_before: Entries found.
        bytes_before: Their total size.
        removed: Entries removed, least recently used first.
        skipped: Entries that were selected but kept.
        swept: Leftovers removed from housekeeping folders.
        unsafe: Links planted where cache folders should be; reported, never
            followed nor deleted through.
    """

    dry_run: bool
    started: float
    entries_before: int = 0
    bytes_before: int = 0
    removed: list[Removal] = dataclasses.field(default_factory=list)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    swept: list[Swept] = dataclasses.field(default_factory=list)
    unsafe: list[Unsafe] = dataclasses.field(default_factory=list)

    def note_unsafe(self, path: str, reason: str) -> None:
        """Record a link skipped by a walk (once per path)."""
        if all(item.path != path for item in self.unsafe):
            self.unsafe.append(Unsafe(path, reason))

    @property
    def bytes_freed(self) -> int:
        """Bytes of the removed entries."""
        return sum(r.entry.size for r in self.removed)

    @property
    def entries_after(self) -> int:
        """Entries left (as far as this collection knows)."""
        return self.entries_before - len(self.removed)

    @property
    def bytes_after(self) -> int:
        """Bytes of entries left (as far as this collection knows)."""
        return self.bytes_before - self.bytes_freed

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return {
            "dry_run": self.dry_run,
            "started": self.started,
            "entries_before": self.entries_before,
            "bytes_before": self.bytes_before,
            "entries_after": self.entries_after,
            "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_freed,
            "removed": [{**r.entry.as_dict(), "why": r.why} for r in self.removed],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "swept": [dataclasses.asdict(s) for s in self.swept],
            "unsafe": [dataclasses.asdict(u) for u in self.unsafe],
        }
