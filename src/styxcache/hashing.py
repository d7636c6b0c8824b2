"""Content digests of input files and folders (blake3).

Large files are memory-mapped and hashed on all cores; small files take a
plain read. A folder's digest folds every entry's relative name, kind and
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
from pathlib import Path
from typing import Protocol, runtime_checkable

from blake3 import blake3

from styxcache.memo import DigestMemo, file_memo_key, is_settled

__all__ = ["ContentHasher", "Digest", "InputHasher", "stat_signature"]

_MMAP_THRESHOLD = 4 * 1024 * 1024
"""Files at least this large are memory-mapped and hashed multi-threaded."""


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


@dataclasses.dataclass(frozen=True)
class _Entry:
    rel: str
    kind: str  # "f" file, "d" folder, "l" symlink
    st: os.stat_result
    link: str = ""
    target: os.stat_result | None = None  # a symlink's target, when a file


class ContentHasher:
    """blake3 digests of files and folders, remembered in a `DigestMemo`.

    Args:
        chunk_size: Read size for files that cannot be memory-mapped.
        threads: Worker threads for a folder's files and for large files
            (default: the CPU count).
    """

    def __init__(
        self, chunk_size: int = 1 << 20, *, threads: int | None = None
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        self.threads = max(1, threads or os.cpu_count() or 1)

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
        """
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return self._folder_digest(path, memo, exclude)
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
        if memo is not None and self._unchanged(path, st):
            memo.put(key, value)
        return Digest(value, key)

    @staticmethod
    def _unchanged(path: Path | str, before: os.stat_result) -> bool:
        """A digest is remembered only if the file settled and did not move."""
        try:
            after = os.stat(path)
        except OSError:
            return False
        return file_memo_key(after) == file_memo_key(before) and is_settled(after)

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
            hasher = blake3(max_threads=self.threads if self.threads > 1 else 1)
            try:
                hasher.update_mmap(os.fspath(path))
                return str(hasher.hexdigest())
            except OSError:
                hasher = blake3()  # not mappable (a pipe, a special file): stream it
        else:
            hasher = blake3()
        with open(path, "rb") as handle:
            while chunk := handle.read(self.chunk_size):
                hasher.update(chunk)
        return str(hasher.hexdigest())

    # Folders ---------------------------------------------------------------

    def _folder_digest(
        self, root: Path, memo: DigestMemo | None, exclude: Collection[Path]
    ) -> Digest:
        excluded = _identities(exclude)
        entries = sorted(_walk(os.fspath(root), "", excluded), key=lambda e: e.rel)
        fingerprint = _fingerprint(entries)
        folder_key = f"d:{fingerprint}"
        if memo is not None:
            known = memo.get(folder_key)
            if known is not None:
                return Digest(known, folder_key)
        digests = self._content_digests(root, entries, memo)
        hasher = blake3()
        for entry in entries:
            hasher.update(
                f"{entry.kind}\0{entry.rel}\0{entry.link}\0"
                f"{digests.get(entry.rel, '')}\n".encode(errors="surrogateescape")
            )
        value = str(hasher.hexdigest())
        if memo is not None and all(
            is_settled(e.st) and (e.target is None or is_settled(e.target))
            for e in entries
        ):
            memo.put(folder_key, value)
        return Digest(value, folder_key)

    def _content_digests(
        self, root: Path, entries: list[_Entry], memo: DigestMemo | None
    ) -> dict[str, str]:
        """Digest every file (and file behind a symlink), in parallel."""
        wanted: list[tuple[str, os.stat_result]] = []
        for entry in entries:
            if entry.kind == "f":
                wanted.append((entry.rel, entry.st))
            elif entry.target is not None:
                wanted.append((entry.rel, entry.target))
        known: dict[str, str] = {}
        if memo is not None:
            found = memo.get_many([file_memo_key(st) for _, st in wanted])
            for rel, st in wanted:
                digest = found.get(file_memo_key(st))
                if digest is not None:
                    known[rel] = digest
        todo = [(rel, st) for rel, st in wanted if rel not in known]

        def work(item: tuple[str, os.stat_result]) -> tuple[str, str, os.stat_result]:
            rel, st = item
            return rel, self.hash_file(root / rel, st.st_size), st

        if len(todo) > 1 and self.threads > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                results = list(pool.map(work, todo))
        else:
            results = [work(item) for item in todo]
        fresh: list[tuple[str, str]] = []
        for rel, value, st in results:
            known[rel] = value
            if is_settled(st):
                fresh.append((file_memo_key(st), value))
        if memo is not None:
            memo.put_many(fresh)
        return known


def _identities(paths: Iterable[Path]) -> frozenset[tuple[int, int]]:
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


def _walk(top: str, prefix: str, excluded: frozenset[tuple[int, int]]) -> list[_Entry]:
    """List every entry under `top` with one stat each; symlinks are not followed."""
    entries: list[_Entry] = []
    with os.scandir(top) as scan:
        for item in scan:
            rel = f"{prefix}{item.name}"
            st = item.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target: os.stat_result | None
                try:
                    target = os.stat(item.path)
                    if not stat.S_ISREG(target.st_mode):
                        target = None
                except OSError:
                    target = None
                entries.append(_Entry(rel, "l", st, os.readlink(item.path), target))
            elif stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in excluded:
                    continue
                entries.append(_Entry(rel, "d", st))
                entries.extend(_walk(item.path, f"{rel}/", excluded))
            else:
                entries.append(_Entry(rel, "f", st))
    return entries


def _fingerprint(entries: list[_Entry]) -> str:
    hasher = blake3()
    for e in entries:
        target = "" if e.target is None else file_memo_key(e.target)
        stamp = "" if e.kind == "d" else file_memo_key(e.st)
        hasher.update(
            f"{e.kind}\0{e.rel}\0{stamp}\0{e.link}\0{target}\n".encode(
                errors="surrogateescape"
            )
        )
    return str(hasher.hexdigest())


def stat_signature(path: Path, exclude: Collection[Path] = ()) -> str:
    """Return a signature that changes whenever a file or folder tree changes.

    Reads only metadata: the stat record of a file, or of every entry of a
    folder tree. Equal to `Digest.signature` for the same unchanged path.

    Args:
        path: A file or folder.
        exclude: Folders left out of a folder's walk.

    Returns:
        The signature.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        entries = sorted(
            _walk(os.fspath(path), "", _identities(exclude)), key=lambda e: e.rel
        )
        return f"d:{_fingerprint(entries)}"
    return file_memo_key(st)
