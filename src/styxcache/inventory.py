"""Inventory: what a cache directory holds, entry by entry.

An entry's size is what it occupies in the cache (its outputs as recorded in
the manifest, plus the manifest and logs), its creation time is the commit
time in the manifest, and its last use is the modification time of its
folder, which every hit bumps (atime is useless on `noatime` mounts).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from styxcache.catalog import (
    CatalogRow,
    LoadedCatalog,
    append_checks,
    append_rows,
    foldable,
    load_catalog,
    row_for,
    write_snapshot,
)
from styxcache.errors import KeyPrefixError
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore
from styxcache.walk import (
    UnsafeHandler,
    folder_entries,
    is_cache_key,
    iter_entry_dirs,
    real_dir,
)

__all__ = [
    "EntryDescriber",
    "EntryInfo",
    "EntryStamp",
    "EntryState",
    "KeyPrefixError",
    "describe_entry",
    "folder_size",
    "resolve_key",
    "scan_entries",
    "scan_stamps",
]

EntryState = Literal["complete", "uncommitted", "incomplete"]


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """One entry folder of a cache, as seen without verifying its outputs.

    Attributes:
        key: The cache key.
        tool: `package/id`, or `""` when the manifest is unreadable.
        size: Bytes the entry occupies (outputs, manifest and logs).
        files: Number of output files.
        created: Unix time of the commit (folder mtime when unknown).
        last_used: Unix time of the last hit or of the commit: the entry
            folder's modification time.
        duration_s: How long the tool ran (what a hit saves).
        state: `"complete"` (done marker present), `"uncommitted"` (a run
            that must not be served) or `"incomplete"` (anything else).
    """

    key: str
    tool: str
    size: int
    files: int
    created: float
    last_used: float
    duration_s: float
    state: EntryState

    def as_dict(self) -> dict[str, object]:
        """Return the record as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


def folder_size(path: Path) -> int:
    """Return the total size of the files under a folder (symlinks not followed).

    Args:
        path: A folder; a missing one counts 0, and a link or file counts
            its own size (a link is never followed, even at the top).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def describe_entry(store: CacheStore, key: str) -> EntryInfo | None:
    """Return what an entry folder holds, or None when it is gone.

    Args:
        store: The cache.
        key: The entry's key.

    Returns:
        The record; None when the folder is gone or is not a folder (a
        symlink planted in its place is never followed).
    """
    entry = store.entry_dir(key)
    try:
        st = os.lstat(entry)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return _describe(store, key, entry, st.st_mtime)


def _describe(store: CacheStore, key: str, entry: Path, last_used: float) -> EntryInfo:
    return _describe_read(store, key, entry, last_used)[0]


def _describe_read(
    store: CacheStore, key: str, entry: Path, last_used: float
) -> tuple[EntryInfo, Manifest | None]:
    try:
        manifest = Manifest.read(entry / store.MANIFEST)
    except ManifestError:
        manifest = None
    if manifest is None:
        state: EntryState = (
            "uncommitted" if (entry / store.UNCOMMITTED).exists() else "incomplete"
        )
        info = EntryInfo(
            key, "", folder_size(entry), 0, last_used, last_used, 0.0, state
        )
        return info, None
    extra = 0
    for name in store.RESERVED:
        try:
            extra += os.lstat(entry / name).st_size
        except OSError:
            continue
    if (entry / store.DONE_MARKER).exists():
        state = "complete"
    elif (entry / store.UNCOMMITTED).exists():
        state = "uncommitted"
    else:
        state = "incomplete"
    info = EntryInfo(
        key=key,
        tool=manifest.tool,
        size=manifest.total_size + extra,
        files=len(manifest.outputs),
        created=manifest.created,
        last_used=last_used,
        duration_s=manifest.duration_s,
        state=state,
    )
    return info, manifest


class EntryStamp(NamedTuple):
    """An entry folder found by a scan, before anything else is read.

    Attributes:
        key: The cache key.
        last_used: The folder's modification time (its last use).
        inode: The folder's inode.
        path: The folder.
    """

    key: str
    last_used: float
    inode: int
    path: str


def scan_stamps(
    store: CacheStore, *, on_unsafe: UnsafeHandler | None = None
) -> Iterator[EntryStamp]:
    """Yield every entry folder with its last use, at one `lstat` each, key order.

    Args:
        store: The cache.
        on_unsafe: Told `(path, reason)` about each link skipped.
    """
    make = EntryStamp._make  # runs 100,000 times: no per-call attribute lookups
    for item in iter_entry_dirs(store.root, on_unsafe=on_unsafe):
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield make((item.name, st.st_mtime, st.st_ino, item.path))


class EntryDescriber:
    """Describes entry folders: from the catalog when it knows them, else the manifest.

    Args:
        store: The cache.
    """

    EAGER_AFTER = 64
    """Entries described from their manifests before the catalog is read:
    a page of `ls` needs 50 manifests, not 100,000 catalog lines."""

    def __init__(
        self,
        store: CacheStore,
        catalog: LoadedCatalog | None = None,
        *,
        started_ns: int | None = None,
    ) -> None:
        self.store = store
        # Folder times are read after this: uses recorded since are news.
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self._catalog = catalog
        self._described = 0
        # Rows still valid, with the last use the scan saw (for a snapshot).
        self._valid: list[tuple[CatalogRow, float]] = []
        self.new: list[CatalogRow] = []
        self.stale_uses = 0
        """Entries whose folder time the index of last uses has wrong."""
        self._unchecked: list[EntryStamp] = []
        """Entries described before the catalog was read (see `fold`)."""

    @property
    def catalog(self) -> LoadedCatalog:
        """The catalog, read on first use."""
        if self._catalog is None:
            self._catalog = load_catalog(self.store.root)
        return self._catalog

    def describe(self, stamp: EntryStamp) -> EntryInfo:
        """Describe one entry found by `scan_stamps`.

        Args:
            stamp: The entry.
        """
        self._described += 1
        rows = (
            self.catalog.rows
            if self._catalog is not None or self._described > self.EAGER_AFTER
            else None
        )
        row = None if rows is None else rows.get(stamp.key)
        if rows is not None and row is not None and row.inode == stamp.inode:
            self._valid.append((row, stamp.last_used))
            if not rows.use_agrees(row, stamp.last_used):
                self.stale_uses += 1  # a folder time set outside styxcache
            return EntryInfo(
                row.key,
                row.tool,
                row.size,
                row.files,
                row.created,
                stamp.last_used,
                row.duration_s,
                "complete",
            )
        if self._catalog is None:
            self._unchecked.append(stamp)
        info, manifest = _describe_read(
            self.store, stamp.key, Path(stamp.path), stamp.last_used
        )
        if info.state == "complete" and manifest is not None:
            learned = row_for(stamp.key, stamp.path, manifest)
            if learned is not None and learned.inode == stamp.inode:
                self.new.append(learned)
                self._valid.append((learned, stamp.last_used))
        return info

    def fold(self, *, complete: bool) -> None:
        """Write a catalog snapshot when the scan had to read many manifests.

        Args:
            complete: Every entry of the cache was described (only then may
                the snapshot replace the files it folds).
        """
        if not complete and len(self.new) < FOLD_AFTER:
            return  # (and a page of `ls` never reads the catalog)
        # The first entries were read from manifests without asking the
        # catalog: only those it did not know are news.
        rows = self.catalog.rows
        new = [
            r
            for r in self.new
            if (known := rows.get(r.key)) is None or known.inode != r.inode
        ]
        if not complete:
            if len(new) >= FOLD_AFTER:
                append_rows(self.store.root, new)
            return
        for stamp in self._unchecked:
            known = rows.get(stamp.key)
            if known is not None and known.inode == stamp.inode:
                self.stale_uses += not rows.use_agrees(known, stamp.last_used)
        files = self.catalog.files
        if (
            len(new) >= FOLD_AFTER
            or self.stale_uses
            or foldable(files) > FOLD_FILES
            or (foldable(files) and rows.worth_folding(self._described))
        ):
            self.snapshot()
            append_checks(self.store.root, new)

    def snapshot(self) -> None:
        """Replace the catalog by the rows of this (complete) scan.

        Each row gets the last use the scan saw, so the index of last uses
        is right again even where folder times were set by hand.
        """
        write_snapshot(
            self.store.root,
            (row._replace(used_ns=round(used * 1e9)) for row, used in self._valid),
            self.catalog.files,
            seen_ns=self.started_ns,
        )


def scan_entries(
    store: CacheStore,
    *,
    on_unsafe: UnsafeHandler | None = None,
    write_catalog: bool = True,
) -> Iterator[EntryInfo]:
    """Yield every entry folder of a cache, in key order.

    Entries removed while the scan runs are skipped, and so are names that
    are not cache keys and links planted where a shard or entry should be
    (those are reported to `on_unsafe`, never followed).

    An entry the catalog knows (same key, same folder inode) costs one
    `lstat`, for its last use; others are described from their manifest and
    added to the catalog when the scan completes (catalog.py).

    Args:
        store: The cache.
        on_unsafe: Told `(path, reason)` about each link skipped.
        write_catalog: Update the catalog with what the scan learned (off
            for a dry run, which writes nothing).
    """
    describer = EntryDescriber(store)
    for stamp in scan_stamps(store, on_unsafe=on_unsafe):
        yield describer.describe(stamp)
    # Reached only when the caller read the whole scan.
    if write_catalog:
        describer.fold(complete=True)


FOLD_AFTER = 64
"""A scan that had to read this many manifests writes a catalog snapshot."""
FOLD_FILES = 16
"""...and so does one that finds more catalog files than this to fold."""


def resolve_key(store: CacheStore, prefix: str) -> str:
    """Return the one key of the cache that starts with `prefix`.

    Args:
        store: The cache.
        prefix: A full key or a unique prefix of at least 2 characters.

    Returns:
        The full key.

    Raises:
        KeyPrefixError: If the prefix is too short, matches no entry, or is
            ambiguous.
    """
    text = prefix.strip().lower()
    if len(text) < 2 or not text.isalnum():
        raise KeyPrefixError(
            f"{prefix!r} is not a key prefix: "
            "give at least 2 letters or digits of a key"
        )
    shard = store.root / text[:2]
    names = (
        [
            e.name
            for e in folder_entries(shard)
            if is_cache_key(e.name) and e.is_dir(follow_symlinks=False)
        ]
        if real_dir(shard)
        else []
    )
    matches = [name for name in names if name.startswith(text)]
    if not matches:
        raise KeyPrefixError(
            f"no entry with a key starting with {prefix!r} in {store.root}"
        )
    if len(matches) > 1:
        shown = ", ".join(m[:16] for m in matches[:5])
        raise KeyPrefixError(
            f"key prefix {prefix!r} is ambiguous: {len(matches)} entries match "
            f"({shown}); give more characters"
        )
    return matches[0]
