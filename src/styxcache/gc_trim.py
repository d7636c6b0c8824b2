"""Keeping a cache under `CachePolicy.max_size`, commit by commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from styxcache.cache_size import CacheSizeEstimate
from styxcache.gc import GcLimits, GcReport, collect_garbage
from styxcache.inventory import describe_entry, scan_entries
from styxcache.store import CacheStore

__all__ = ["KEEP_RECENT_S", "RESCAN_S", "TRIM_TARGET", "trim_after_commit"]

_log = logging.getLogger("styxcache.gc")

TRIM_TARGET = 0.9
"""`trim_after_commit` trims down to this fraction of the cap (hysteresis)."""
KEEP_RECENT_S = 600.0
"""Entries used this recently are kept by default: a running pipeline may
still read the outputs it was served, and holds no lock while it does."""
RESCAN_S = 60.0
"""`trim_after_commit` rescans the cache at least this often (seconds).

Between scans it adds each commit's size to the last total, so a commit costs
one entry's stat, not a scan of every manifest. Commits of other processes
are seen at the next scan."""


def trim_after_commit(
    store: CacheStore,
    limit_bytes: int,
    *,
    keep: str,
    estimate: CacheSizeEstimate,
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
        estimate: The runner's running total of the cache (see
            `cache_size`); updated here.
        keep_used_after: Never remove entries used after this Unix time (for
            example the start of the current pipeline run). Default: the last
            `KEEP_RECENT_S` seconds, the outputs the current run may still read.
        clock: Returns the current Unix time (injectable for tests).

    Returns:
        The collection's report, or None when the cache was under the cap
        (or could not be trimmed).
    """
    try:
        return _trim(store, limit_bytes, keep, estimate, keep_used_after, clock)
    except Exception as exc:  # trimming must never fail a run
        # Not only OSError: a damaged file of a shared cache may raise anything.
        if store.root not in _FAILED:
            _FAILED.add(store.root)
            _log.warning(
                "cannot trim cache %s to %d bytes: %s: %s (the run goes on; "
                "further failures are logged at debug level)",
                store.root,
                limit_bytes,
                type(exc).__name__,
                exc,
            )
        else:
            _log.debug("cannot trim cache %s: %r", store.root, exc)
        return None


_FAILED: set[Path] = set()
"""Caches whose trimming failed with an unexpected error (warned once each)."""


def _trim(
    store: CacheStore,
    limit_bytes: int,
    keep: str,
    estimate: CacheSizeEstimate,
    keep_used_after: float | None,
    clock: Callable[[], float],
) -> GcReport | None:
    """`trim_after_commit`, raising what it cannot handle."""
    now = clock()
    try:
        if _still_under(store, limit_bytes, keep, estimate, now):
            return None
        total = sum(e.size for e in scan_entries(store))
        if total <= limit_bytes:
            estimate.scanned(total, now)
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
    estimate.scanned(report.bytes_after, now)
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


def _still_under(
    store: CacheStore,
    limit_bytes: int,
    key: str,
    estimate: CacheSizeEstimate,
    now: float,
) -> bool:
    """Add the new entry to the estimate; True while it stays under the cap."""
    known = estimate.current(now, RESCAN_S)
    if known is None:
        return False
    entry = describe_entry(store, key)
    size = entry.size if entry is not None else 0
    if known + size > limit_bytes:
        return False
    estimate.add(size)
    return True
