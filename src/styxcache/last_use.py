"""A page of entries by last use, from the catalog's index of last uses.

Sorting a cache by last use needs every entry folder's modification time:
one `lstat` each, most of `ls --limit 50`'s time on 100,000 entries. The
catalog keeps those times (catalog.py: each row notes its folder's time,
each hit appends a use), so a page can be picked from the index, and only
the entries near the page are `lstat`-ed.

The index is a hint. Folders are still listed (`readdir` gives their names
without an `lstat`): an entry the index does not know is `lstat`-ed as
before. The rows picked are checked
against their folders; when one disagrees with the index by more than
`TOLERANCE_NS` (a folder's time set by something other than styxcache),
`page_by_last_use` returns None and the caller scans every folder, then
`refresh_index` writes the times it saw, so the next page is fast again.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from styxcache.catalog import CatalogRows, LoadedCatalog, load_catalog, write_snapshot
from styxcache.catalog_rows import TOLERANCE_NS
from styxcache.inventory import EntryStamp
from styxcache.store import CacheStore
from styxcache.walk import UnsafeHandler, entry_dirs_of, iter_shard_dirs

__all__ = ["TOLERANCE_NS", "LastUsePage", "page_by_last_use", "refresh_index"]

_log = logging.getLogger("styxcache.last_use")


@dataclasses.dataclass
class LastUsePage:
    """The entries of a page, checked against their folders.

    Attributes:
        stamps: The page, in the order asked for (ties broken by key).
        total: Entries in the cache.
        catalog: The catalog read (for describing the rows).
    """

    stamps: list[EntryStamp]
    total: int
    catalog: LoadedCatalog


def _scan(
    store: CacheStore, rows: CatalogRows, on_unsafe: UnsafeHandler | None
) -> tuple[set[str], dict[str, EntryStamp]]:
    """List every entry folder's name; `lstat` only those the index lacks.

    Returns:
        The names found in the shards, and the entries unknown to the index
        (with their folder's time).
    """
    present: set[str] = set()
    exact: dict[str, EntryStamp] = {}
    for shard in iter_shard_dirs(store.root, on_unsafe=on_unsafe):
        names = os.listdir(shard.path)  # names only: no `lstat`, no objects
        present.update(names)
        new = rows.unknown(names)
        if not new:
            continue
        with os.scandir(shard.path) as items:
            unknown = [item for item in items if item.name in new]
        for item in entry_dirs_of(shard.name, unknown, on_unsafe=on_unsafe):
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            exact[item.name] = EntryStamp(item.name, st.st_mtime, st.st_ino, item.path)
    return present, exact


def _band(
    pairs: Callable[[], Iterable[tuple[str, str]]], limit: int, newest_first: bool
) -> list[str]:
    """The keys that may belong on the page: its own and those near its edge.

    An entry's folder time is within `TOLERANCE_NS` of its index time, so an
    entry off the page by index can still beat one on it by folder time only
    when their index times are less than twice that apart.

    Args:
        pairs: Returns every entry's (last use, key), afresh at each call.
        limit: The page's size.
        newest_first: The page's order.
    """
    pick = heapq.nlargest if newest_first else heapq.nsmallest
    # A wider pick than the page: the band near its edge is usually inside.
    wide = pick(2 * limit + 32, pairs())
    if not wide:
        return []
    try:
        edge = int(wide[min(limit, len(wide)) - 1][0])
    except ValueError:
        # `CatalogRows` keeps only 20-digit times; should one slip through,
        # every key is a candidate, and `_checked` sends the page to a scan.
        return [key for _used, key in pairs()]
    if newest_first:
        low = f"{max(0, edge - 2 * TOLERANCE_NS):020d}"
        inside = wide[-1][0] < low or len(wide) < 2 * limit + 32
        return [key for used, key in (wide if inside else pairs()) if used >= low]
    high = f"{edge + 2 * TOLERANCE_NS:020d}"
    inside = wide[-1][0] > high or len(wide) < 2 * limit + 32
    return [key for used, key in (wide if inside else pairs()) if used <= high]


def _checked(store: CacheStore, key: str, rows: CatalogRows) -> EntryStamp | None:
    """The entry's stamp if its folder agrees with the index, else None."""
    path = os.path.join(store.root, key[:2], key)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # removed meanwhile: the page may be short, scan again
    known = rows.last_use_of(key)
    if (
        known is None
        or not stat.S_ISDIR(st.st_mode)
        or st.st_ino != known[0]
        or abs(st.st_mtime_ns - known[1]) > TOLERANCE_NS
    ):
        return None
    return EntryStamp(key, st.st_mtime, st.st_ino, path)


def page_by_last_use(
    store: CacheStore,
    limit: int,
    *,
    newest_first: bool = True,
    on_unsafe: UnsafeHandler | None = None,
) -> LastUsePage | None:
    """Pick the `limit` most (or least) recently used entries, or None.

    Args:
        store: The cache.
        limit: The page's size (at least 1).
        newest_first: Most recently used first (else least recently used).
        on_unsafe: Told `(path, reason)` about each link skipped.

    Returns:
        The page, ordered by the folders' own times (then by key, as a full
        scan orders them); None when the index disagrees with a folder near
        the page: the caller must scan every folder.
    """
    catalog = load_catalog(store.root)
    rows = catalog.rows
    present, exact = _scan(store, rows, on_unsafe)
    exact_pairs = [(f"{round(s.last_used * 1e9):020d}", s.key) for s in exact.values()]

    def pairs() -> Iterator[tuple[str, str]]:
        return itertools.chain(rows.last_use_pairs(present), exact_pairs)

    stamps: list[EntryStamp] = []
    for key in _band(pairs, limit, newest_first):
        stamp = exact.get(key) or _checked(store, key, rows)
        if stamp is None:
            _log.debug("index of last uses stale at %s: scanning", key[:12])
            return None
        stamps.append(stamp)
    stamps.sort(key=_order, reverse=newest_first)
    total = rows.count_known(present) + len(exact)
    return LastUsePage(stamps[:limit], total, catalog)


def _order(stamp: EntryStamp) -> tuple[float, str]:
    return (stamp.last_used, stamp.key)


def refresh_index(
    store: CacheStore, stamps: list[EntryStamp], catalog: LoadedCatalog, seen_ns: int
) -> None:
    """Rewrite the index with the folder times a full scan saw; never raises.

    Args:
        store: The cache.
        stamps: Every entry, as `inventory.scan_stamps` found it.
        catalog: The catalog as read before the scan.
        seen_ns: When the scan started (see `catalog.write_snapshot`).
    """
    rows = catalog.rows
    fresh = []
    for stamp in stamps:
        row = rows.get(stamp.key)
        if row is not None and row.inode == stamp.inode:
            fresh.append(row._replace(used_ns=round(stamp.last_used * 1e9)))
    write_snapshot(store.root, fresh, catalog.files, seen_ns=seen_ns)
