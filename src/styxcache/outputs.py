"""Where an output name points, and outputs outside the cache entry.

An output inside the tool's folder is redirected into the entry. A name that
leaves the folder (`../x`) makes the call run uncached, as the base runner
would run it. An absolute name is returned as the base runner would return
it, never moved: the entry only remembers what the run left there
(`OutsideRecord`), and a hit requires it to be unchanged.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from styxcache.manifest import Manifest, OutsideRecord

__all__ = ["OutputKind", "classify_output", "outside_problem", "outside_state"]

OutputKind = Literal["inside", "absolute", "parent"]


def classify_output(
    local_file: str, tool: str, reserved: Iterable[str]
) -> tuple[OutputKind, str]:
    """Say where an output name points.

    Args:
        local_file: The name the wrapper passed to `output_file()`.
        tool: `package/id`, for the error message.
        reserved: Names inside an entry that belong to styxcache.

    Returns:
        ("inside", relative POSIX path), ("absolute", name), or ("parent",
        name) for a name that leaves the folder with "..".

    Raises:
        ValueError: For a name reserved by styxcache inside the entry.
    """
    text = os.fspath(local_file)
    if os.path.isabs(text):
        return "absolute", text
    normal = os.path.normpath(text)  # "" and "a/.." are the folder itself
    if normal == ".." or normal.startswith(".." + os.sep) or normal.startswith("../"):
        return "parent", text
    relative = normal.replace(os.sep, "/")
    if relative.split("/", 1)[0] in reserved:
        raise ValueError(f"{tool}: output file name {text!r} is reserved by styxcache")
    return "inside", relative


def outside_state(path: str, digest: Callable[[Path], str]) -> OutsideRecord:
    """What is at an outside output's path now (read only, never changed).

    Args:
        path: The absolute name.
        digest: Digests a file or folder the way the key does.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return OutsideRecord(path, present=False)
    if stat.S_ISLNK(st.st_mode):
        return OutsideRecord(path, True, st.st_size, "link:" + os.readlink(path))
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        # A FIFO or device is never read: it could block forever.
        return OutsideRecord(path, True, 0, f"mode:{stat.S_IFMT(st.st_mode):o}")
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    try:
        return OutsideRecord(path, True, size, digest(Path(path)))
    except OSError as exc:
        return OutsideRecord(path, True, size, f"unreadable:{exc.errno}")
    except ValueError:  # a folder too big to digest (hashing.py's bound)
        return OutsideRecord(path, True, size, f"mtime:{st.st_mtime_ns}")


def outside_problem(
    declared: list[str], manifest: Manifest, digest: Callable[[Path], str]
) -> str:
    """Why an entry's outside outputs do not match this call, or "".

    Args:
        declared: This call's outside outputs, sorted.
        manifest: The entry's manifest.
        digest: Digests a file or folder the way the key does.
    """
    recorded = {record.path: record for record in manifest.outside}
    if declared != sorted(recorded):
        return "outputs outside the cache differ from the stored run's"
    for path in declared:
        if outside_state(path, digest) != recorded[path]:
            return f"output {path} outside the cache changed since the stored run"
    return ""
