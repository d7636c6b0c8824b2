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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, TextIO

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
    "row_for",
    "write_snapshot",
]

_log = logging.getLogger("styxcache.catalog")

CATALOG_DIR = ".catalog"
_FORMAT = "c3"
_CHECKS = "k3"
_SUMMARY_SUFFIX = ".tsv"
_CHECKS_SUFFIX = ".chk"
_HOST = socket.gethostname()
_RESERVED = (
    ".styxcache.manifest.json",
    ".styxcache.stdout.gz",
    ".styxcache.stderr.gz",
    ".styxcache.done",
)
"""The files of an entry that styxcache writes (as `CacheStore.RESERVED`)."""


class CatalogRow(NamedTuple):
    """What the catalog knows about one entry folder.

    Attributes:
        key: The cache key.
        inode: The entry folder's inode when the row was written.
        tool: `package/id`.
        size: Bytes the entry occupies (outputs, manifest and logs).
        files: Number of output files.
        created: Unix time of the commit.
        duration_s: How long the tool ran.
        stamp: The manifest file's `inode:size:mtime_ns` when the row was
            written ("-" when unknown). A manifest is written once and
            replaced only by a rename, which gives a new inode.
        checks: The manifest without its key payload, as compact JSON ("-"
            when unknown or too large): what `verify` needs, valid while
            the manifest still has `stamp`.
    """

    key: str
    inode: int
    tool: str
    size: int
    files: int
    created: float
    duration_s: float
    stamp: str = "-"
    checks: str = "-"

    def to_line(self) -> str:
        """Return the summary as one tab-separated line (`.tsv` files)."""
        return (
            f"{_FORMAT}\t{self.key}\t{self.inode}\t{self.size}\t{self.files}\t"
            f"{self.created!r}\t{self.duration_s!r}\t{self.tool}\n"
        )

    def checks_line(self) -> str:
        """Return what verify needs as one line (`.chk` files), or ""."""
        if "-" in (self.stamp, self.checks):
            return ""
        return f"{_CHECKS}\t{self.key}\t{self.inode}\t{self.stamp}\t{self.checks}\n"

    @classmethod
    def from_line(cls, line: str) -> CatalogRow | None:
        """Parse a summary line; None for a torn, foreign or damaged one."""
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 8 or parts[0] != _FORMAT:
            return None
        try:
            return cls(
                parts[1],
                int(parts[2]),
                parts[7],
                int(parts[3]),
                int(parts[4]),
                float(parts[5]),
                float(parts[6]),
            )
        except ValueError:
            return None


def _writable_tool(tool: str) -> bool:
    return "\t" not in tool and "\n" not in tool and "\r" not in tool


class _Writer:
    """This process's catalog files in one cache (reopened after a fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: dict[tuple[Path, str], tuple[int, TextIO]] = {}
        self.broken: set[Path] = set()

    def append(self, root: Path, text: str, suffix: str) -> None:
        with self.lock:
            if root in self.broken:
                return
            try:
                known = self.handles.get((root, suffix))
                if known is None or known[0] != os.getpid():
                    folder = root / CATALOG_DIR
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(folder)
                    if not os.path.isdir(folder) or os.path.islink(folder):
                        raise OSError(f"{folder} is not a folder")
                    name = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
                    handle = open(  # noqa: SIM115 - kept open for the process
                        folder / name, "a", encoding="utf-8", opener=_no_follow
                    )
                    known = (os.getpid(), handle)
                    self.handles[(root, suffix)] = known
                known[1].write(text)
                known[1].flush()  # one write(2): readers see whole lines
            except OSError as exc:
                # Only scans get slower without the catalog: never fail a run.
                self.broken.add(root)
                _log.debug("cannot write the catalog of %s: %s", root, exc)


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


class CatalogRows:
    """The newest line per key, parsed only when asked for.

    A scan that shows 50 rows of 100,000 parses 50 lines.
    """

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}
        self._checks: dict[str, str] = {}

    def add_line(self, line: str) -> None:
        """Keep a line as the newest for its key.

        A torn or foreign line is kept too: `get` refuses it.
        """
        if line.startswith(_CHECKS):
            self._checks[line[3:67]] = line
        else:
            self._lines[line[3:67]] = line

    def add_text(self, text: str, *, checks: bool) -> None:
        """Keep every line of a catalog file (later lines win).

        Args:
            text: The file's content.
            checks: It is a `.chk` file.
        """
        # One dict comprehension: a method call per line cost 100 ms per
        # 100,000 entries.
        head = _CHECKS if checks else _FORMAT
        # The last piece is "" or a line still being written: never used.
        pieces = text.split("\n")[:-1]
        found = {line[3:67]: line for line in pieces if line.startswith(head)}
        (self._checks if checks else self._lines).update(found)

    def get(self, key: str) -> CatalogRow | None:
        """Return the row of a key (with its checks, if they were loaded)."""
        line = self._lines.get(key)
        row = None if line is None else CatalogRow.from_line(line)
        checks = self._checks.get(key)
        if row is None or checks is None:
            return row
        parts = checks.rstrip("\n").split("\t")
        if len(parts) != 5 or parts[2] != str(row.inode):
            return row
        return row._replace(stamp=parts[3], checks=parts[4])

    def __len__(self) -> int:
        return len(self._lines)


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
    for name in names:
        try:
            with open(
                os.path.join(folder, name),
                encoding="utf-8",
                errors="replace",
                opener=_no_follow,
            ) as handle:
                text = handle.read()
        except OSError:
            continue
        rows.add_text(text, checks=name.endswith(_CHECKS_SUFFIX))
    return LoadedCatalog(rows, names)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def _writer_finished(name: str) -> bool:
    parts = name.rsplit(".", 1)[0].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False  # another host's process: only that host can tell
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_snapshot(
    root: Path, rows: Iterable[CatalogRow], folded: list[str], *, checks: bool = False
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
    """
    folder = root / CATALOG_DIR
    suffix = _CHECKS_SUFFIX if checks else _SUMMARY_SUFFIX
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        if os.path.islink(folder) or not os.path.isdir(folder):
            return
        token = uuid.uuid4().hex[:12]
        temp = folder / f".snapshot-{token}.partial"
        with open(temp, "w", encoding="utf-8", opener=_no_follow) as handle:
            handle.writelines(
                row.checks_line() if checks else row.to_line()
                for row in rows
                if _writable_tool(row.tool)
            )
        os.replace(temp, folder / f"snapshot-{token}{suffix}")
    except OSError as exc:  # a read-only cache: scans stay correct, only slower
        _log.debug("cannot write a catalog snapshot in %s: %s", root, exc)
        return
    for name in folded:
        if not name.endswith(suffix):
            continue
        if name.startswith("snapshot-") or _writer_finished(name):
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
        if n.endswith(suffix) and (n.startswith("snapshot-") or _writer_finished(n))
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
        inode = os.lstat(entry).st_ino
    except OSError:
        return None
    extra = 0
    for name in _RESERVED:
        with contextlib.suppress(OSError):
            extra += os.lstat(os.path.join(entry, name)).st_size
    return CatalogRow(
        key=key,
        inode=inode,
        tool=manifest.tool,
        size=manifest.total_size + extra,
        files=len(manifest.outputs),
        created=manifest.created,
        duration_s=manifest.duration_s,
        stamp=manifest_stamp(os.path.join(entry, _RESERVED[0])),
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
