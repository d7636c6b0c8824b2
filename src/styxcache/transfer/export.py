"""Export: chosen complete entries of a cache, written as one `.tar.gz`.

The archive holds the entries under `entries/<key[:2]>/<key>/`, exactly as
in a cache, and last `styxcache-export.json` (what is inside). Every file of
an entry is opened before any of it is written to the archive, and the
entry is checked whole against its manifest (each output there with its
size or link target, no file the manifest does not list, the folder still
the one first seen), so a concurrent `gc` cannot tear it and a damaged
entry is left out (with why) instead of making the import fail.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from styxcache._system import atomic_writer
from styxcache.inventory import EntryInfo, scan_entries
from styxcache.manifest import Manifest, ManifestError, OutputRecord
from styxcache.store import CacheStore
from styxcache.tarstream import TarMember
from styxcache.tarwriter import TarWriter
from styxcache.transfer.common import (
    ENTRIES_DIR,
    EXPORT_FORMAT,
    INDEX_NAME,
    MAX_SMALL_MEMBER,
    ExportReport,
    TransferError,
    link_stays_inside,
)

__all__ = ["export_entries"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Never through a link; O_NONBLOCK: a fifo swapped in cannot hang the export."""

_BY_NAME = operator.attrgetter("name")


def export_entries(
    store: CacheStore,
    out: Path,
    *,
    used_since: float | None = None,
    select: Callable[[EntryInfo], bool] | None = None,
    allow_empty: bool = True,
) -> ExportReport:
    """Write the chosen complete entries of a cache to a `.tar.gz`.

    The archive is written under a temporary name and renamed when complete,
    so a failed export leaves nothing behind.

    Args:
        store: The cache.
        out: The archive to write (replaced if it exists).
        used_since: Only entries used at or after this Unix time.
        select: Only entries for which this returns True.
        allow_empty: With False, refuse (and write nothing) when no entry
            matches, instead of writing an archive without entries.

    Returns:
        What was written.

    Raises:
        TransferError: If the archive's folder does not exist, or nothing
            matched and `allow_empty` is False.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise TransferError(f"cannot write {out}: folder {out.parent} does not exist")
    report = ExportReport(out)
    chosen = [
        e
        for e in scan_entries(store)
        if e.state == "complete"
        and (used_since is None or e.last_used >= used_since)
        and (select is None or select(e))
    ]
    if not chosen and not allow_empty:
        raise TransferError(
            f"nothing to export: no complete entry of {store.root} matches; "
            f"{out} was not written"
        )
    # Written under a temporary name and renamed when whole (flushed first:
    # the archive is often copied away at once, as a CI cache).
    with atomic_writer(out, "wb") as handle:
        # Level 6, gzip's own default: level 9 costs twice the time for a
        # few percent on cache entries.
        writer = TarWriter(handle, level=6)
        try:
            report.entries = _write_entries(store, writer, chosen, report)
            _write_index(writer, report.entries)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return report


def _write_index(writer: TarWriter, written: list[EntryInfo]) -> None:
    index = {
        "format": EXPORT_FORMAT,
        "created": time.time(),
        "entries": [{"key": e.key, "tool": e.tool, "size": e.size} for e in written],
    }
    # Compact: json's indenting encoder is pure Python (0.1 s per 10,000 entries).
    data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    writer.add(TarMember(INDEX_NAME, "file", len(data), 0o644, time.time()), data)


def _write_entries(
    store: CacheStore,
    writer: TarWriter,
    chosen: list[EntryInfo],
    report: ExportReport,
) -> list[EntryInfo]:
    written: list[EntryInfo] = []
    for info in chosen:
        entry = os.fspath(store.entry_dir(info.key))
        opened = _OpenedEntry(entry, f"{ENTRIES_DIR}/{info.key[:2]}/{info.key}")
        try:
            problem = opened.open() or opened.check(info.key)
            if problem:
                report.skipped[info.key] = problem
                continue
            for member, fd in opened.members:
                if member.name == opened.manifest_member:
                    writer.add(member, opened.manifest_text)
                elif fd >= 0:
                    writer.add_file(member, fd)
                else:
                    writer.add(member)
        finally:
            opened.close()
        written.append(info)
    return written


@dataclasses.dataclass
class _OpenedEntry:
    """An entry's tree as archive members, every file held open.

    Members come from `lstat`/`fstat` records (no owner look-ups, links
    never followed).
    """

    path: str
    name: str
    members: list[tuple[TarMember, int]] = dataclasses.field(default_factory=list)
    """Each member with its open file (-1 for folders and links)."""
    inside: dict[str, TarMember] = dataclasses.field(default_factory=dict)
    """Files and links by their path inside the entry."""
    folder: int = -1
    manifest_fd: int = -1
    manifest_member: str = ""
    manifest_text: bytes = b""

    def open(self) -> str:
        """Open the whole tree; return why it cannot be exported, or ""."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return "removed during export"
        if not stat.S_ISDIR(st.st_mode):
            return "replaced by a link or file: not followed"
        self.folder = st.st_ino
        try:
            return self._open_folder(self.path, self.name, "", st)
        except OSError:
            return "changed during export"

    def _open_folder(
        self, path: str, name: str, inside: str, st: os.stat_result
    ) -> str:
        self._add(TarMember(name, "dir", 0, st.st_mode & 0o777, int(st.st_mtime)), -1)
        with os.scandir(path) as listing:
            items = sorted(listing, key=_BY_NAME)
        folders: list[tuple[os.DirEntry[str], str, str]] = []
        for item in items:
            child = f"{name}/{item.name}"
            where = f"{inside}/{item.name}" if inside else item.name
            if item.is_dir(follow_symlinks=False):
                folders.append((item, child, where))
                continue
            problem = self._open_item(item, child, where)
            if problem:
                return problem
        for item, child, where in folders:
            problem = self._open_folder(
                item.path, child, where, item.stat(follow_symlinks=False)
            )
            if problem:
                return problem
        return ""

    def _open_item(self, item: os.DirEntry[str], name: str, inside: str) -> str:
        if item.is_symlink():
            st = item.stat(follow_symlinks=False)
            link = os.readlink(item.path)
            member = TarMember(name, "symlink", 0, 0o777, int(st.st_mtime), link)
            self._add(member, -1, inside)
            return ""
        if not item.is_file(follow_symlinks=False):
            return f"{inside} is a device or fifo"  # never part of an entry
        fd = os.open(item.path, _OPEN_FLAGS)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return f"{inside} is a device or fifo"  # never part of an entry
        mode = st.st_mode & 0o777
        self._add(
            TarMember(name, "file", st.st_size, mode, int(st.st_mtime)), fd, inside
        )
        return ""

    def _add(self, member: TarMember, fd: int, inside: str = "") -> None:
        self.members.append((member, fd))
        if inside:
            self.inside[inside] = member
            if inside == CacheStore.MANIFEST:
                self.manifest_fd = fd

    def check(self, key: str) -> str:
        """Check the opened tree against its manifest; return why not, or ""."""
        files = self.inside
        found = files.get(CacheStore.MANIFEST)
        if found is None or not found.isfile() or found.size > MAX_SMALL_MEMBER:
            return "manifest missing"
        # Read once: the bytes checked are the bytes archived.
        self.manifest_member = found.name
        self.manifest_text = os.pread(self.manifest_fd, found.size, 0)
        try:
            manifest = Manifest.from_json(self.manifest_text.decode("utf-8"))
        except (ManifestError, UnicodeDecodeError) as exc:
            return f"unreadable manifest: {exc}"
        if len(self.manifest_text) != found.size:
            return "changed during export"
        problem = _entry_problem(key, manifest, files)
        if problem:
            return problem
        try:
            # The entry must still be the folder first seen, whole.
            same = os.lstat(self.path).st_ino == self.folder
        except OSError:
            same = False
        return "" if same else "changed during export"

    def close(self) -> None:
        """Close every file held open."""
        for _, fd in self.members:
            if fd >= 0:
                os.close(fd)
        self.members = []


def _entry_problem(key: str, manifest: Manifest, files: dict[str, TarMember]) -> str:
    """Why an opened entry is not a whole, valid entry ("" when it is)."""
    if manifest.key != key:
        return f"manifest is for key {manifest.key}"
    if CacheStore.DONE_MARKER not in files:
        return "done marker missing"
    if CacheStore.UNCOMMITTED in files:
        return "is an uncommitted run"
    for record in manifest.outputs:
        problem = _output_problem(record, files.get(record.path))
        if problem:
            return problem
    for log, lines, size in (
        (CacheStore.STDOUT_LOG, manifest.stdout_lines, manifest.stdout_size),
        (CacheStore.STDERR_LOG, manifest.stderr_lines, manifest.stderr_size),
    ):
        member = files.get(log)
        if lines and (member is None or (size and member.size != size)):
            return f"log {log} is missing or has changed size"
    listed = {record.path for record in manifest.outputs}
    unlisted = [p for p in files if p not in listed and p not in CacheStore.RESERVED]
    return f"file {unlisted[0]} is not listed in its manifest" if unlisted else ""


def _output_problem(record: OutputRecord, member: TarMember | None) -> str:
    if member is None:
        return f"output {record.path} is missing"
    if record.link is not None:
        if not member.issym() or member.linkname != record.link:
            return f"symlink {record.path} changed"
        if not link_stays_inside(record.path, record.link):
            return f"symlink {record.path} points outside the entry"
    elif not member.isfile() or member.size != record.size:
        return f"output {record.path} has changed size or type"
    return ""
