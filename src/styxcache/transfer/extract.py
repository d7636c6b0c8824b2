"""Import, second step: write a checked archive into a private folder, verify, commit.

The archive is read a second time and written by our own code (not
`extractall`, so it does not depend on tarfile's extraction filters): every
file created with `O_EXCL | O_NOFOLLOW` in a private folder inside the
cache directory, never through a link, with the modes and times a sealed
entry has. Each file's blake3 digest is computed from the bytes as they are
written, and every entry is compared with its manifest (every output's
digest, every log's line count); only when all of them match are the
entries committed, one rename each. A good entry already in the cache is
never replaced.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import stat
import uuid
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

from blake3 import blake3

from styxcache.catalog import stamp_of
from styxcache.manifest import Manifest
from styxcache.store import CacheStore, remove_tree
from styxcache.tarstream import Resume, TarReader, TarStreamError, resume_point
from styxcache.transfer.check import (
    Checked,
    Member,
    Plan,
    check_entries,
    plan_import,
)
from styxcache.transfer.commit import Committed, Committer, commit_entries, report
from styxcache.transfer.common import ImportReport, TransferError
from styxcache.transfer.parallel import crew, split, worker_count
from styxcache.walk import housekeeping_dir, real_dir

__all__ = ["import_entries"]

_log = logging.getLogger("styxcache.transfer")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ONE_READ = 1 << 20
"""Files up to this size are read from the archive in one piece."""
_SEALED_FILE = 0o555
"""File mode bits an imported entry keeps: read-only for everyone, as
`trust.seal_entry(read_only=True)` leaves a committed run (no setuid/setgid/sticky)."""
_SEALED_DIR = 0o755
"""Folder bits kept: no group or others write, as `trust.seal_entry` leaves them."""


def import_entries(
    store: CacheStore,
    source: Path,
    *,
    on_verified: Callable[[str], None] | None = None,
    max_bytes: int | None = None,
    workers: int | None = None,
) -> ImportReport:
    """Import the entries of an export into a cache, after verifying all of them.

    Before anything is written, every member is checked (type, path, size
    against `max_bytes`, every link resolved through the others), and every
    entry's manifest: its key payload must hash to the entry's key, and it
    must list exactly the files the entry holds. Then the archive is
    extracted by our own code into a private staging folder, every file's
    content is compared with its manifest digest, and only then are entries
    committed. A rejected archive leaves nothing behind.

    Args:
        store: The cache to import into (created if needed).
        source: The archive made by `export_entries`.
        on_verified: Called with each key once its content is verified.
        max_bytes: Refuse an archive that unpacks to more than this
            (default: the free space of the cache's filesystem).
        workers: Processes that check the manifests of, write, verify and
            commit the entries, a slice each, in step, once the first pass
            over the archive is done (default: one per CPU from
            `parallel.PARALLEL_FROM` entries on; 1: all in this process).

    Returns:
        What was imported and what was already there.

    Raises:
        TransferError: If the archive is unsafe, not an export, or holds a
            damaged or forged entry.
    """
    source = Path(source)
    limit = _free_space(store.root) if max_bytes is None else max_bytes
    with _open_archive(source) as raw, _no_cycle_collection():
        reader = TarReader(raw)
        try:
            plan = plan_import(reader, source, limit)
        except TarStreamError as exc:
            if not reader.count:
                raise TransferError(
                    f"{source} is not a readable tar archive: {exc}"
                ) from None
            raise TransferError(f"{source} is damaged: {exc}") from exc
        staging_root = housekeeping_dir(store.root, store.STAGING_DIR, create=True)
        if staging_root is None:
            raise TransferError(
                f"{store.root / store.STAGING_DIR} is not a folder (a symlink?); "
                "refusing to extract through it"
            )
        temp = staging_root / f"import-{uuid.uuid4().hex[:12]}"
        temp.mkdir(mode=0o700)
        try:
            readers = stat.S_IMODE(os.stat(staging_root).st_mode) & 0o055
            job = _Job(store, source, raw.fileno(), plan, temp, readers, reader.marks)
            count = worker_count(workers, len(plan.keys))
            weights = collections.Counter(item.key for item in plan.members)
            slices = [_Slice(keys) for keys in split(plan.keys, weights, count)]
            with crew(job, slices) as team:
                # In step: every slice checked before any writes, every
                # slice verified before any commits.
                team.step(_check_slice)
                problems = team.step(_extract_slice)
                _check_verified(plan, slices, problems, on_verified)
                committed = team.step(_commit_slice)
            return report(committed)
        finally:
            remove_tree(temp)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while the plan's objects pile up.

    An import holds a few objects per member (400,000 members for 100,000
    entries) and makes no reference cycles; the collector's full passes over
    them cost about a tenth of the import. It is switched back on after (if
    it was on), whatever happens.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _open_archive(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise TransferError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise TransferError(f"{path} is a folder, not an archive") from None
    except OSError as exc:
        raise TransferError(f"{path} is not a readable tar archive: {exc}") from exc


def _umask() -> int:
    """This process's umask, read without setting it (0o777 when unknown).

    `os.umask` can only be read by setting it, which races with other threads.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _free_space(root: Path) -> int | None:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


class _LineCounter:
    """Count the lines of a gzip log as its bytes go by (-1 if unreadable)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(31)
        self._full = False
        self.lines = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the log."""
        if self.lines < 0:
            return
        try:
            while True:
                if self._z.eof:  # another gzip member may follow
                    data = self._z.unused_data + data
                    if not data:
                        return
                    self._z, self._full = zlib.decompressobj(31), False
                elif not data and not self._full:
                    return
                # Bounded output: a small log may inflate to a lot.
                out = self._z.decompress(data, _ONE_READ)
                self.lines += out.count(b"\n")
                self._full = len(out) == _ONE_READ
                data = self._z.unconsumed_tail
        except zlib.error:
            self.lines = -1

    def result(self) -> int:
        """The number of lines, or -1 for a damaged or truncated log."""
        return self.lines if self.lines < 0 or self._z.eof else -1


@dataclasses.dataclass
class _Staged:
    """Extracted entries at `<root>/<key>`, with what their bytes hashed to."""

    root: Path
    readers: int
    """Read bits the entry folders get (those of the cache's staging folder)."""
    checked: Checked
    """The manifests the entries must match."""
    digests: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    lines: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    manifest_stamps: dict[str, str] = dataclasses.field(default_factory=dict)
    """Each written manifest file's `catalog.manifest_stamp`."""
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    """Bytes of styxcache's own files (manifest, logs, done marker) per entry."""

    def __post_init__(self) -> None:
        self.base = os.fspath(self.root)
        self.umask = _umask()
        # An entry folder is made with its final mode where the umask keeps
        # it (the private folder around it hides it meanwhile): no `chmod`.
        self.entry_mode = 0o700 | self.readers
        self.chmod_entry = bool(self.entry_mode & self.umask)

    def entry(self, key: str) -> str:
        """The staged folder of an entry."""
        return f"{self.base}/{key}"

    def path(self, key: str, inside: str) -> str:
        """Where a member goes (`inside` was checked: a relative POSIX path)."""
        return f"{self.base}/{key}/{inside}" if inside else f"{self.base}/{key}"

    def extract(
        self, open_reader: Callable[[int], TarReader], plan: Plan, keys: list[str]
    ) -> None:
        """Write the members of `keys` under `root/<key>/`, never through a link.

        `open_reader(offset)` gives a reader of the archive that can reach
        the stream from `offset` on.
        """
        for key in keys:
            os.mkdir(self.entry(key), self.entry_mode)
            self.digests[key], self.lines[key], self.extra[key] = {}, {}, 0
        members = (
            plan.members
            if len(keys) == len(plan.keys)
            else [item for item in plan.members if item.key in self.digests]
        )
        # The second pass reads data by the offsets the first one checked:
        # headers are not parsed again, so what is written is what was
        # planned; changed data would fail the digests.
        reader = open_reader(members[0].info.offset if members else 0)
        for item in members:
            self._write(reader, item, plan)
        # Folder modes and times last: a read-only folder could not be filled,
        # and writing into a folder bumps its time (an entry's time is its last use).
        for item in reversed(members):
            if item.info.isdir():
                self._finish_folder(item)

    def _write(self, reader: TarReader, item: Member, plan: Plan) -> None:
        info = item.info
        target = self.path(item.key, item.inside)
        if info.isdir():
            if item.inside:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(target, 0o700)
                if not real_dir(target):
                    raise TransferError(f"cannot extract {info.name}: not a folder")
            return
        if "/" in item.inside:
            self._make_parents(item.key, item.inside)
        if info.issym():
            os.symlink(info.linkname, target)
        elif info.islnk():
            source = info.linkname.split("/", 3)[3]
            os.link(self.path(item.key, source), target)
            self.digests[item.key][item.inside] = self.digests[item.key][source]
        else:
            digest = self._write_file(reader, item, target)
            if (
                item.inside == CacheStore.MANIFEST
                and digest != self.checked.digests[item.key]
            ):
                # Not the manifest checked in the first pass.
                raise TransferError(f"{info.name} changed while the archive was read")
            self.digests[item.key][item.inside] = digest

    def _write_file(self, reader: TarReader, item: Member, target: str) -> str:
        info = item.info
        counter = (
            _LineCounter()
            if item.inside in (CacheStore.STDOUT_LOG, CacheStore.STDERR_LOG)
            else None
        )
        hasher = blake3()
        # Created with its sealed mode (the folder is private meanwhile); a
        # `fchmod` only where the umask takes bits away.
        mode = info.mode & _SEALED_FILE
        fd = os.open(target, _CREATE, mode)
        try:
            # Most files fit one chunk: read whole, no generator.
            chunks = (
                reader.chunks(info)
                if info.size > _ONE_READ
                else (reader.read(info, _ONE_READ),)
            )
            for chunk in chunks:
                hasher.update(chunk)
                if counter is not None:
                    counter.feed(chunk)
                written = os.write(fd, chunk)
                if written < len(chunk):  # rare: a signal, a full disk
                    view = memoryview(chunk)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
            if mode & self.umask:
                os.fchmod(fd, mode)
            os.utime(fd, (info.mtime, info.mtime))
            if item.inside in CacheStore.RESERVED:
                self.extra[item.key] += info.size
                if item.inside == CacheStore.MANIFEST:
                    self.manifest_stamps[item.key] = stamp_of(os.fstat(fd))
        finally:
            os.close(fd)
        if counter is not None:
            self.lines[item.key][item.inside] = counter.result()
        return str(hasher.hexdigest())

    def _make_parents(self, key: str, inside: str) -> None:
        folder = self.entry(key)
        for part in inside.split("/")[:-1]:
            folder = os.path.join(folder, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            if not real_dir(folder):
                raise TransferError(f"cannot extract {inside}: {part} is not a folder")

    def _finish_folder(self, item: Member) -> None:
        folder = self.path(item.key, item.inside)
        if item.inside:
            os.chmod(folder, ((item.info.mode & 0o777) | 0o700) & _SEALED_DIR)
            os.utime(folder, (item.info.mtime, item.info.mtime))
        elif self.chmod_entry:
            # The entry's own folder: readable by whoever may read the staging
            # folder, as `trust.seal_entry` leaves a committed run (made so by
            # `mkdir` where the umask allowed). Its time (the last use) is set
            # once it is in place.
            os.chmod(folder, self.entry_mode)

    def verify(self, keys: list[str]) -> dict[str, str]:
        """Compare each entry's bytes with its manifest: what differs, by key."""
        problems: dict[str, str] = {}
        for key in keys:
            problem = self._problem(self.checked.manifests[key], key)
            if problem:
                problems[key] = problem
        return problems

    def _problem(self, manifest: Manifest, key: str) -> str:
        digests = self.digests[key]
        for record in manifest.outputs:
            if record.link is None and digests.get(record.path) != record.digest:
                return f"output {record.path} content changed"
        for log, lines in (
            (CacheStore.STDOUT_LOG, manifest.stdout_lines),
            (CacheStore.STDERR_LOG, manifest.stderr_lines),
        ):
            found = self.lines[key].get(log, -1)
            if lines and found != lines:
                return f"log {log} has {found} lines, expected {lines}"
        return ""


class _Job(NamedTuple):
    """What every slice of an import needs (handed to workers by `fork`)."""

    store: CacheStore
    source: Path
    fd: int
    """The archive checked in the first pass, open."""
    plan: Plan
    temp: Path
    readers: int
    marks: list[Resume]
    """Where a reader of the archive may start (recorded by the first pass)."""


@dataclasses.dataclass
class _Slice:
    """One worker's entries, and what its steps learnt about them."""

    keys: list[str]
    checked: Checked = dataclasses.field(default_factory=lambda: Checked({}, {}))
    staged: _Staged | None = None


class _Pread:
    """A forward-only reader of an open file that leaves its offset alone.

    Workers share the parent's open file (the one the first pass checked);
    `pread` keeps their positions apart.
    """

    def __init__(self, fd: int, at: int = 0) -> None:
        self._fd = fd
        self._at = at

    def read(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self._at)
        self._at += len(data)
        return data


def _check_slice(job: _Job, part: _Slice) -> None:
    """Check a slice's manifests against their members (writes nothing)."""
    part.checked = check_entries(job.plan, part.keys)


def _extract_slice(job: _Job, part: _Slice) -> dict[str, str]:
    """Write a slice's entries into the private folder; what fails to verify."""
    part.staged = _Staged(job.temp, job.readers, part.checked)
    try:
        part.staged.extract(partial(_reader_from, job), job.plan, part.keys)
    except TarStreamError as exc:
        raise TransferError(f"{job.source} cannot be extracted: {exc}") from exc
    return part.staged.verify(part.keys)


def _reader_from(job: _Job, offset: int) -> TarReader:
    """A reader of the archive that starts at the last resume point before `offset`.

    A worker whose slice starts deep in the archive does not decompress all
    that is before it again.
    """
    start = resume_point(job.marks, offset)
    return TarReader(_Pread(job.fd, 0 if start is None else start.raw), start)


def _check_verified(
    plan: Plan,
    slices: list[_Slice],
    found: list[dict[str, str]],
    on_verified: Callable[[str], None] | None,
) -> None:
    """Raise unless every entry matched its manifest: then nothing is committed."""
    problems = [
        f"{key[:12]}: {problem}" for part in found for key, problem in part.items()
    ]
    if on_verified is not None:
        for part, failed in zip(slices, found, strict=True):
            for key in part.keys:
                if key not in failed:
                    on_verified(key)
    if problems:
        raise TransferError(
            f"{len(problems)} of {len(plan.keys)} entries in the archive failed "
            "verification; nothing was imported: " + "; ".join(problems)
        )


def _commit_slice(job: _Job, part: _Slice) -> Committed:
    """Commit a verified slice (a good entry already there is kept)."""
    assert part.staged is not None  # extracted in the step before
    staged = part.staged
    committer = Committer(
        job.store, job.plan, staged.base, staged.manifest_stamps, staged.extra
    )
    return commit_entries(committer, part.keys, part.checked.manifests)
