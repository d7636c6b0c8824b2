"""The per-tool index of a cache: which keys belong to which tool.

```
<root>/.tools/<tool>/<key>      one empty record per entry (gc removes it with
                                the entry); its time is the commit's
<root>/.tools/<tool>/.recent    the keys committed, one a line, newest last
```

Only explanations of misses read it (the nearest earlier entry of the tool),
so a write that fails is ignored: it is a hint, rebuilt as entries commit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from styxcache._system import atomic_write
from styxcache.walk import housekeeping_dir

__all__ = ["RECENT_LOG", "ToolIndex"]

RECENT_LOG = ".recent"
"""In a tool's index folder: the keys committed, one a line, newest last.

With 100,000 entries, finding a tool's newest records by their times cost a
`stat` per record of the tool on every miss (5 ms at 1,000 per tool); the tail
of this log costs one read."""

_RECENT_TRIM = 64 * 1024
"""A tool's recent-keys log is cut back to its tail beyond this many bytes."""

_RECORD_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class ToolIndex:
    """The `.tools` folder of one cache.

    Args:
        root: The cache directory.
        name: The index folder's name inside it.
    """

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name

    def folder(self, tool: str) -> Path:
        """The index folder of a tool (which may not exist).

        Args:
            tool: `package/id`.
        """
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in tool)
        return self.root / self.name / slug

    def record(self, tool: str, keys: list[str]) -> None:
        """Note that `keys` (oldest first) are entries of `tool`.

        Args:
            tool: `package/id`.
            keys: The entries' keys.

        Raises:
            OSError: A record could not be written.
        """
        tools = housekeeping_dir(self.root, self.name, create=True)
        folder = (
            None
            if tools is None
            else housekeeping_dir(tools, self.folder(tool).name, create=True)
        )
        if folder is None or not keys:
            return  # reported; only explanations of later misses need it
        for key in keys:
            # O_NOFOLLOW: a link planted at the key's name is never written through.
            record = os.path.join(folder, key)
            try:
                # A new record's time is its creation's: no `utime` (an
                # import records 100,000 of them).
                os.close(os.open(record, _RECORD_FLAGS | os.O_EXCL, 0o644))
                continue
            except FileExistsError:
                pass
            fd = os.open(record, _RECORD_FLAGS, 0o644)
            try:
                os.utime(fd)  # the newest entries are found by this time
            finally:
                os.close(fd)
        # One write of every line: appends of other processes never interleave.
        _append_recent(folder / RECENT_LOG, "\n".join(keys))

    def recent(self, tool: str, limit: int) -> list[str]:
        """Return the newest keys recorded for a tool, newest first.

        Args:
            tool: `package/id`.
            limit: At most this many.

        Returns:
            Keys, newest first.
        """
        folder = os.fspath(self.folder(tool))
        logged = _read_recent(Path(folder, RECENT_LOG), limit)
        if logged is not None and len(logged) >= limit:
            return [
                key
                for key in logged
                if os.path.lexists(os.path.join(folder, key))  # gc keeps these
            ]
        # A young log (or a cache from before it): the records' times tell.
        try:
            items = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        stamped: list[tuple[int, str]] = []
        for item in items:
            if item.name.startswith("."):  # the log itself, or its trimming
                continue
            with contextlib.suppress(OSError):  # removed by a concurrent gc
                stamped.append((item.stat().st_mtime_ns, item.name))
        stamped.sort(reverse=True)
        return [name for _, name in stamped[:limit]]


def _append_recent(path: Path, lines: str) -> None:
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
        )
    except OSError:
        return  # only explanations of later misses need it
    try:
        os.write(fd, f"{lines}\n".encode())  # one write: appends never interleave
        size = os.fstat(fd).st_size
    except OSError:
        return
    finally:
        os.close(fd)
    if size > _RECENT_TRIM:
        tail = _read_recent(path, 256)
        if tail is None:
            return
        with contextlib.suppress(OSError):
            # A racing append may be lost: only a hint, so no fsync either.
            atomic_write(path, "".join(f"{k}\n" for k in reversed(tail)), fsync=False)


def _read_recent(path: Path, limit: int) -> list[str] | None:
    """The newest distinct keys of a recent-keys log, newest first; None if none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        want = min(size, 65 * limit * 4)
        data = os.pread(fd, want, size - want)
    except OSError:
        return None
    finally:
        os.close(fd)
    keys: list[str] = []
    for line in reversed(data.decode("ascii", errors="replace").split("\n")):
        if len(line) == 64 and line not in keys and line.isalnum():
            keys.append(line)
            if len(keys) >= limit:
                break
    return keys
