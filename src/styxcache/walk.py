"""Walking a cache directory without ever leaving it.

Maintenance (gc, clear, verify, ls, export, import) runs over caches that
other people can write to. A symlink planted where a cache folder should be
(`.trash`, `.failed`, a shard, an entry) must never be followed: a routine
`gc` would otherwise delete, or `export` read, files outside the cache. So
every walk here looks with `lstat` / `os.scandir` without following links,
reports a link (or a file) where a folder should be and skips it, and yields
only names that are cache keys; anything else is ignored, never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "KEY_LENGTH",
    "UnsafeHandler",
    "entry_dirs_of",
    "folder_entries",
    "housekeeping_dir",
    "is_cache_key",
    "is_shard_name",
    "iter_entry_dirs",
    "iter_shard_dirs",
    "real_dir",
    "unsafe_reason",
]

_log = logging.getLogger("styxcache.walk")

KEY_LENGTH = 64
"""A key is a sha256 in lower-case hex (`key.key_of`)."""

_HEX = frozenset("0123456789abcdef")

UnsafeHandler = Callable[[str, str], None]
"""Called with `(path, reason)` for a link or file where a folder should be."""


def is_cache_key(name: str) -> bool:
    """Return True when `name` is a cache key: 64 lower-case hex digits.

    Args:
        name: A file or folder name.
    """
    return _KEY_MATCH(name) is not None


_KEY_MATCH = re.compile(r"[0-9a-f]{64}\Z").match


def is_shard_name(name: str) -> bool:
    """Return True when `name` is a shard folder's name: 2 lower-case hex digits.

    Args:
        name: A file or folder name.
    """
    return len(name) == 2 and _HEX.issuperset(name)


def unsafe_reason(path: str | os.PathLike[str], st: os.stat_result) -> str:
    """Say what is wrong with something found where a folder should be.

    Args:
        path: Where it is.
        st: Its `lstat` record.

    Returns:
        For example "is a symlink to /home/ana (not followed)".
    """
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"is a symlink to {target} (not followed)"
    return "is not a folder"


def _report(path: str, reason: str, on_unsafe: UnsafeHandler | None) -> None:
    if on_unsafe is None:
        _log.warning("skipping %s: it %s", path, reason)
    else:  # the caller reports it (the CLI prints it once)
        _log.debug("skipping %s: it %s", path, reason)
        on_unsafe(path, reason)


def real_dir(path: str | os.PathLike[str]) -> bool:
    """Return True when `path` is a folder itself, not a link to one.

    Args:
        path: The path.
    """
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def housekeeping_dir(
    root: Path,
    name: str,
    *,
    create: bool = False,
    on_unsafe: UnsafeHandler | None = None,
) -> Path | None:
    """Return a folder of the cache (`.trash`, `.failed`...) if it is safe to use.

    Args:
        root: The cache directory.
        name: The folder's name.
        create: Create it when missing (the cache directory too).
        on_unsafe: Told when a link or file stands where the folder should be.

    Returns:
        The folder; None when it is missing (and not created) or unsafe (a
        symlink or a file, which is reported and never followed).
    """
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)  # never follows a link planted at `path` meanwhile
        st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return path
    _report(str(path), unsafe_reason(path, st), on_unsafe)
    return None


def folder_entries(folder: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    """Return the items of a folder, sorted by name; [] when it is gone.

    `os.DirEntry` keeps what `readdir` said about each item's type, so
    `is_dir(follow_symlinks=False)` costs no system call.

    Args:
        folder: The folder (the caller has checked it is not a link).
    """
    try:
        with os.scandir(folder) as items:
            found = list(items)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(key=_NAME)
    return found


_NAME = operator.attrgetter("name")


def iter_shard_dirs(
    root: Path, *, on_unsafe: UnsafeHandler | None = None
) -> Iterator[os.DirEntry[str]]:
    """Yield the shard folders of a cache (`<root>/<2 hex>`), in name order.

    A shard that is a symlink is reported and skipped.

    Args:
        root: The cache directory.
        on_unsafe: Told about each link skipped.
    """
    for shard in folder_entries(root):
        if not is_shard_name(shard.name):
            continue
        if shard.is_dir(follow_symlinks=False):
            yield shard
        else:
            _report_link(shard, on_unsafe)


def entry_dirs_of(
    prefix: str,
    items: Iterable[os.DirEntry[str]],
    *,
    on_unsafe: UnsafeHandler | None = None,
) -> Iterator[os.DirEntry[str]]:
    """Yield the items of a shard that are entry folders, in the given order.

    Only folders named by a 64-hex key starting with the shard's name are
    yielded; a link in their place is reported and skipped; other names are
    ignored.

    Args:
        prefix: The shard's name.
        items: The shard's items.
        on_unsafe: Told about each link skipped.
    """
    for entry in items:
        name = entry.name
        # The cheapest tests first: this loop runs once per entry.
        if not (
            len(name) == KEY_LENGTH
            and name.startswith(prefix)
            and _KEY_MATCH(name) is not None
        ):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield entry
        else:
            _report_link(entry, on_unsafe)


def iter_entry_dirs(
    root: Path, *, on_unsafe: UnsafeHandler | None = None
) -> Iterator[os.DirEntry[str]]:
    """Yield the folder of every entry of a cache, in key order.

    Only `<root>/<2 hex>/<64 hex key starting with them>` folders are yielded.
    A shard or entry that is a symlink is reported and skipped; other names
    (notes, editor backups, foreign folders) are ignored.

    Args:
        root: The cache directory.
        on_unsafe: Told about each link or file skipped.

    Yields:
        One `os.DirEntry` per entry folder (its name is the key).
    """
    for shard in iter_shard_dirs(root, on_unsafe=on_unsafe):
        yield from entry_dirs_of(
            shard.name, folder_entries(shard.path), on_unsafe=on_unsafe
        )


def _report_link(item: os.DirEntry[str], on_unsafe: UnsafeHandler | None) -> None:
    # A stray file is only ignored; a link is what an attacker plants.
    if not item.is_symlink():
        return
    try:
        st = item.stat(follow_symlinks=False)
    except OSError:
        return
    _report(item.path, unsafe_reason(item.path, st), on_unsafe)
