"""Whole folder trees: removing one (read-only parts included), copying one.

Cached files and tool-made folders may be read-only (sealed entries, tools
that chmod their outputs): removal makes each parent writable as it goes.
Copies hard-link files where the filesystem allows.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from styxcache._system import link_or_copy_tree
from styxcache.walk import folder_entries

__all__ = ["copy_entry", "prune_oldest", "remove_tree"]


def _make_writable_and_retry(
    func: Callable[[str], object], path: str, _exc: object
) -> None:
    # Cached files and tool-made folders may be read-only; removal needs the
    # parent folder writable, and the item itself for folders.
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    except OSError:
        pass
    func(path)


def remove_tree(path: Path) -> None:
    """Delete a folder tree, read-only files and folders included.

    Args:
        path: The folder; a missing one is fine.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    shutil.rmtree(path, onerror=_make_writable_and_retry)


def copy_entry(source: Path, target: Path) -> None:
    """Copy an entry's tree, hard-linking files where the filesystem allows.

    Args:
        source: The entry folder to copy.
        target: A folder that does not exist yet; removed again on failure.
    """
    try:
        link_or_copy_tree(source, target)
    except BaseException:
        remove_tree(target)
        raise


def prune_oldest(folder: Path, keep: int) -> None:
    """Remove all but the `keep` most recently modified folders inside `folder`.

    Args:
        folder: The folder (`.failed`); links in it are never followed.
        keep: How many to keep.
    """
    kept = sorted(
        (p for p in folder_entries(folder) if p.is_dir(follow_symlinks=False)),
        key=lambda p: p.stat(follow_symlinks=False).st_mtime,
    )
    for old in kept[: max(0, len(kept) - keep)]:
        remove_tree(Path(old.path))
