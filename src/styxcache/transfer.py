"""Export and import: move chosen entries between caches as one `.tar.gz`.

An export holds `styxcache-export.json` (what is inside) and the entries
under `entries/<key[:2]>/<key>/`, exactly as in a cache. Each entry is first
snapshotted with hard links, so a concurrent `gc` cannot tear it while it is
being written to the archive.

An import checks every member's name and type before writing anything
(nothing absolute, no `..`, no links leaving their entry, no devices), then
extracts into a temporary folder inside the cache directory, verifies every
entry's content against its manifest, and only then commits entries one by
one; a good entry already in the cache is never replaced.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import posixpath
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from styxcache.hashing import ContentHasher
from styxcache.inventory import EntryInfo, scan_entries
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore, remove_tree

__all__ = [
    "EXPORT_FORMAT",
    "ExportReport",
    "ImportReport",
    "TransferError",
    "export_entries",
    "import_entries",
]

_log = logging.getLogger("styxcache.transfer")

EXPORT_FORMAT = 1
INDEX_NAME = "styxcache-export.json"
ENTRIES_DIR = "entries"


class TransferError(ValueError):
    """An archive cannot be written or is not a safe, valid styxcache export."""


@dataclasses.dataclass
class ExportReport:
    """What an export wrote.

    Attributes:
        path: The archive.
        entries: The entries written.
        skipped: Keys left out, with why.
    """

    path: Path
    entries: list[EntryInfo] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Total size of the entries written."""
        return sum(e.size for e in self.entries)

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return {
            "path": str(self.path),
            "entries": [e.as_dict() for e in self.entries],
            "bytes": self.bytes,
            "skipped": self.skipped,
        }


@dataclasses.dataclass
class ImportReport:
    """What an import did.

    Attributes:
        imported: Keys committed to the cache.
        present: Keys already in the cache (left as they were).
    """

    imported: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


# Export ------------------------------------------------------------------------


def _snapshot(source: Path, target: Path) -> None:
    """Hard-link (or copy) an entry's tree, so it survives a concurrent removal.

    Raises:
        FileNotFoundError: If the entry vanished meanwhile.
    """

    def link_or_copy(src: str, dst: str) -> str:
        try:
            os.link(src, dst)
        except FileNotFoundError:
            raise
        except OSError:
            shutil.copy2(src, dst)
        return dst

    shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy)


def _escaping_link(entry: Manifest) -> str:
    for record in entry.outputs:
        if record.link is not None and not _link_stays_inside(record.path, record.link):
            return record.path
    return ""


def _link_stays_inside(path: str, link: str) -> bool:
    if posixpath.isabs(link):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
    return resolved != ".." and not resolved.startswith("../")


def export_entries(
    store: CacheStore,
    out: Path,
    *,
    used_since: float | None = None,
    select: Callable[[EntryInfo], bool] | None = None,
) -> ExportReport:
    """Write the chosen complete entries of a cache to a `.tar.gz`.

    The archive is written under a temporary name and renamed when complete,
    so a failed export leaves nothing behind.

    Args:
        store: The cache.
        out: The archive to write (replaced if it exists).
        used_since: Only entries used at or after this Unix time.
        select: Only entries for which this returns True.

    Returns:
        What was written.

    Raises:
        TransferError: If the archive's folder does not exist.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise TransferError(f"cannot write {out}: folder {out.parent} does not exist")
    report = ExportReport(out)
    chosen = [
        e
        for e in scan_entries(store)
        if e.state == "complete"
        and (used_since is None or e.last_used >= used_since)
        and (select is None or select(e))
    ]
    work = store.root / store.STAGING_DIR / f"export-{uuid.uuid4().hex[:12]}"
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        work.mkdir(parents=True)
        with tarfile.open(partial, "w:gz") as archive:
            written = _write_entries(store, archive, chosen, work, report)
            index = {
                "format": EXPORT_FORMAT,
                "created": time.time(),
                "entries": [
                    {"key": e.key, "tool": e.tool, "size": e.size} for e in written
                ],
            }
            data = json.dumps(index, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(INDEX_NAME)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            archive.addfile(info, io.BytesIO(data))
        os.replace(partial, out)
    finally:
        remove_tree(work)
        if partial.exists():
            partial.unlink()
    report.entries = written
    return report


def _write_entries(
    store: CacheStore,
    archive: tarfile.TarFile,
    chosen: Iterable[EntryInfo],
    work: Path,
    report: ExportReport,
) -> list[EntryInfo]:
    written: list[EntryInfo] = []
    for info in chosen:
        found = store.lookup(info.key, verify="size", quarantine=False)
        if found.manifest is None:
            report.skipped[info.key] = found.reason
            continue
        escaping = _escaping_link(found.manifest)
        if escaping:
            report.skipped[info.key] = f"symlink {escaping} points outside the entry"
            continue
        snapshot = work / info.key
        try:
            _snapshot(store.entry_dir(info.key), snapshot)
        except (FileNotFoundError, OSError) as exc:
            # Removed (or replaced) while we copied it: leave it out.
            remove_tree(snapshot)
            report.skipped[info.key] = f"changed during export: {exc}"
            continue
        if not _snapshot_whole(snapshot, info.key):
            remove_tree(snapshot)
            report.skipped[info.key] = "changed during export"
            continue
        name = f"{ENTRIES_DIR}/{info.key[:2]}/{info.key}"
        # Hard links may join files of one entry, never two entries: an
        # import rejects a link that leaves its entry.
        getattr(archive, "inodes", {}).clear()
        archive.add(snapshot, arcname=name, recursive=True)
        remove_tree(snapshot)
        written.append(info)
    return written


def _snapshot_whole(snapshot: Path, key: str) -> bool:
    """Check a snapshot against its own manifest (the entry may have been replaced)."""
    try:
        manifest = Manifest.read(snapshot / CacheStore.MANIFEST)
    except ManifestError:
        return False
    if manifest.key != key or not (snapshot / CacheStore.DONE_MARKER).exists():
        return False
    for record in manifest.outputs:
        full = snapshot / record.path
        try:
            st = full.lstat()
        except OSError:
            return False
        if record.link is None and st.st_size != record.size:
            return False
    return True


# Import ------------------------------------------------------------------------


def _check_member(member: tarfile.TarInfo) -> str:
    """Return the key a member belongs to ("" for the index); raise if unsafe."""
    name = member.name
    if name == INDEX_NAME:
        if not member.isfile():
            raise TransferError(f"{INDEX_NAME} in the archive is not a regular file")
        return ""
    if name.startswith("/") or posixpath.isabs(name) or "\\" in name:
        raise TransferError(f"archive member {name!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise TransferError(
            f"archive member {name!r} leaves the extraction folder (..)"
        )
    if parts == [ENTRIES_DIR] and member.isdir():
        return ""
    if parts[0] != ENTRIES_DIR or len(parts) < 2:
        raise TransferError(
            f"archive member {name!r} is not part of a styxcache export"
        )
    if len(parts) == 2:
        if not member.isdir() or len(parts[1]) != 2:
            raise TransferError(f"archive member {name!r} is not a styxcache entry")
        return ""
    shard, key = parts[1], parts[2]
    if not (len(key) >= 3 and key.isalnum() and key.startswith(shard)):
        raise TransferError(f"archive member {name!r}: {key!r} is not a cache key")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise TransferError(f"archive member {name!r} is not a file, folder or link")
    inside = "/".join(parts[3:])
    if member.issym() and not _link_stays_inside(inside or ".", member.linkname):
        raise TransferError(
            f"archive member {name!r} is a symlink to {member.linkname!r}, "
            "outside its entry"
        )
    if member.islnk():
        prefix = f"{ENTRIES_DIR}/{shard}/{key}/"
        target = member.linkname
        if not target.startswith(prefix) or ".." in target.split("/"):
            raise TransferError(
                f"archive member {name!r} is a hard link to {target!r}, "
                "outside its entry"
            )
    return key


def _read_archive(path: Path) -> tuple[tarfile.TarFile, list[str]]:
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise TransferError(f"{path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TransferError(f"{path} is not a readable tar archive: {exc}") from exc
    try:
        members = archive.getmembers()
        keys: list[str] = []
        has_index = False
        for member in members:
            key = _check_member(member)
            has_index = has_index or member.name == INDEX_NAME
            if key and key not in keys:
                keys.append(key)
        if not has_index:
            raise TransferError(
                f"{path} is not a styxcache export (no {INDEX_NAME}); "
                "make one with `styxcache export`"
            )
        index = _read_index(archive)
        listed = {str(item.get("key")) for item in index.get("entries", [])}
        if listed != set(keys):
            raise TransferError(
                f"{path}: the entries in the archive do not match its {INDEX_NAME}"
            )
    except (tarfile.TarError, OSError, EOFError) as exc:
        archive.close()
        raise TransferError(f"{path} is damaged: {exc}") from exc
    except BaseException:
        archive.close()
        raise
    return archive, keys


def _read_index(archive: tarfile.TarFile) -> dict[str, Any]:
    handle = archive.extractfile(INDEX_NAME)
    if handle is None:
        raise TransferError(f"{INDEX_NAME} in the archive is not a regular file")
    try:
        data = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransferError(f"{INDEX_NAME} in the archive is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else data
        raise TransferError(
            f"unknown export format {found!r} (expected {EXPORT_FORMAT})"
        )
    entries = data.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TransferError(f"{INDEX_NAME} in the archive has no list of entries")
    return data


def import_entries(
    store: CacheStore,
    source: Path,
    *,
    on_verified: Callable[[str], None] | None = None,
) -> ImportReport:
    """Import the entries of an export into a cache, after verifying all of them.

    Nothing is committed unless every member is safe and every entry's
    content matches its manifest; the error then names the problem.

    Args:
        store: The cache to import into (created if needed).
        source: The archive made by `export_entries`.
        on_verified: Called with each key once its content is verified.

    Returns:
        What was imported and what was already there.

    Raises:
        TransferError: If the archive is unsafe, not an export, or holds a
            damaged entry.
    """
    archive, keys = _read_archive(Path(source))
    with archive:
        store.root.mkdir(parents=True, exist_ok=True)
        temp = store.root / store.STAGING_DIR / f"import-{uuid.uuid4().hex[:12]}"
        temp.mkdir(parents=True)
        try:
            # Our own checks above already reject what the "data" filter
            # would; it is a second line where Python has it (3.10.12+).
            safety: dict[str, Any] = (
                {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            )
            try:
                archive.extractall(temp, **safety)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise TransferError(f"{source} cannot be extracted: {exc}") from exc
            staged = CacheStore(temp / ENTRIES_DIR)
            manifests = _verify_all(staged, keys, on_verified)
            return _commit_all(store, staged, manifests)
        finally:
            remove_tree(temp)


def _verify_all(
    staged: CacheStore, keys: list[str], on_verified: Callable[[str], None] | None
) -> dict[str, Manifest]:
    hasher = ContentHasher()
    manifests: dict[str, Manifest] = {}
    problems: list[str] = []
    for key in keys:
        found = staged.lookup(
            key, verify="full", hash_file=hasher.hash_file, quarantine=False
        )
        if found.manifest is None:
            problems.append(f"{key[:12]}: {found.reason}")
            continue
        manifests[key] = found.manifest
        if on_verified is not None:
            on_verified(key)
    if problems:
        raise TransferError(
            f"{len(problems)} of {len(keys)} entries in the archive failed "
            "verification; nothing was imported: " + "; ".join(problems)
        )
    return manifests


def _commit_all(
    store: CacheStore, staged: CacheStore, manifests: dict[str, Manifest]
) -> ImportReport:
    report = ImportReport()
    for key, manifest in manifests.items():
        # lookup() quarantines a damaged entry, so a good one is never replaced.
        if store.lookup(key, verify="size").manifest is not None:
            report.present.append(key)
            continue
        entry_mtime = staged.entry_dir(key).stat().st_mtime
        target = store.commit(staged.entry_dir(key), key)
        try:
            if Manifest.read(target / store.MANIFEST).key != key:
                raise ManifestError("manifest is for another key")
        except ManifestError as exc:  # pragma: no cover - commit() is atomic
            raise TransferError(f"entry {key[:12]} was not committed: {exc}") from exc
        store.record_tool(manifest.tool, key)
        # Keep the exported last use, so LRU order survives the move.
        os.utime(target, (time.time(), min(entry_mtime, time.time())))
        report.imported.append(key)
        _log.info("imported entry %s (%s)", key[:12], manifest.tool)
    return report
