"""The catalog: what each entry holds, so maintenance need not re-read every manifest.

An entry never changes after its commit (a replacement is a new folder), so
its tool, size, file count, creation time and run time can be written down
once. Each process appends one tab-separated line per commit to its own
file, `<root>/.catalog/<host>-<pid>-<random>.tsv` (no lock, like the event
files); a scan folds them into a snapshot (`snapshot-<random>.tsv`, written
whole and renamed into place) and removes the files it folded whose writers
have exited.

A line describes a folder, not a key: it carries the entry folder's inode,
and a scan uses it only while the folder at that key still has that inode
(`os.DirEntry.inode()` costs no system call). A folder the catalog does not
know, or knows under another inode (an entry replaced, imported, or made
by an older styxcache), is described from its manifest as before. The
catalog can be deleted at any time; it only makes scans fast.

It also keeps an index of last uses, so a page of `ls` need not `lstat`
every entry: a row carries the folder's modification time when it was
written, and every hit appends a use line (`record_use`). The index is a
hint: `inventory.page_by_last_use` checks the rows it shows against the
folders, and falls back to a full scan when they disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from styxcache._system import atomic_writer, writer_file_name, writer_finished
from styxcache.catalog_rows import (
    USE_TAG,
    CatalogRow,
    CatalogRows,
)
from styxcache.manifest import Manifest, plain

__all__ = [
    "CATALOG_DIR",
    "CatalogRow",
    "CatalogRows",
    "LoadedCatalog",
    "append_checks",
    "append_rows",
    "checks_of",
    "foldable",
    "load_catalog",
    "manifest_stamp",
    "record_commit",
    "record_use",
    "row_for",
    "row_from",
    "write_snapshot",
]

_log = logging.getLogger("styxcache.catalog")

CATALOG_DIR = ".catalog"
_SUMMARY_SUFFIX = ".tsv"
_CHECKS_SUFFIX = ".chk"
_RESERVED = (
    ".styxcache.manifest.json",
    ".styxcache.stdout.gz",
    ".styxcache.stderr.gz",
    ".styxcache.done",
)
"""The files of an entry that styxcache writes (as `CacheStore.RESERVED`)."""


def _writable_tool(tool: str) -> bool:
    return "\t" not in tool and "\n" not in tool and "\r" not in tool


ROTATE_BYTES = 8 << 20
"""A process's catalog file is closed past this size (a long-lived worker
appends a line per hit), so that the next snapshot can fold it."""
_CLOSED = "closed-"
"""The name prefix of a file its (live) writer has closed: foldable."""


class _File:
    """One open catalog file of this process."""

    __slots__ = ("fd", "path", "written")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path, self.written = fd, path, 0


class _Writer:
    """This process's catalog files in one cache (reopened after a fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[tuple[Path, str], _File] = {}
        self.broken: set[Path] = set()
        # A child writes its own files: a file's name says whose it is.
        os.register_at_fork(after_in_child=self.files.clear)

    def append(self, root: Path, text: str, suffix: str) -> None:
        data = text.encode("utf-8")
        # Under the lock: a file closed by another thread is never written.
        # This runs on every hit: little else here.
        with self.lock:
            try:
                file = self.files.get((root, suffix)) or self._open(root, suffix)
                if file is None:
                    return
                # O_APPEND and one write(2): readers and other processes
                # see whole lines.
                os.write(file.fd, data)
                file.written += len(data)
                if file.written > ROTATE_BYTES:
                    self._close(root, suffix, file)
            except OSError as exc:
                # Only scans get slower without the catalog: never fail a run.
                self.broken.add(root)
                self.files.pop((root, suffix), None)
                _log.debug("cannot write the catalog of %s: %s", root, exc)

    def _open(self, root: Path, suffix: str) -> _File | None:
        """Open this process's file (the caller holds the lock)."""
        if root in self.broken:
            return None
        folder = root / CATALOG_DIR
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        if not os.path.isdir(folder) or os.path.islink(folder):
            raise OSError(f"{folder} is not a folder")
        path = folder / writer_file_name(suffix)
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW,
            0o666,
        )
        file = self.files[(root, suffix)] = _File(fd, path)
        return file

    def _close(self, root: Path, suffix: str, file: _File) -> None:
        """Close a full file and name it foldable (the caller holds the lock)."""
        del self.files[(root, suffix)]
        with contextlib.suppress(OSError):
            os.rename(file.path, file.path.with_name(_CLOSED + file.path.name))
        os.close(file.fd)


_WRITER = _Writer()


def append_rows(root: Path, rows: Iterable[CatalogRow]) -> None:
    """Append rows to this process's catalog files of a cache; never raises.

    Args:
        root: The cache directory.
        rows: The rows (entries just committed, or just described).
    """
    kept = [row for row in rows if _writable_tool(row.tool)]
    text = "".join(row.to_line() for row in kept)
    if text:
        _WRITER.append(root, text, _SUMMARY_SUFFIX)
    checks = "".join(row.checks_line() for row in kept)
    if checks:
        _WRITER.append(root, checks, _CHECKS_SUFFIX)


def append_checks(root: Path, rows: Iterable[CatalogRow]) -> None:
    """Append only what `verify` needs of rows; never raises.

    Args:
        root: The cache directory.
        rows: The rows.
    """
    checks = "".join(row.checks_line() for row in rows if _writable_tool(row.tool))
    if checks:
        _WRITER.append(root, checks, _CHECKS_SUFFIX)


@dataclasses.dataclass
class LoadedCatalog:
    """The rows of a cache's catalog and the files they came from.

    Attributes:
        rows: The newest row per key.
        files: The catalog files read (names inside `.catalog/`).
    """

    rows: CatalogRows
    files: list[str]


def load_catalog(root: Path, *, checks: bool = False) -> LoadedCatalog:
    """Read the catalog files of a cache (snapshots first, then appends).

    Args:
        root: The cache directory.
        checks: Also read what `verify` needs (much larger).

    Returns:
        The rows and the files read; empty when there is no catalog (or it
        is a planted link, which is never followed).
    """
    folder = root / CATALOG_DIR
    rows = CatalogRows()
    suffixes = (_SUMMARY_SUFFIX, _CHECKS_SUFFIX) if checks else (_SUMMARY_SUFFIX,)
    try:
        if os.path.islink(folder):
            return LoadedCatalog(rows, [])
        names = sorted(
            (n for n in os.listdir(folder) if n.endswith(suffixes)),
            key=lambda n: (not n.startswith("snapshot-"), n),
        )
    except OSError:
        return LoadedCatalog(rows, [])
    after = ""
    for name in names:
        try:
            with open(
                os.path.join(folder, name),
                encoding="utf-8",
                errors="replace",
                opener=_no_follow,
            ) as handle:
                text = handle.read()
                written = os.fstat(handle.fileno()).st_mtime_ns
        except OSError:
            continue
        is_checks = name.endswith(_CHECKS_SUFFIX)
        if not name.startswith("snapshot-"):
            rows.add_text(text, checks=is_checks, after=after)
            continue
        rows.add_text(text, checks=is_checks)
        if not is_checks:
            # Snapshots come first: after them, `after` is the oldest's time.
            after = min(after or f"{written:020d}", f"{written:020d}")
    return LoadedCatalog(rows, names)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | _NOFOLLOW)


def write_snapshot(
    root: Path,
    rows: Iterable[CatalogRow],
    folded: list[str],
    *,
    checks: bool = False,
    seen_ns: int | None = None,
) -> None:
    """Replace the catalog's files by one snapshot of `rows`; never raises.

    Only files that were read (`folded`) are removed: snapshots, and the
    append files of processes that have exited. A live process keeps its
    file; rows it appends later are read by the next scan.

    Args:
        root: The cache directory.
        rows: Every row still valid (entries present with that inode).
        folded: The files the rows were read from (`LoadedCatalog.files`).
        checks: Write (and fold) the `.chk` files instead of the summaries.
        seen_ns: When the scan the rows come from started (nanoseconds). It
            becomes the snapshot's modification time, which `load_catalog`
            takes as the time of the last uses the snapshot knows: uses
            recorded after it (even while the scan ran) are kept.
    """
    folder = root / CATALOG_DIR
    suffix = _CHECKS_SUFFIX if checks else _SUMMARY_SUFFIX
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        if os.path.islink(folder) or not os.path.isdir(folder):
            return
        # No fsync: a snapshot lost in a crash is only a slower next scan.
        name = f"snapshot-{uuid.uuid4().hex[:12]}{suffix}"
        with atomic_writer(folder / name, fsync=False) as handle:
            handle.writelines(
                row.checks_line() if checks else row.to_line()
                for row in rows
                if _writable_tool(row.tool)
            )
            if seen_ns is not None:
                handle.flush()
                os.utime(handle.fileno(), ns=(seen_ns, seen_ns))
    except OSError as exc:  # a read-only cache: scans stay correct, only slower
        _log.debug("cannot write a catalog snapshot in %s: %s", root, exc)
        return
    for name in folded:
        if not name.endswith(suffix):
            continue
        if name.startswith(("snapshot-", _CLOSED)) or writer_finished(name):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)


def foldable(files: list[str], *, checks: bool = False) -> int:
    """Count the catalog files a snapshot would fold away (see `write_snapshot`).

    Args:
        files: `LoadedCatalog.files`.
        checks: Count `.chk` files instead of summaries.
    """
    suffix = _CHECKS_SUFFIX if checks else _SUMMARY_SUFFIX
    return sum(
        1
        for n in files
        if n.endswith(suffix)
        and (n.startswith(("snapshot-", _CLOSED)) or writer_finished(n))
    )


MAX_CHECKED_OUTPUTS = 256
"""Entries with more outputs keep no `checks` (verify reads their manifest)."""


def manifest_stamp(path: str | os.PathLike[str]) -> str:
    """Return a manifest file's `inode:size:mtime_ns`, or "-".

    Args:
        path: The manifest file.
    """
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    # Not the ctime: `export` hard-links every file (a new link count is a
    # new ctime), and verify would then read every manifest again.
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def checks_of(manifest: Manifest) -> str:
    """Return the manifest without its key payload, as compact JSON, or "-".

    Args:
        manifest: The manifest.
    """
    if len(manifest.outputs) > MAX_CHECKED_OUTPUTS:
        return "-"
    data = {f.name: plain(getattr(manifest, f.name)) for f in _MANIFEST_FIELDS}
    data["payload"], data["fingerprint_parts"] = {}, {}
    # Compact JSON escapes tabs and newlines: the line stays one line.
    return json.dumps(data, separators=(",", ":"))


_MANIFEST_FIELDS = dataclasses.fields(Manifest)


def row_for(
    key: str, entry: str | os.PathLike[str], manifest: Manifest
) -> CatalogRow | None:
    """Describe a committed entry folder for the catalog; None if it is gone.

    Args:
        key: The entry's key.
        entry: Its folder.
        manifest: Its manifest (as read from, or written to, the folder).
    """
    try:
        st = os.lstat(entry)
    except OSError:
        return None
    extra = 0
    for name in _RESERVED:
        with contextlib.suppress(OSError):
            extra += os.lstat(os.path.join(entry, name)).st_size
    stamp = manifest_stamp(os.path.join(entry, _RESERVED[0]))
    return row_from(key, st, manifest, extra, stamp)


def row_from(
    key: str, folder: os.stat_result, manifest: Manifest, extra: int, stamp: str
) -> CatalogRow:
    """`row_for` from facts the caller already has (an import knows them all).

    Args:
        key: The entry's key.
        folder: The entry folder's `lstat`, taken after its last-use time was set.
        manifest: Its manifest.
        extra: Bytes of styxcache's own files in the entry (manifest, logs,
            done marker).
        stamp: The manifest file's `manifest_stamp`.
    """
    return CatalogRow(
        key=key,
        inode=folder.st_ino,
        tool=manifest.tool,
        size=manifest.total_size + extra,
        files=len(manifest.outputs),
        created=manifest.created,
        duration_s=manifest.duration_s,
        used_ns=folder.st_mtime_ns,
        stamp=stamp,
        checks=checks_of(manifest) if manifest.key == key else "-",
    )


def record_commit(root: Path, key: str, entry: Path, manifest: Manifest) -> None:
    """Catalog an entry just committed; never raises.

    Args:
        root: The cache directory.
        key: The entry's key.
        entry: Its folder (as `CacheStore.commit` returned it).
        manifest: Its manifest.
    """
    try:
        row = row_for(key, entry, manifest)
    except (OSError, TypeError, ValueError) as exc:
        _log.debug("cannot catalog %s: %s", key[:12], exc)
        return
    if row is not None:
        append_rows(root, [row])


def record_use(root: Path, key: str, when_ns: int | None = None) -> None:
    """Note a use of an entry in the index of last uses; never raises.

    Called right after the entry folder's time was bumped, so the time noted
    is within moments of the folder's (a few milliseconds: the kernel's
    coarse clock); `inventory.page_by_last_use` allows for that.

    Args:
        root: The cache directory.
        key: The entry's key.
        when_ns: The use's time in nanoseconds (default: now).
    """
    when = time.time_ns() if when_ns is None else when_ns
    _WRITER.append(root, f"{USE_TAG}\t{key}\t{when:020d}\n", _SUMMARY_SUFFIX)
