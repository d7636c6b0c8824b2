"""Import, last step: commit verified entries, then index and catalog them.

A verified entry is renamed into place (a good entry already there is kept,
a shard folder that is a symlink is not written through), its exported last
use restored; the tool index and the catalog get one batched append each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

from styxcache.catalog import (
    CatalogRow,
    append_rows,
    manifest_stamp,
    row_for,
    row_from,
)
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore
from styxcache.transfer.check import Plan
from styxcache.transfer.common import ImportReport, TransferError
from styxcache.walk import real_dir

__all__ = ["Committed", "Committer", "commit_entries", "report"]

_log = logging.getLogger("styxcache.transfer")


class Committed(NamedTuple):
    """A slice committed: the report's parts, in archive order."""

    imported: list[tuple[str, str]]
    """Keys and their tools."""
    present: list[str]
    skipped: dict[str, str]


@dataclasses.dataclass
class Committer:
    """Commits verified entries (their tool index and catalog rows come after)."""

    store: CacheStore
    plan: Plan
    staged: str
    """The folder holding the verified entries, one folder per key."""
    manifest_stamps: dict[str, str]
    """Each verified manifest file's `catalog.manifest_stamp`, as written."""
    extra: dict[str, int]
    """Bytes of styxcache's own files per entry."""
    now: float = dataclasses.field(default_factory=time.time)
    unsafe: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = os.fspath(self.store.root)

    def unsafe_shard(self, key: str) -> str:
        """Why the key's shard folder must not be written through ("" if fine)."""
        shard = key[:2]
        if shard not in self.unsafe:
            path = self.store.root / shard
            self.unsafe[shard] = (
                f"{path} is not a folder (a symlink?): not followed"
                if os.path.lexists(path) and not real_dir(path)
                else ""
            )
        return self.unsafe[shard]

    def present(self, key: str) -> bool:
        """Whether a good entry is there already (a damaged one is quarantined)."""
        return (
            os.path.lexists(f"{self.root}/{key[:2]}/{key}")
            and self.store.lookup(key, verify="size").manifest is not None
        )

    def commit(self, key: str, manifest: Manifest) -> CatalogRow | None:
        """Rename one verified entry into place; return its catalog row."""
        staged = f"{self.staged}/{key}"
        target = f"{self.root}/{key[:2]}/{key}"
        try:
            # What `CacheStore.commit` does first, by name: the staged entry
            # has its done marker (the first pass required it) and its key
            # was checked. Anything else (no shard folder yet, a twin's
            # entry there) goes the store's way.
            os.rename(staged, target)
            ours = True
        except OSError:
            target = os.fspath(self.store.commit(Path(staged), key))
            ours = False
        # Keep the exported last use, so LRU order survives the move.
        used = min(self.plan.mtimes.get(key, self.now), self.now)
        os.utime(target, (self.now, used))
        stamp = self.manifest_stamps[key]
        if ours or manifest_stamp(f"{target}/{CacheStore.MANIFEST}") == stamp:
            # Renamed into place, the verified manifest file is the entry's.
            return row_from(key, os.lstat(target), manifest, self.extra[key], stamp)
        return self._twin(key, Path(target))

    def _twin(self, key: str, target: Path) -> CatalogRow | None:
        """A twin committed this key first: its entry stays; check it is for it."""
        try:
            manifest = Manifest.read(target / CacheStore.MANIFEST)
            if manifest.key != key:
                raise ManifestError("manifest is for another key")
        except (OSError, ManifestError) as exc:  # pragma: no cover - atomic
            raise TransferError(f"entry {key[:12]} was not committed: {exc}") from exc
        return row_for(key, target, manifest)


def commit_entries(
    committer: Committer, keys: list[str], manifests: dict[str, Manifest]
) -> Committed:
    """Commit verified entries, then index and catalog them, one batch each.

    Run by each worker for its slice: the tool index and the catalog are
    written for concurrent writers (one append each; a catalog file per
    process).

    Args:
        committer: For the staged entries.
        keys: The entries, in archive order.
        manifests: Their checked manifests.
    """
    done = Committed([], [], {})
    tools: dict[str, list[str]] = {}
    rows: list[CatalogRow] = []
    for key in keys:
        manifest = manifests[key]
        unsafe = committer.unsafe_shard(key)
        if unsafe:
            done.skipped[key] = unsafe
        elif committer.present(key):
            done.present.append(key)
        else:
            row = committer.commit(key, manifest)
            if row is not None:
                rows.append(row)
            done.imported.append((key, manifest.tool))
            tools.setdefault(manifest.tool, []).append(key)
    for tool, batch in tools.items():
        committer.store.record_tool_keys(tool, batch)
    if rows:
        append_rows(committer.store.root, rows)
    return done


def report(committed: list[Committed]) -> ImportReport:
    """The import's report (and its log lines), in archive order."""
    done = ImportReport()
    for part in committed:
        for key, reason in part.skipped.items():
            _log.warning("not importing %s: %s", key[:12], reason)
        done.skipped.update(part.skipped)
        done.present.extend(part.present)
        for key, tool in part.imported:
            _log.info("imported entry %s (%s)", key[:12], tool)
            done.imported.append(key)
    return done
