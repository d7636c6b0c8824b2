"""The catalog: what each entry holds, so maintenance need not re-read every manifest.

An entry never changes after its commit (a replacement is a new folder), so
its tool, size, file count, creation time and run time can be written down
once. Each process appends one tab-separated line per commit to its own
file, `<root>/.catalog/<host>-<pid>-<random>.tsv` (no lock, like the event
files); a scan folds them into a snapshot (`snapshot-<random>.tsv`, written
whole and renamed into place) and removes the files it folded whose writers
have exited.

A line describes a folder, not a key: it carries the entry folder's inode,
and a scan uses it only while the folder at that key still has that inode
(`os.DirEntry.inode()` costs no system call). A folder the catalog does not
know, or knows under another inode (an entry replaced, imported, or made
by an older styxcache), is described from its manifest as before. The
catalog can be deleted at any time; it only makes scans fast.

It also keeps an index of last uses, so a page of `ls` need not `lstat`
every entry: a row carries the folder's modification time when it was
written, and every hit appends a use line (`record_use`). The index is a
hint: `inventory.page_by_last_use` checks the rows it shows against the
folders, and falls back to a full scan when they disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

from styxcache.catalog_files import (
    CATALOG_DIR,
    CHECKS_SUFFIX,
    NOFOLLOW,
    SUMMARY_SUFFIX,
    append_checks,
    append_rows,
    foldable,
    record_use,
    write_snapshot,
)
from styxcache.catalog_rows import (
    CatalogRow,
    CatalogRows,
)
from styxcache.entry_check import ENTRY_FILES, MANIFEST_FILE
from styxcache.manifest import Manifest, OutputRecord, OutsideRecord, plain

__all__ = [
    "CATALOG_DIR",
    "CatalogRow",
    "CatalogRows",
    "LoadedCatalog",
    "append_checks",
    "append_rows",
    "checks_of",
    "foldable",
    "load_catalog",
    "manifest_stamp",
    "record_commit",
    "record_use",
    "row_for",
    "row_from",
    "stamp_of",
    "write_snapshot",
]

_log = logging.getLogger("styxcache.catalog")


@dataclasses.dataclass
class LoadedCatalog:
    """The rows of a cache's catalog and the files they came from.

    Attributes:
        rows: The newest row per key.
        files: The catalog files read (names inside `.catalog/`).
    """

    rows: CatalogRows
    files: list[str]


def load_catalog(root: Path, *, checks: bool = False) -> LoadedCatalog:
    """Read the catalog files of a cache (snapshots first, then appends).

    Args:
        root: The cache directory.
        checks: Also read what `verify` needs (much larger).

    Returns:
        The rows and the files read; empty when there is no catalog (or it
        is a planted link, which is never followed).
    """
    folder = root / CATALOG_DIR
    rows = CatalogRows()
    suffixes = (SUMMARY_SUFFIX, CHECKS_SUFFIX) if checks else (SUMMARY_SUFFIX,)
    try:
        if os.path.islink(folder):
            return LoadedCatalog(rows, [])
        names = sorted(
            (n for n in os.listdir(folder) if n.endswith(suffixes)),
            key=lambda n: (not n.startswith("snapshot-"), n),
        )
        trusted = _trusted_writers(root)
    except OSError:
        return LoadedCatalog(rows, [])
    after = ""
    kept: list[str] = []
    for name in names:
        try:
            with open(
                os.path.join(folder, name),
                encoding="utf-8",
                errors="replace",
                opener=_no_follow,
            ) as handle:
                st = os.fstat(handle.fileno())
                if st.st_uid not in trusted:
                    _log.debug("ignoring catalog file %s: not a trusted user's", name)
                    continue
                text = handle.read()
                written = st.st_mtime_ns
        except OSError:
            continue
        kept.append(name)
        is_checks = name.endswith(CHECKS_SUFFIX)
        if not name.startswith("snapshot-"):
            rows.add_text(text, checks=is_checks, after=after)
            continue
        rows.add_text(text, checks=is_checks)
        if not is_checks:
            # Snapshots come first: after them, `after` is the oldest's time.
            after = min(after or f"{written:020d}", f"{written:020d}")
    return LoadedCatalog(rows, kept)


def _trusted_writers(root: Path) -> frozenset[int]:
    """The users whose catalog files are read.

    This process's, the cache folder's owner and root (who could rewrite the
    entries anyway). In a shared cache any member can add a file to
    `.catalog/`; a forged `.chk` line would make `verify` call a damaged
    entry whole. Other members' files are skipped: their entries are
    described from the manifests.
    """
    return frozenset((os.geteuid(), os.stat(root).st_uid, 0))


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | NOFOLLOW)


MAX_CHECKED_OUTPUTS = 256
"""Entries with more outputs keep no `checks` (verify reads their manifest)."""


def manifest_stamp(path: str | os.PathLike[str]) -> str:
    """Return a manifest file's `inode:size:mtime_ns`, or "-".

    Args:
        path: The manifest file.
    """
    try:
        st = os.lstat(path)  # a link is never a manifest: its stamp matches none
    except OSError:
        return "-"
    return stamp_of(st)


def stamp_of(st: os.stat_result) -> str:
    """`manifest_stamp` from the manifest file's stat record (an import has it).

    Args:
        st: The manifest file's `stat` (or `fstat`).
    """
    # Not the ctime: `export` hard-links every file (a new link count is a
    # new ctime), and verify would then read every manifest again.
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def checks_of(manifest: Manifest) -> str:
    """Return the manifest without its key payload, as compact JSON, or "-".

    Args:
        manifest: The manifest.
    """
    if len(manifest.outputs) > MAX_CHECKED_OUTPUTS:
        return "-"
    data = _fields_of(manifest)
    data["payload"], data["fingerprint_parts"] = {}, {}
    # Compact JSON escapes tabs and newlines: the line stays one line.
    return _COMPACT.encode(data)


def _fields_of(manifest: Manifest) -> dict[str, object]:
    """`plain(manifest)` as a fresh dict, from the instances' own dicts when plain.

    Every miss's commit and every imported entry builds one: a frozen
    dataclass's `__dict__` holds its fields in order, and an output record's
    fields are leaves, so `json` can take them as they are (half the cost of
    `plain`). Anything else (a subclass, an extra attribute) goes through `plain`.
    """
    own = manifest.__dict__
    records = (*manifest.outputs, *manifest.outside)
    if (
        type(manifest) is Manifest
        and len(own) == len(_MANIFEST_FIELDS)
        and all(_LEAF_RECORDS.get(type(r)) == len(r.__dict__) for r in records)
    ):
        data = dict(own)
        data["outputs"] = [r.__dict__ for r in manifest.outputs]
        data["outside"] = [r.__dict__ for r in manifest.outside]
        return data
    return {f.name: plain(getattr(manifest, f.name)) for f in _MANIFEST_FIELDS}


_MANIFEST_FIELDS = dataclasses.fields(Manifest)
_LEAF_RECORDS: dict[type, int] = {
    kind: len(dataclasses.fields(kind)) for kind in (OutputRecord, OutsideRecord)
}
"""Record types whose fields are all JSON leaves, with their field counts."""
_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""`json.dumps(..., separators=(",", ":"))` without building an encoder per call."""


def row_for(
    key: str, entry: str | os.PathLike[str], manifest: Manifest
) -> CatalogRow | None:
    """Describe a committed entry folder for the catalog; None if it is gone.

    Args:
        key: The entry's key.
        entry: Its folder.
        manifest: Its manifest (as read from, or written to, the folder).
    """
    try:
        st = os.lstat(entry)
    except OSError:
        return None
    extra = 0
    for name in ENTRY_FILES:
        with contextlib.suppress(OSError):
            extra += os.lstat(os.path.join(entry, name)).st_size
    stamp = manifest_stamp(os.path.join(entry, MANIFEST_FILE))
    return row_from(key, st, manifest, extra, stamp)


def row_from(
    key: str, folder: os.stat_result, manifest: Manifest, extra: int, stamp: str
) -> CatalogRow:
    """`row_for` from facts the caller already has (an import knows them all).

    Args:
        key: The entry's key.
        folder: The entry folder's `lstat`, taken after its last-use time was set.
        manifest: Its manifest.
        extra: Bytes of styxcache's own files in the entry (manifest, logs,
            done marker).
        stamp: The manifest file's `manifest_stamp`.
    """
    return CatalogRow(
        key=key,
        inode=folder.st_ino,
        tool=manifest.tool,
        size=manifest.total_size + extra,
        files=len(manifest.outputs),
        created=manifest.created,
        duration_s=manifest.duration_s,
        used_ns=folder.st_mtime_ns,
        stamp=stamp,
        checks=checks_of(manifest) if manifest.key == key else "-",
    )


def record_commit(root: Path, key: str, entry: Path, manifest: Manifest) -> None:
    """Catalog an entry just committed; never raises.

    Args:
        root: The cache directory.
        key: The entry's key.
        entry: Its folder (as `CacheStore.commit` returned it).
        manifest: Its manifest.
    """
    try:
        row = row_for(key, entry, manifest)
    except (OSError, TypeError, ValueError) as exc:
        _log.debug("cannot catalog %s: %s", key[:12], exc)
        return
    if row is not None:
        append_rows(root, [row])
