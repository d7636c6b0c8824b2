"""Checking a committed entry against its manifest: what every hit verifies.

Every hit checks each output's type and size (one `lstat` each) and, with
`verify="full"`, its content digest; the captured logs are checked like
outputs. A problem found here makes the entry damaged: it is never served.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
import zlib
from collections.abc import Callable

from styxcache.manifest import Manifest, OutputRecord

__all__ = [
    "DONE_MARKER",
    "ENTRY_FILES",
    "MANIFEST_FILE",
    "STDERR_LOG",
    "STDOUT_LOG",
    "UNCOMMITTED",
    "Lookup",
    "check_outputs",
]

STDOUT_LOG = ".styxcache.stdout.gz"
"""The tool's stdout inside an entry, gzip, one line per line."""
STDERR_LOG = ".styxcache.stderr.gz"
"""The tool's stderr inside an entry."""
MANIFEST_FILE = ".styxcache.manifest.json"
"""The entry's manifest (`CacheStore.MANIFEST`)."""
DONE_MARKER = ".styxcache.done"
"""Present once an entry is committed (`CacheStore.DONE_MARKER`)."""
UNCOMMITTED = ".styxcache.uncommitted"
"""Marks a folder still being committed (`CacheStore.UNCOMMITTED`)."""
ENTRY_FILES = frozenset(
    {MANIFEST_FILE, DONE_MARKER, STDOUT_LOG, STDERR_LOG, UNCOMMITTED}
)
"""Names inside an entry that belong to styxcache, not to the tool
(`CacheStore.RESERVED`; the catalog counts their sizes too)."""

HashFile = Callable[[str, int], str]


@dataclasses.dataclass(frozen=True)
class Lookup:
    """The result of looking a key up.

    Attributes:
        manifest: The verified manifest, or None for a miss.
        reason: Why it is a miss (empty for a hit).
        damaged: The entry existed but was damaged and has been quarantined.
        untrusted: The entry exists but someone untrusted could have written
            it (trust.py): it is left alone and the call runs uncached.
    """

    manifest: Manifest | None
    reason: str = ""
    damaged: bool = False
    untrusted: bool = False


def check_outputs(
    entry: str | os.PathLike[str],
    manifest: Manifest,
    verify: str,
    hash_file: HashFile | None,
) -> str:
    """Say what in an entry's folder no longer matches its manifest, or "".

    Args:
        entry: The entry folder.
        manifest: Its manifest.
        verify: `"size"` or `"full"` (also compares content digests and the
            logs' line counts).
        hash_file: `(path, size) -> digest`, needed for `"full"`.

    Returns:
        The first problem found, as a sentence; "" when the entry is whole.
    """
    problem = _check_logs(entry, manifest, verify)
    if problem:
        return problem
    for name in manifest.absent:
        # Served absent, as the tool left it: a file that appeared there
        # since (another tool writing beside its input) is not this result.
        if os.path.lexists(os.path.join(entry, name)):
            return f"output {name} was not written by the tool but exists now"
    full_hash = hash_file if verify == "full" else None
    for record in manifest.outputs:
        problem = _check_record(os.path.join(entry, record.path), record, full_hash)
        if problem:
            return problem
    return ""


def _check_logs(entry: str | os.PathLike[str], manifest: Manifest, verify: str) -> str:
    # A hit replays the captured output: a missing or truncated log would make
    # every hit fail, so it is checked like an output: its size on every hit
    # (one stat), its line count only with verify="full" (it reads the log).
    for name, lines, size in (
        (STDOUT_LOG, manifest.stdout_lines, manifest.stdout_size),
        (STDERR_LOG, manifest.stderr_lines, manifest.stderr_size),
    ):
        if not lines:
            continue
        path = os.path.join(entry, name)
        try:
            found_size = os.stat(path).st_size
        except OSError:
            return f"log {name} is missing"
        if size and found_size != size:
            return f"log {name} has {found_size} bytes, expected {size}"
        if verify == "full":
            found = _count_lines(path)
            if found != lines:
                return f"log {name} has {found} lines, expected {lines}"
    return ""


def _check_record(full: str, record: OutputRecord, hash_file: HashFile | None) -> str:
    """Check one output; `hash_file` only under `verify="full"`."""
    try:
        st = os.lstat(full)
    except OSError:
        return f"output {record.path} is missing"
    if record.link is not None:
        try:
            same = os.readlink(full) == record.link
        except OSError:
            return f"output {record.path} is not a symlink any more"
        return "" if same else f"symlink {record.path} changed"
    if not stat.S_ISREG(st.st_mode):
        # A symlink or folder of the same size where a file was recorded.
        return f"output {record.path} is not a regular file any more"
    if st.st_size != record.size:
        return f"output {record.path} has {st.st_size} bytes, expected {record.size}"
    if hash_file is not None and hash_file(full, st.st_size) != record.digest:
        return f"output {record.path} content changed"
    return ""


def _count_lines(path: str) -> int:
    """Count the lines of a gzip log; -1 if it is missing or unreadable."""
    count = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
    except (OSError, EOFError, zlib.error):
        return -1
    return count
