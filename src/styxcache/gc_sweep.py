"""Sweeping a cache's leftovers.

Crashed staging folders that no lease holds, old failed runs, old
quarantine and trash, per-tool index records of removed entries, and empty
shard folders: each only when old enough, each claimed by a rename first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from styxcache.gc_records import GcReport, SweepAges, Swept
from styxcache.gc_safety import claim, delete_claimed, lease_is_live
from styxcache.inventory import folder_size
from styxcache.store import CacheStore
from styxcache.walk import (
    folder_entries,
    housekeeping_dir,
    is_cache_key,
    is_shard_name,
    real_dir,
    unsafe_reason,
)

__all__ = ["sweep", "unsafe_folder"]

_log = logging.getLogger("styxcache.gc")


def _age(path: Path, now: float, *, use_ctime: bool = False) -> float | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    # A rename (into quarantine or trash) updates ctime, not mtime.
    return now - (st.st_ctime if use_ctime else st.st_mtime)


def unsafe_folder(store: CacheStore, name: str, report: GcReport) -> str:
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
        claimed = claim(store, path)
        if claimed is None:
            return
        delete_claimed(claimed)
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


def sweep(
    store: CacheStore,
    report: GcReport,
    ages: SweepAges,
    now: float,
    present: frozenset[str] | None = None,
) -> None:
    """Sweep every housekeeping folder's old leftovers (see the module).

    Args:
        store: The cache.
        report: Where sweeps (and links found) are recorded.
        ages: How old each kind of leftover must be.
        now: The collection's start (Unix time).
        present: Keys the entry scan found and kept (see `_sweep_index`).
    """
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
