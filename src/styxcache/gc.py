"""Garbage collection: trim a cache, least recently used first, while it is in use.

Safety rules, so that `styxcache gc` can run from cron next to live pipelines:

* an entry whose key has a live lease (a running execution holds it) is
  never removed;
* an entry is claimed by renaming it into `.trash/` (readers see the whole
  entry or nothing); its last use is checked right before, and again after
  the rename: if a hit touched it since the scan, it is put back;
* staging folders are swept only when old and not leased; `.failed/`,
  `.quarantine/` and `.trash/` leftovers only when old;
* every deletion claims its target by a rename first, so two collectors
  never delete the same tree.

Last use is the entry folder's modification time, bumped by every hit, not
atime (often disabled by `noatime` mounts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

from styxcache.inventory import EntryInfo, describe_entry, folder_size, scan_entries
from styxcache.lease import LeaseOwner, owner_is_dead
from styxcache.store import CacheStore, remove_tree
from styxcache.walk import (
    folder_entries,
    housekeeping_dir,
    is_cache_key,
    is_shard_name,
    real_dir,
    unsafe_reason,
)

__all__ = [
    "GcLimits",
    "GcReport",
    "Removal",
    "Skip",
    "SweepAges",
    "Swept",
    "Unsafe",
    "collect_garbage",
    "lease_is_live",
    "trim_after_commit",
]

_log = logging.getLogger("styxcache.gc")

DAY = 86400.0
TRIM_TARGET = 0.9
"""`trim_after_commit` trims down to this fraction of the cap (hysteresis)."""
KEEP_RECENT_S = 600.0
"""Entries used this recently are kept by default: a running pipeline may
still read the outputs it was served, and holds no lock while it does."""


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


# Leases ----------------------------------------------------------------------

LOCK_STALE_S = 3600.0
"""A lease not renewed for this long no longer protects its entry from gc.

Far longer than any lease period: gc does not know the `lease_seconds` of the
pipelines, and keeping an entry a little too long is harmless."""


def lease_is_live(
    store: CacheStore, key: str, *, stale_after: float = LOCK_STALE_S
) -> bool:
    """Return True when a running execution may hold the lease of `key`.

    Args:
        store: The cache.
        key: The key.
        stale_after: A lease older than this many seconds is not live.
    """
    path = store.root / store.LOCKS_DIR / f"{key}.lock"
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return False
    try:
        owner: LeaseOwner | None = LeaseOwner(**json.loads(path.read_text("utf-8")))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError):
        owner = None  # being written, or unreadable: its age still tells
    if owner is not None and owner_is_dead(owner):
        return False
    return time.time() - modified <= stale_after


# Choosing ----------------------------------------------------------------------


def _selected_by(
    entry: EntryInfo, limits: GcLimits, cutoff: float | None, count: int, size: int
) -> str:
    """Name the limit that selects `entry`, given what is left; "" for none."""
    if cutoff is not None and entry.last_used < cutoff:
        return "older-than"
    if limits.max_entries is not None and count > limits.max_entries:
        return "max-entries"
    if limits.max_size is not None and size > limits.max_size:
        return "max-size"
    return ""


# Removing ----------------------------------------------------------------------


def _claim(store: CacheStore, path: Path) -> Path | None:
    """Rename `path` into the trash; None if someone else took it first.

    Also None when `.trash` is a link (checked right before each rename): an
    entry is never moved, nor deleted, through a planted link.
    """
    trash = housekeeping_dir(store.root, store.TRASH_DIR, create=True)
    if trash is None:
        return None
    target = trash / f"gc-{uuid.uuid4().hex}"
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    return target


def _dry_run_reason(store: CacheStore, entry: EntryInfo, keep_used_after: float) -> str:
    if entry.last_used > keep_used_after:
        return "used recently"
    return "held by a running execution" if lease_is_live(store, entry.key) else ""


def _remove_entry(store: CacheStore, entry: EntryInfo, keep_used_after: float) -> str:
    """Remove one entry; return why it was kept, or "" when removed."""
    folder = store.entry_dir(entry.key)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return "already gone"
    if not stat.S_ISDIR(st.st_mode):
        return "replaced by a link or file: not followed"
    before = st.st_mtime
    if before != entry.last_used:
        return "used after gc started"
    if before > keep_used_after:
        return "used recently"
    if lease_is_live(store, entry.key):
        return "held by a running execution"
    claimed = _claim(store, folder)
    if claimed is None:
        return "already gone"
    # A hit may have touched the entry between the check and the rename.
    if os.lstat(claimed).st_mtime != before:
        try:
            os.rename(claimed, folder)
            return "used after gc started"
        except OSError:
            pass  # a newer commit took the slot; this copy is redundant
    _delete_claimed(claimed)
    return ""


def _delete_claimed(claimed: Path) -> None:
    # The item is ours alone once renamed; a failure here leaves a leftover
    # for a later sweep and must not stop the collection.
    try:
        remove_tree(claimed)
    except OSError as exc:
        _log.warning("cannot delete %s (a later gc retries): %s", claimed, exc)


def _remove_entries(
    store: CacheStore,
    entries: list[EntryInfo],
    limits: GcLimits,
    report: GcReport,
    *,
    keep: Collection[str],
    keep_used_after: float,
) -> None:
    cutoff = (
        None if limits.older_than_s is None else report.started - limits.older_than_s
    )
    count, size = len(entries), sum(e.size for e in entries)
    trash_problem = _unsafe_folder(store, store.TRASH_DIR, report)
    # Least recently used first: entries older than the cutoff are a prefix,
    # and a kept entry makes the next one go instead.
    for entry in sorted(entries, key=lambda e: (e.last_used, e.key)):
        why = _selected_by(entry, limits, cutoff, count, size)
        if not why:
            break
        if entry.key in keep:
            report.skipped.append(Skip(entry.key, "in use by the current run"))
            continue
        if trash_problem:
            reason = trash_problem
        elif report.dry_run:
            reason = _dry_run_reason(store, entry, keep_used_after)
        else:
            reason = _remove_entry(store, entry, keep_used_after)
        if reason:
            report.skipped.append(Skip(entry.key, reason))
            continue
        count -= 1
        size -= entry.size
        report.removed.append(Removal(entry, why))
        _log.info(
            "%s entry %s (%s, %d bytes): %s",
            "would remove" if report.dry_run else "removed",
            entry.key[:12],
            entry.tool or "?",
            entry.size,
            why,
        )


# Sweeping ----------------------------------------------------------------------


def _age(path: Path, now: float, *, use_ctime: bool = False) -> float | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    # A rename (into quarantine or trash) updates ctime, not mtime.
    return now - (st.st_ctime if use_ctime else st.st_mtime)


def _unsafe_folder(store: CacheStore, name: str, report: GcReport) -> str:
    """Say why a housekeeping folder cannot be used ("" when it is fine or missing)."""
    path = store.root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    if stat.S_ISDIR(st.st_mode):
        return ""
    reason = unsafe_reason(path, st)
    report.note_unsafe(str(path), reason)  # the caller reports it
    _log.debug("%s %s: entries cannot be removed safely", path, reason)
    return f"cannot be removed safely: {path} {reason}"


def _sweep_item(store: CacheStore, report: GcReport, kind: str, path: Path) -> None:
    size = folder_size(path)
    if not report.dry_run:
        claimed = _claim(store, path)
        if claimed is None:
            return
        _delete_claimed(claimed)
    report.swept.append(Swept(kind, str(path), size))


def _children(store: CacheStore, name: str, report: GcReport) -> list[Path]:
    """The items of a housekeeping folder; none when it is a planted link."""
    folder = housekeeping_dir(store.root, name, on_unsafe=report.note_unsafe)
    if folder is None:
        return []
    return [Path(item.path) for item in folder_entries(folder)]


def _staging_key(name: str) -> str:
    head = name.split(".", 1)[0]
    return head if "." in name and is_cache_key(head) else ""


def _sweep(
    store: CacheStore,
    report: GcReport,
    ages: SweepAges,
    now: float,
    present: frozenset[str] | None = None,
) -> None:
    for path in _children(store, store.STAGING_DIR, report):
        age = _age(path, now)
        if age is None or age < ages.staging_s:
            continue
        key = _staging_key(path.name)
        if key and lease_is_live(store, key):
            continue  # a long run still writing here
        _sweep_item(store, report, "staging", path)
    for path in _children(store, store.FAILED_DIR, report):
        age = _age(path, now)
        if age is not None and age >= ages.failed_s:
            _sweep_item(store, report, "failed", path)
    for path in _children(store, store.QUARANTINE_DIR, report):
        age = _age(path, now, use_ctime=True)
        if age is not None and age >= ages.quarantine_s:
            _sweep_item(store, report, "quarantine", path)
    for path in _children(store, store.TRASH_DIR, report):
        # Claiming (a rename) renews the ctime, so a leftover another
        # collector is deleting right now is too young to be taken twice.
        age = _age(path, now, use_ctime=True)
        if age is not None and age >= ages.trash_s:
            _sweep_item(store, report, "trash", path)
    _sweep_index(store, report, present)
    _sweep_shards(store, report, ages, now)


def _sweep_index(
    store: CacheStore, report: GcReport, present: frozenset[str] | None = None
) -> None:
    """Drop per-tool index records of entries that are gone.

    Args:
        store: The cache.
        report: Where removals are recorded.
        present: Keys the entry scan found (and did not remove): their
            records are kept without a system call each.
    """
    for tool_dir in _children(store, store.TOOLS_DIR, report):
        if not real_dir(tool_dir):
            with contextlib.suppress(OSError):
                st = os.lstat(tool_dir)
                if stat.S_ISLNK(st.st_mode):
                    report.note_unsafe(str(tool_dir), unsafe_reason(tool_dir, st))
            continue
        for item in folder_entries(tool_dir):
            if present is not None and item.name in present:
                continue
            # Only our own records: regular files named by a key.
            if not (is_cache_key(item.name) and item.is_file(follow_symlinks=False)):
                continue
            try:
                gone = not os.path.lexists(store.entry_dir(item.name))
                # record_tool() touches the record after a commit: a fresh
                # record may belong to an entry committed just now.
                fresh = item.stat(follow_symlinks=False).st_mtime >= report.started
            except (ValueError, FileNotFoundError):
                continue
            if gone and not fresh:
                if not report.dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
                report.swept.append(Swept("index", item.path, 0))


def _sweep_shards(
    store: CacheStore, report: GcReport, ages: SweepAges, now: float
) -> None:
    """Remove shard folders that have been empty for a while.

    A shard emptied just now is left for a later run: a commit may be about
    to move an entry into it.
    """
    for item in folder_entries(store.root):
        if not is_shard_name(item.name) or not item.is_dir(follow_symlinks=False):
            continue
        shard = Path(item.path)
        try:
            sticky = item.stat(follow_symlinks=False).st_mode & stat.S_ISVTX
        except FileNotFoundError:
            continue  # another collector removed it meanwhile
        if sticky:
            continue  # laid out by prepare_shared_cache: its owner must keep it
        age = _age(shard, now)
        if age is None or age < ages.staging_s or folder_entries(shard):
            continue
        if not report.dry_run:
            try:
                shard.rmdir()
            except OSError:
                continue  # not empty any more
        report.swept.append(Swept("shard", str(shard), 0))


# Entry points ----------------------------------------------------------------------


def collect_garbage(
    store: CacheStore,
    limits: GcLimits,
    *,
    dry_run: bool = False,
    sweep: bool = True,
    ages: SweepAges | None = None,
    keep: Collection[str] = (),
    keep_used_after: float | None = None,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """Trim a cache to its limits and sweep leftovers, safely while it is in use.

    Args:
        store: The cache.
        limits: What to trim to.
        dry_run: Only report what would be removed.
        sweep: Also sweep staging, `.failed/`, `.quarantine/`, `.trash/`,
            the per-tool index and empty shards.
        ages: Sweep thresholds (defaults: `SweepAges()`).
        keep: Keys never removed (the entry the current run just made).
        keep_used_after: Never remove an entry used after this Unix time
            (default: the start of the collection; the CLI passes its start
            minus `--keep-recent`).
        clock: Returns the current Unix time (injectable for tests).

    Returns:
        What was (or would be) removed and kept.
    """
    started = clock()
    report = GcReport(dry_run=dry_run, started=started)
    entries = list(scan_entries(store, on_unsafe=report.note_unsafe))
    report.entries_before = len(entries)
    report.bytes_before = sum(e.size for e in entries)
    _remove_entries(
        store,
        entries,
        limits,
        report,
        keep=keep,
        keep_used_after=started if keep_used_after is None else keep_used_after,
    )
    if sweep:
        gone = {r.entry.key for r in report.removed}
        present = frozenset(e.key for e in entries if e.key not in gone)
        _sweep(store, report, ages or SweepAges(), started, present)
    return report


RESCAN_S = 60.0
"""`trim_after_commit` rescans the cache at least this often (seconds).

Between scans it adds each commit's size to the last total, so a commit costs
one entry's stat, not a scan of every manifest. Commits of other processes
are seen at the next scan."""

_totals: dict[Path, tuple[int, float]] = {}
_totals_lock = threading.Lock()


def trim_after_commit(
    store: CacheStore,
    limit_bytes: int,
    *,
    keep: str,
    keep_used_after: float | None = None,
    clock: Callable[[], float] = time.time,
) -> GcReport | None:
    """Keep a cache under `CachePolicy.max_size`; called after each commit.

    Nothing happens until the cache exceeds the cap; then it is trimmed,
    least recently used first, down to 90% of it, so the next commits do not
    each trim again. The entry just committed is never removed, even when it
    alone exceeds the cap, nor entries held by running executions or used in
    the last `KEEP_RECENT_S` seconds (what the current run may still need).
    Failures are logged, never raised: trimming must not fail a pipeline.

    The cache is scanned when the last scan is older than `RESCAN_S` or the
    running estimate exceeds the cap.

    Args:
        store: The cache.
        limit_bytes: The cap.
        keep: The key just committed.
        keep_used_after: Never remove entries used after this Unix time (for
            example the start of the current pipeline run). Default: the last
            `KEEP_RECENT_S` seconds, the outputs the current run may still read.
        clock: Returns the current Unix time (injectable for tests).

    Returns:
        The collection's report, or None when the cache was under the cap.
    """
    now = clock()
    try:
        if _still_under(store, limit_bytes, keep, now):
            return None
        total = sum(e.size for e in scan_entries(store))
        if total <= limit_bytes:
            _remember(store, total, now)
            return None
        report = collect_garbage(
            store,
            GcLimits(max_size=int(limit_bytes * TRIM_TARGET)),
            sweep=False,
            keep=(keep,),
            keep_used_after=(
                now - KEEP_RECENT_S if keep_used_after is None else keep_used_after
            ),
            clock=lambda: now,
        )
    except OSError as exc:
        _log.warning(
            "cannot trim cache %s to %d bytes: %s", store.root, limit_bytes, exc
        )
        return None
    _remember(store, report.bytes_after, now)
    for item in report.unsafe:
        _log.warning("cache %s: skipped %s: it %s", store.root, item.path, item.reason)
    _log.info(
        "cache %s over its cap (%d > %d bytes): removed %d entries, %d bytes",
        store.root,
        total,
        limit_bytes,
        len(report.removed),
        report.bytes_freed,
    )
    if report.bytes_after > limit_bytes:
        _log.warning(
            "cache %s is still over its cap (%d > %d bytes): the rest is in use",
            store.root,
            report.bytes_after,
            limit_bytes,
        )
    return report


def _still_under(store: CacheStore, limit_bytes: int, key: str, now: float) -> bool:
    """Add the new entry to the last scan's total; True while it stays under the cap."""
    with _totals_lock:
        known = _totals.get(store.root)
    if known is None or now - known[1] >= RESCAN_S:
        return False
    entry = describe_entry(store, key)
    total = known[0] + (entry.size if entry is not None else 0)
    if total > limit_bytes:
        return False
    _remember(store, total, known[1])
    return True


def _remember(store: CacheStore, total: int, scanned: float) -> None:
    with _totals_lock:
        _totals[store.root] = (total, scanned)
