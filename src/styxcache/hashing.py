"""Content digests of input files and folders (blake3).

Large files are memory-mapped and hashed on all cores; small files take a
plain `os.read`. A folder's digest folds every entry's relative name, kind and
content digest in sorted order, so renaming, adding or removing a file inside
changes it, while the folder's own name and location do not. Both consult the
`DigestMemo` first, so an unchanged input costs one `stat` (a file) or one
walk (a folder).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from pathlib import Path
from typing import Protocol, runtime_checkable

from blake3 import blake3

from styxcache.errors import UnkeyableInputError
from styxcache.memo import DigestMemo, file_memo_key, is_settled

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "ContentHasher",
    "Digest",
    "InputHasher",
    "UnkeyableInputError",
    "stat_signature",
]

_MMAP_THRESHOLD = 4 * 1024 * 1024
"""Files at least this large are memory-mapped and hashed multi-threaded."""

_BATCH_BYTES = 8 * 1024 * 1024
"""A folder's small files are hashed in batches of about this many bytes."""

_BATCH_FILES = 512
"""...and of at most this many files."""

_PARALLEL_BYTES = 32 * 1024 * 1024
"""Small files are hashed on several threads only when they add up to this."""

DEFAULT_MAX_ENTRIES = 50_000
"""A folder input with more entries than this is not keyed by content.

Walking /usr (140,000 entries, 5.8 GB) to build one key takes many seconds
cold and would be repeated by every call; this bound stops the walk within
about half a second. Raise it with `ContentHasher(max_entries=...)` for a
dataset that really is one input."""

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)

# One folder entry: (relative name, kind, lstat record, symlink text, stat
# record of a symlink's target when that is a regular file). Kinds: "f" a
# regular file, "d" a folder, "l" a symlink, "s" anything else (fifo,
# socket, device), whose content is never read. Plain tuples: a walk makes
# one per file, and tuples are the cheapest record Python has.
_Entry = tuple[str, str, os.stat_result, str, os.stat_result | None]
_REL = itemgetter(0)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_keyable(path: str | os.PathLike[str], st: os.stat_result) -> None:
    """Raise `UnkeyableInputError` unless `st` is a regular file or a folder.

    Args:
        path: The path, for the message.
        st: Its stat record (following symlinks).

    Raises:
        UnkeyableInputError: For a FIFO, a device or a socket.
    """
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UnkeyableInputError(
            path,
            f"is {_special_kind(st.st_mode)}: its content cannot be read to an "
            "end, so it cannot be part of a cache key",
        )


@runtime_checkable
class InputHasher(Protocol):
    """Anything that turns an input path into a content digest."""

    def hash_path(self, path: Path) -> str:
        """Return a digest of the file's or folder's content.

        Args:
            path: An existing file or folder.

        Returns:
            A string that changes whenever the content changes.
        """
        ...


@dataclasses.dataclass(frozen=True)
class Digest:
    """A content digest and the stat signature of what was hashed.

    Attributes:
        value: The blake3 digest (hex) of the content.
        signature: Changes whenever any hashed file's stat record changes; used
            to notice an input that changed while a tool ran.
    """

    value: str
    signature: str


class ContentHasher:
    """blake3 digests of files and folders, remembered in a `DigestMemo`.

    Args:
        chunk_size: Read size for files that are not memory-mapped.
        threads: Worker threads for a folder's files and for large files
            (default: the CPU count).
        max_entries: A folder with more entries than this raises
            `UnkeyableInputError` instead of being walked to its end (None: no
            bound).
    """

    def __init__(
        self,
        chunk_size: int = 1 << 20,
        *,
        threads: int | None = None,
        max_entries: int | None = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if max_entries is not None and (
            isinstance(max_entries, bool)
            or not isinstance(max_entries, int)
            or max_entries <= 0
        ):
            raise ValueError(
                f"max_entries must be a positive int or None, got {max_entries!r}"
            )
        self.chunk_size = chunk_size
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.max_entries = max_entries

    def hash_path(
        self,
        path: Path,
        *,
        memo: DigestMemo | None = None,
        exclude: Collection[Path] = (),
    ) -> str:
        """Return the content digest of a file or folder.

        Args:
            path: An existing file or folder.
            memo: Where digests of unchanged files are remembered.
            exclude: Folders left out of a folder's digest (the cache itself).

        Returns:
            The blake3 digest in hex.
        """
        return self.digest(Path(path), memo=memo, exclude=exclude).value

    def digest(
        self,
        path: Path,
        *,
        memo: DigestMemo | None = None,
        exclude: Collection[Path] = (),
    ) -> Digest:
        """Return the digest of a file or folder with its stat signature.

        Args:
            path: An existing file or folder.
            memo: Where digests of unchanged files are remembered.
            exclude: Folders left out of a folder's digest.

        Returns:
            The digest.

        Raises:
            FileNotFoundError: If the path does not exist.
            UnkeyableInputError: If it is a FIFO, a device or a socket, or a folder
                with more than `max_entries` entries.
        """
        st = os.stat(path)
        check_keyable(path, st)
        if stat.S_ISDIR(st.st_mode):
            return self._folder_digest(os.fspath(path), memo, exclude)
        return self._file_digest(path, st, memo)

    # Files ---------------------------------------------------------------

    def _file_digest(
        self, path: Path | str, st: os.stat_result, memo: DigestMemo | None
    ) -> Digest:
        key = file_memo_key(st)
        if memo is not None:
            known = memo.get(key)
            if known is not None:
                return Digest(known, key)
        value = self.hash_file(path, st.st_size)
        if memo is not None and _unchanged(path, key):
            memo.put(key, value)
        return Digest(value, key)

    def hash_file(self, path: Path | str, size: int | None = None) -> str:
        """Hash one file's bytes, without the memo.

        Args:
            path: The file.
            size: Its size, if already known.

        Returns:
            The blake3 digest in hex.
        """
        if size is None:
            size = os.stat(path).st_size
        if size >= _MMAP_THRESHOLD:
            hasher = blake3(max_threads=self.threads)
            try:
                hasher.update_mmap(os.fspath(path))
                return str(hasher.hexdigest())
            except (OSError, ValueError):
                pass  # not mappable (a pipe, a special file): read it below
        return self._read_and_hash(path, size)

    def _read_and_hash(self, path: Path | str, size: int) -> str:
        hasher = blake3()
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # Most inputs are read in one call: ask for one byte more than
            # the size so that a file that grew is still read to its end.
            want = size + 1 if size < self.chunk_size else self.chunk_size
            got = 0
            while chunk := os.read(fd, want):
                hasher.update(chunk)
                got += len(chunk)
                # Past the expected size, a short read is the end: skip the
                # empty read that would confirm it. Before it, a short read
                # (FUSE, a signal) only means "read again".
                if got >= size and len(chunk) < want:
                    break
                want = self.chunk_size
        finally:
            os.close(fd)
        return str(hasher.hexdigest())

    # Folders ---------------------------------------------------------------

    def _folder_digest(
        self, root: str, memo: DigestMemo | None, exclude: Collection[Path]
    ) -> Digest:
        walk = _Walk(root, _identities(exclude), self.max_entries)
        folder_key = f"d:{walk.fingerprint}"
        if memo is not None:
            known = memo.get(folder_key)
            if known is not None:
                return Digest(known, folder_key)
        entries = walk.entries()
        digests = self._content_digests(root, entries, memo)
        lines = [
            f"{kind}\0{rel}\0{link}\0{digests.get(rel, '')}\n"
            for rel, kind, _st, link, _target in entries
        ]
        value = str(blake3("".join(lines).encode(errors="surrogateescape")).hexdigest())
        if memo is not None and all(
            is_settled(st) and (target is None or is_settled(target))
            for _rel, _kind, st, _link, target in entries
        ):
            memo.put(folder_key, value)
        return Digest(value, folder_key)

    def _content_digests(
        self, root: str, entries: list[_Entry], memo: DigestMemo | None
    ) -> dict[str, str]:
        """Digest every file (and file behind a symlink) the memo does not know."""
        wanted: list[tuple[str, os.stat_result]] = []
        for rel, kind, st, _link, target in entries:
            if kind == "f":
                wanted.append((rel, st))
            elif target is not None:
                wanted.append((rel, target))
        keys = [file_memo_key(st) for _rel, st in wanted]
        found = memo.get_many(keys) if memo is not None else {}
        known: dict[str, str] = {}
        todo: list[tuple[str, os.stat_result, str]] = []
        for (rel, st), key in zip(wanted, keys, strict=True):
            digest = found.get(key)
            if digest is None:
                todo.append((rel, st, key))
            else:
                known[rel] = digest
        if not todo:
            return known
        small = [item for item in todo if item[1].st_size < _MMAP_THRESHOLD]
        large = [item for item in todo if item[1].st_size >= _MMAP_THRESHOLD]
        fresh: list[tuple[str, str]] = []

        def hash_batch(batch: list[tuple[str, os.stat_result, str]]) -> list[str]:
            return [
                self._read_and_hash(os.path.join(root, rel), st.st_size)
                for rel, st, _key in batch
            ]

        batches = _batches(small)
        small_bytes = sum(st.st_size for _rel, st, _key in small)
        if len(batches) > 1 and self.threads > 1 and small_bytes >= _PARALLEL_BYTES:
            # Threads overlap reads that wait on a disk or a network; below
            # this volume the per-file Python work, which holds the GIL,
            # dominates and threads only add switching.
            with ThreadPoolExecutor(min(self.threads, len(batches))) as pool:
                hashed = [d for batch in pool.map(hash_batch, batches) for d in batch]
        else:
            hashed = [d for batch in batches for d in hash_batch(batch)]
        # Large files one at a time: each already uses every core.
        hashed.extend(
            self.hash_file(os.path.join(root, rel), st.st_size)
            for rel, st, _key in large
        )
        for (rel, _st, key), digest in zip([*small, *large], hashed, strict=True):
            known[rel] = digest
            if memo is not None and _unchanged(os.path.join(root, rel), key):
                fresh.append((key, digest))
        if memo is not None:
            memo.put_many(fresh)
        return known


def _unchanged(path: Path | str, key: str) -> bool:
    """Whether a digest may be remembered: the file settled and did not change."""
    try:
        after = os.stat(path)
    except OSError:
        return False
    return file_memo_key(after) == key and is_settled(after)


def _batches(
    items: list[tuple[str, os.stat_result, str]],
) -> list[list[tuple[str, os.stat_result, str]]]:
    batches: list[list[tuple[str, os.stat_result, str]]] = []
    current: list[tuple[str, os.stat_result, str]] = []
    size = 0
    for item in items:
        current.append(item)
        size += item[1].st_size
        if size >= _BATCH_BYTES or len(current) >= _BATCH_FILES:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


def _identities(paths: Iterable[Path]) -> frozenset[tuple[int, int]]:
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


class _Walk:
    """Every entry under a folder, and the fingerprint of their stat records.

    Symlinks are not followed. Each folder is opened once and its entries
    are stat'ed relative to that descriptor, so the kernel does not resolve
    the full path again for every file: this walk is what a hit on a folder
    input costs, so it does nothing else. The fingerprint lines are made in
    the same pass; the entries are sorted only when their content is needed.
    """

    def __init__(
        self,
        root: str,
        excluded: frozenset[tuple[int, int]],
        max_entries: int | None = None,
    ) -> None:
        self.root = root
        self.unsorted: list[_Entry] = []
        lines: list[str] = []
        entries = self.unsorted
        pending = [(root, "")]
        while pending:
            folder, prefix = pending.pop()
            fd = os.open(folder, _DIR_FLAGS)
            try:
                with os.scandir(fd) as scan:
                    for item in scan:
                        if max_entries is not None and len(entries) >= max_entries:
                            raise UnkeyableInputError(
                                root,
                                f"is a folder of more than {max_entries:,} entries "
                                "(ContentHasher(max_entries=...) raises the bound)",
                            )
                        rel = prefix + item.name
                        st = item.stat(follow_symlinks=False)
                        kind = _KINDS.get(st.st_mode & _S_IFMT, "s")
                        link = ""
                        target = None
                        if kind == "d":
                            if (st.st_dev, st.st_ino) in excluded:
                                continue
                            pending.append((os.path.join(folder, item.name), rel + "/"))
                            # A folder's own times change with its entries,
                            # which are listed anyway: its name is enough.
                            lines.append(f"{rel}\0d\n")
                            entries.append((rel, kind, st, link, target))
                            continue
                        if kind == "l":
                            link = os.readlink(item.name, dir_fd=fd)
                            target = _link_target(item.name, fd)
                        lines.append(
                            f"{rel}\0{kind}\0{st.st_dev}:{st.st_ino}:{st.st_size}:"
                            f"{st.st_mtime_ns}:{st.st_ctime_ns}\0{link}\0"
                            f"{'' if target is None else file_memo_key(target)}\n"
                        )
                        entries.append((rel, kind, st, link, target))
            finally:
                os.close(fd)
        # Each line starts with its entry's name and a NUL, which no name
        # contains, so sorting the lines sorts by name.
        lines.sort()
        joined = "".join(lines).encode(errors="surrogateescape")
        self.fingerprint = str(blake3(joined).hexdigest())

    def entries(self) -> list[_Entry]:
        """Return the entries sorted by relative name."""
        return sorted(self.unsorted, key=_REL)


_S_IFMT = 0o170000
_KINDS = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l"}


def _link_target(name: str, dir_fd: int) -> os.stat_result | None:
    """The stat record of the regular file a symlink points to, else None."""
    try:
        target = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return None
    return target if stat.S_ISREG(target.st_mode) else None


def stat_signature(
    path: Path,
    exclude: Collection[Path] = (),
    max_entries: int | None = DEFAULT_MAX_ENTRIES,
) -> str:
    """Return a signature that changes whenever a file or folder tree changes.

    Reads only metadata: the stat record of a file, or of every entry of a
    folder tree. Equal to `Digest.signature` for the same unchanged path.

    Args:
        path: A file or folder.
        exclude: Folders left out of a folder's walk.
        max_entries: Bound on a folder's entries, as in `ContentHasher`.

    Returns:
        The signature.

    Raises:
        UnkeyableInputError: For a folder of more than `max_entries` entries.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        walk = _Walk(os.fspath(path), _identities(exclude), max_entries)
        return f"d:{walk.fingerprint}"
    return file_memo_key(st)
