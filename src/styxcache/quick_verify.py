"""The size check of many entries from the catalog, on several cores.

`styxcache verify` checks most entries against the catalog's copy of their
manifest (catalog.py) without reading the manifest itself: a few `stat`
calls and one JSON parse per entry, about 40 us of CPU. At 100,000 entries
that is seconds of one core, so the entries are split among forked
processes, which answer with one byte per entry through a pipe. Only the
answer "whole" is trusted; anything else goes through the store's full
lookup in the calling process, which says why and quarantines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
from collections.abc import Callable, Sequence

from styxcache._system import can_fork
from styxcache.catalog import CatalogRows, manifest_stamp
from styxcache.entry_check import check_outputs
from styxcache.inventory import EntryStamp
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore

__all__ = ["MIN_PER_JOB", "whole_by_catalog", "whole_flags"]

_log = logging.getLogger("styxcache.quick_verify")

MIN_PER_JOB = 5000
"""Fewer entries than this per process are checked in the calling process:
a fork costs milliseconds."""


def whole_by_catalog(store: CacheStore, stamp: EntryStamp, rows: CatalogRows) -> bool:
    """Check an entry's sizes against the catalog's copy of its manifest.

    Valid only while the entry folder and its manifest file are the ones
    the copy was made from (same folder inode; the manifest's inode, size
    and mtime unchanged): then the copy (all but the key payload) is the
    manifest. The checks are the store's own.

    Args:
        store: The cache.
        stamp: The entry, as `inventory.scan_stamps` found it.
        rows: The catalog, loaded with its checks.

    Returns:
        True when the entry is whole; False when unsure (no copy, a changed
        manifest) or damaged: the caller then looks it up in full.
    """
    found = rows.checks_for(stamp.key, stamp.inode)
    if found is None:
        return False
    entry = stamp.path
    if manifest_stamp(f"{entry}/{store.MANIFEST}") != found[0]:
        return False
    try:  # not `exists`: it follows a link planted in the folder
        if not stat.S_ISREG(os.lstat(f"{entry}/{store.DONE_MARKER}").st_mode):
            return False
    except OSError:
        return False
    try:
        manifest = Manifest.from_json(found[1])
    except ManifestError:
        return False
    if manifest.key != stamp.key:
        return False
    return check_outputs(entry, manifest, "size", None) == ""


def _flags(store: CacheStore, stamps: Sequence[EntryStamp], rows: CatalogRows) -> bytes:
    return bytes(whole_by_catalog(store, s, rows) for s in stamps)


def whole_flags(
    store: CacheStore,
    stamps: Sequence[EntryStamp],
    rows: CatalogRows,
    *,
    jobs: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[bool]:
    """Run `whole_by_catalog` over many entries, on up to `jobs` processes.

    Args:
        store: The cache.
        stamps: The entries.
        rows: The catalog, loaded with its checks.
        jobs: Processes to use (this one included).
        on_progress: Told how many entries this process has checked so far.

    Returns:
        One flag per entry, in order.
    """
    jobs = max(1, min(jobs, len(stamps) // MIN_PER_JOB))
    if jobs == 1 or not can_fork():
        return [bool(f) for f in _flags_with_progress(store, stamps, rows, on_progress)]
    size = -(-len(stamps) // jobs)
    slices = [stamps[i : i + size] for i in range(0, len(stamps), size)]
    children: list[tuple[int, int]] = []
    answers: list[bytes] = []
    try:
        for part in slices[1:]:
            children.append(_fork_flags(store, part, rows))
        flags = _flags_with_progress(store, slices[0], rows, on_progress)
    except BaseException:
        for pid, _fd in children:  # their answers are no longer wanted
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        # Even when this share raised: no child left unwaited, no pipe open.
        answers = [_collect(pid, fd) for pid, fd in children]
    for (pid, _fd), answer, part in zip(children, answers, slices[1:], strict=True):
        if len(answer) == len(part):
            flags += answer
        else:  # the child failed: do its share here
            _log.debug("verify worker %d failed: checking its share here", pid)
            flags += _flags(store, part, rows)
    return [bool(flag) for flag in flags]


def _flags_with_progress(
    store: CacheStore,
    stamps: Sequence[EntryStamp],
    rows: CatalogRows,
    on_progress: Callable[[int], None] | None,
) -> bytes:
    if on_progress is None:
        return _flags(store, stamps, rows)
    found = bytearray()
    for start in range(0, len(stamps), 1024):
        found += _flags(store, stamps[start : start + 1024], rows)
        on_progress(len(found))
    return bytes(found)


def _fork_flags(
    store: CacheStore, stamps: Sequence[EntryStamp], rows: CatalogRows
) -> tuple[int, int]:
    """Start a process checking `stamps`; return its pid and its pipe."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # the child: answer, then leave without running any cleanup
        code = 1
        try:
            os.close(read_end)
            data = memoryview(_flags(store, stamps, rows))
            while data:
                data = data[os.write(write_end, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, fd: int) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks) if os.waitstatus_to_exitcode(status) == 0 else b""
