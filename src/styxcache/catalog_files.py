"""The catalog's files: this process's append files, and the snapshots.

Each process appends to its own files in `<root>/.catalog/` (one for
summaries and uses, `.tsv`, one for what `verify` needs, `.chk`), closed
and renamed `closed-...` past `ROTATE_BYTES`; a scan replaces the files it
folded by one snapshot. Reading them is catalog.py's `load_catalog`.

Files are made, renamed and removed relative to the `.catalog` folder
opened without following a link (`dir_fd=`): a link swapped in for the
folder cannot redirect them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from styxcache._system import writer_file_name, writer_finished
from styxcache.catalog_rows import USE_TAG, CatalogRow

__all__ = [
    "CATALOG_DIR",
    "CHECKS_SUFFIX",
    "NOFOLLOW",
    "ROTATE_BYTES",
    "SUMMARY_SUFFIX",
    "append_checks",
    "append_rows",
    "foldable",
    "record_use",
    "write_snapshot",
]

_log = logging.getLogger("styxcache.catalog_files")

CATALOG_DIR = ".catalog"
SUMMARY_SUFFIX = ".tsv"
CHECKS_SUFFIX = ".chk"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _writable_tool(tool: str) -> bool:
    return "\t" not in tool and "\n" not in tool and "\r" not in tool


ROTATE_BYTES = 8 << 20
"""A process's catalog file is closed past this size (a long-lived worker
appends a line per hit), so that the next snapshot can fold it."""
_CLOSED = "closed-"
"""The name prefix of a file its (live) writer has closed: foldable."""


class _File:
    """One open catalog file of this process, and its open `.catalog` folder."""

    __slots__ = ("fd", "folder", "name", "written")

    def __init__(self, fd: int, folder: int, name: str) -> None:
        self.fd, self.folder, self.name, self.written = fd, folder, name, 0

    def close(self) -> None:
        for fd in (self.fd, self.folder):
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_folder(root: Path) -> int:
    """Open `<root>/.catalog` (made if missing), never through a link.

    Files inside are then made, renamed and removed relative to this
    descriptor (`dir_fd=`): a link swapped in for the folder after the
    check cannot redirect them.

    Raises:
        OSError: It cannot be made or opened, or it is a link.
    """
    folder = root / CATALOG_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder)
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | NOFOLLOW)


class _Writer:
    """This process's catalog files in one cache (reopened after a fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[tuple[Path, str], _File] = {}
        self.broken: set[Path] = set()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """Start afresh in a forked child.

        A child writes its own files (a file's name says whose it is), and
        a lock held by another thread at the fork would stay held forever.
        """
        self.lock = threading.Lock()
        for file in self.files.values():
            file.close()  # the child's copies only
        self.files.clear()

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
                dropped = self.files.pop((root, suffix), None)
                if dropped is not None:
                    dropped.close()
                _log.debug("cannot write the catalog of %s: %s", root, exc)

    def _open(self, root: Path, suffix: str) -> _File | None:
        """Open this process's file (the caller holds the lock)."""
        if root in self.broken:
            return None
        folder = _open_folder(root)
        name = writer_file_name(suffix)
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | NOFOLLOW,
                0o666,
                dir_fd=folder,
            )
        except OSError:
            os.close(folder)
            raise
        file = self.files[(root, suffix)] = _File(fd, folder, name)
        return file

    def _close(self, root: Path, suffix: str, file: _File) -> None:
        """Close a full file and name it foldable (the caller holds the lock)."""
        del self.files[(root, suffix)]
        with contextlib.suppress(OSError):
            os.rename(
                file.name,
                _CLOSED + file.name,
                src_dir_fd=file.folder,
                dst_dir_fd=file.folder,
            )
        file.close()


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
        _WRITER.append(root, text, SUMMARY_SUFFIX)
    checks = "".join(row.checks_line() for row in kept)
    if checks:
        _WRITER.append(root, checks, CHECKS_SUFFIX)


def append_checks(root: Path, rows: Iterable[CatalogRow]) -> None:
    """Append only what `verify` needs of rows; never raises.

    Args:
        root: The cache directory.
        rows: The rows.
    """
    checks = "".join(row.checks_line() for row in rows if _writable_tool(row.tool))
    if checks:
        _WRITER.append(root, checks, CHECKS_SUFFIX)


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
    suffix = CHECKS_SUFFIX if checks else SUMMARY_SUFFIX
    lines = (
        row.checks_line() if checks else row.to_line()
        for row in rows
        if _writable_tool(row.tool)
    )
    try:
        folder = _open_folder(root)
    except OSError as exc:  # a read-only cache, or a planted link
        _log.debug("cannot write a catalog snapshot in %s: %s", root, exc)
        return
    try:
        _write_whole(
            folder, f"snapshot-{uuid.uuid4().hex[:12]}{suffix}", lines, seen_ns
        )
        for name in folded:
            if not name.endswith(suffix):
                continue
            if name.startswith(("snapshot-", _CLOSED)) or writer_finished(name):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=folder)
    except OSError as exc:  # scans stay correct, only slower
        _log.debug("cannot write a catalog snapshot in %s: %s", root, exc)
    finally:
        os.close(folder)


def _write_whole(
    folder: int, name: str, lines: Iterable[str], mtime_ns: int | None
) -> None:
    """Write a file inside an open folder that appears whole or not at all.

    As `atomic_writer`, relative to the folder's descriptor. No fsync: a
    snapshot lost in a crash is only a slower next scan.
    """
    temp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | NOFOLLOW
    fd = os.open(temp, flags, 0o666, dir_fd=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
            if mtime_ns is not None:
                handle.flush()
                os.utime(handle.fileno(), ns=(mtime_ns, mtime_ns))
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise


def foldable(files: list[str], *, checks: bool = False) -> int:
    """Count the catalog files a snapshot would fold away (see `write_snapshot`).

    Args:
        files: `LoadedCatalog.files`.
        checks: Count `.chk` files instead of summaries.
    """
    suffix = CHECKS_SUFFIX if checks else SUMMARY_SUFFIX
    return sum(
        1
        for n in files
        if n.endswith(suffix)
        and (n.startswith(("snapshot-", _CLOSED)) or writer_finished(n))
    )


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
    _WRITER.append(root, f"{USE_TAG}\t{key}\t{when:020d}\n", SUMMARY_SUFFIX)
