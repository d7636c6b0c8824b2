"""Inventory: what a cache directory holds, entry by entry.

An entry's size is what it occupies in the cache (its outputs as recorded in
the manifest, plus the manifest and logs), its creation time is the commit
time in the manifest, and its last use is the modification time of its
folder, which every hit bumps (atime is useless on `noatime` mounts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore

__all__ = [
    "EntryInfo",
    "EntryState",
    "KeyPrefixError",
    "describe_entry",
    "folder_size",
    "resolve_key",
    "scan_entries",
]

_log = logging.getLogger("styxcache.inventory")

EntryState = Literal["complete", "uncommitted", "incomplete"]


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """One entry folder of a cache, as seen without verifying its outputs.

    Attributes:
        key: The cache key.
        tool: `package/id`, or `""` when the manifest is unreadable.
        size: Bytes the entry occupies (outputs, manifest and logs).
        files: Number of output files.
        created: Unix time of the commit (folder mtime when unknown).
        last_used: Unix time of the last hit or of the commit: the entry
            folder's modification time.
        duration_s: How long the tool ran (what a hit saves).
        state: `"complete"` (done marker present), `"uncommitted"` (a run
            that must not be served) or `"incomplete"` (anything else).
    """

    key: str
    tool: str
    size: int
    files: int
    created: float
    last_used: float
    duration_s: float
    state: EntryState

    def as_dict(self) -> dict[str, object]:
        """Return the record as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


class KeyPrefixError(LookupError):
    """A key prefix matches no entry, or more than one."""


def folder_size(path: Path) -> int:
    """Return the total size of the files under a folder (symlinks not followed).

    Args:
        path: A folder; a missing one counts 0.
    """
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def describe_entry(store: CacheStore, key: str) -> EntryInfo | None:
    """Return what an entry folder holds, or None when it is gone.

    Args:
        store: The cache.
        key: The entry's key.
    """
    entry = store.entry_dir(key)
    try:
        last_used = entry.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        manifest = Manifest.read(entry / store.MANIFEST)
    except ManifestError:
        manifest = None
    if manifest is None:
        state: EntryState = (
            "uncommitted" if (entry / store.UNCOMMITTED).exists() else "incomplete"
        )
        return EntryInfo(
            key, "", folder_size(entry), 0, last_used, last_used, 0.0, state
        )
    extra = 0
    for name in store.RESERVED:
        try:
            extra += (entry / name).stat().st_size
        except OSError:
            continue
    if (entry / store.DONE_MARKER).exists():
        state = "complete"
    elif (entry / store.UNCOMMITTED).exists():
        state = "uncommitted"
    else:
        state = "incomplete"
    return EntryInfo(
        key=key,
        tool=manifest.tool,
        size=manifest.total_size + extra,
        files=len(manifest.outputs),
        created=manifest.created,
        last_used=last_used,
        duration_s=manifest.duration_s,
        state=state,
    )


def scan_entries(store: CacheStore) -> Iterator[EntryInfo]:
    """Yield every entry folder of a cache, in key order.

    Entries removed while the scan runs are skipped.

    Args:
        store: The cache.
    """
    for key in store.iter_keys():
        try:
            info = describe_entry(store, key)
        except ValueError:
            _log.debug("skipping folder %s: not a cache key", key)
            continue
        if info is not None:
            yield info


def resolve_key(store: CacheStore, prefix: str) -> str:
    """Return the one key of the cache that starts with `prefix`.

    Args:
        store: The cache.
        prefix: A full key or a unique prefix of at least 2 characters.

    Returns:
        The full key.

    Raises:
        KeyPrefixError: If the prefix is too short, matches no entry, or is
            ambiguous.
    """
    text = prefix.strip().lower()
    if len(text) < 2 or not text.isalnum():
        raise KeyPrefixError(
            f"{prefix!r} is not a key prefix: "
            "give at least 2 letters or digits of a key"
        )
    shard = store.root / text[:2]
    try:
        names = sorted(e.name for e in os.scandir(shard) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        names = []
    matches = [name for name in names if name.startswith(text)]
    if not matches:
        raise KeyPrefixError(
            f"no entry with a key starting with {prefix!r} in {store.root}"
        )
    if len(matches) > 1:
        shown = ", ".join(m[:16] for m in matches[:5])
        raise KeyPrefixError(
            f"key prefix {prefix!r} is ambiguous: {len(matches)} entries match "
            f"({shown}); give more characters"
        )
    return matches[0]
