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

import logging
import os
import stat
import time
from collections.abc import Callable, Collection

from styxcache.gc_records import GcLimits, GcReport, Removal, Skip, SweepAges
from styxcache.gc_safety import claim, delete_claimed, lease_is_live
from styxcache.gc_sweep import sweep as sweep_leftovers
from styxcache.gc_sweep import unsafe_folder
from styxcache.inventory import EntryInfo, scan_entries
from styxcache.store import CacheStore

__all__ = [
    # The records live in gc_records.py; these three are what callers pass.
    "GcLimits",
    "GcReport",
    "SweepAges",
    "collect_garbage",
    "lease_is_live",
]

_log = logging.getLogger("styxcache.gc")


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
    claimed = claim(store, folder)
    if claimed is None:
        return "already gone"
    # A hit may have touched the entry between the check and the rename.
    if os.lstat(claimed).st_mtime != before:
        try:
            os.rename(claimed, folder)
            return "used after gc started"
        except OSError:
            pass  # a newer commit took the slot; this copy is redundant
    delete_claimed(claimed)
    return ""


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
    trash_problem = unsafe_folder(store, store.TRASH_DIR, report)
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


# Entry point ----------------------------------------------------------------------


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
    entries = list(
        scan_entries(store, on_unsafe=report.note_unsafe, write_catalog=not dry_run)
    )
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
        sweep_leftovers(store, report, ages or SweepAges(), started, present)
    return report
