"""Export and import: move chosen entries between caches as one `.tar.gz`.

An export holds `styxcache-export.json` (what is inside) and the entries
under `entries/<key[:2]>/<key>/`, exactly as in a cache. Every file of an
entry is opened before any is written to the archive, and the entry checked
whole against its manifest, so a concurrent `gc` cannot tear it.

An import checks the whole archive before writing anything: every member's
name, type and size, every link resolved through the others, and every
entry's manifest (its key payload must hash to its key; it must list exactly
the entry's files). It then extracts with its own code (not `extractall`)
into a private folder inside the cache directory, verifies every entry's
content against its manifest, and only then commits entries one by one; a
good entry already in the cache is never replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from styxcache.catalog import record_commit
from styxcache.hashing import ContentHasher
from styxcache.inventory import EntryInfo, scan_entries
from styxcache.key import key_of
from styxcache.manifest import Manifest, ManifestError
from styxcache.store import CacheStore, remove_tree
from styxcache.trust import seal_entry
from styxcache.walk import housekeeping_dir, is_cache_key, is_shard_name, real_dir

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
        skipped: Keys not imported because the cache is unsafe there, with why.
    """

    imported: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


# Export ------------------------------------------------------------------------


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
    allow_empty: bool = True,
) -> ExportReport:
    """Write the chosen complete entries of a cache to a `.tar.gz`.

    The archive is written under a temporary name and renamed when complete,
    so a failed export leaves nothing behind.

    Args:
        store: The cache.
        out: The archive to write (replaced if it exists).
        used_since: Only entries used at or after this Unix time.
        select: Only entries for which this returns True.
        allow_empty: With False, refuse (and write nothing) when no entry
            matches, instead of writing an archive without entries.

    Returns:
        What was written.

    Raises:
        TransferError: If the archive's folder does not exist, or nothing
            matched and `allow_empty` is False.
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
    if not chosen and not allow_empty:
        raise TransferError(
            f"nothing to export: no complete entry of {store.root} matches; "
            f"{out} was not written"
        )
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        # Level 6, gzip's own default: level 9 costs twice the time for a
        # few percent on cache entries.
        with tarfile.open(partial, "w:gz", compresslevel=6) as archive:
            written = _write_entries(store, archive, chosen, report)
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
        if partial.exists():
            partial.unlink()
    report.entries = written
    return report


def _write_entries(
    store: CacheStore,
    archive: tarfile.TarFile,
    chosen: Iterable[EntryInfo],
    report: ExportReport,
) -> list[EntryInfo]:
    written: list[EntryInfo] = []
    for info in chosen:
        entry = store.entry_dir(info.key)
        before = _stat_or_none(entry)
        found = store.lookup(info.key, verify="size", quarantine=False)
        if found.manifest is None:
            report.skipped[info.key] = found.reason
            continue
        escaping = _escaping_link(found.manifest)
        if escaping:
            report.skipped[info.key] = f"symlink {escaping} points outside the entry"
            continue
        if before is None or not stat.S_ISDIR(before.st_mode):
            report.skipped[info.key] = "replaced by a link or file: not followed"
            continue
        members = _open_entry(entry, f"{ENTRIES_DIR}/{info.key[:2]}/{info.key}")
        try:
            # Every file is open: a concurrent gc cannot tear what is written.
            # The entry must still be the folder that was looked up, whole.
            after = _stat_or_none(entry)
            if (
                members is None
                or after is None
                or after.st_ino != before.st_ino
                or not _members_whole(members, found.manifest)
            ):
                report.skipped[info.key] = "changed during export"
                continue
            for member, handle in members:
                archive.addfile(member, handle)
        finally:
            for _, handle in members or ():
                if handle is not None:
                    handle.close()
        written.append(info)
    return written


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _open_entry(
    entry: Path, name: str
) -> list[tuple[tarfile.TarInfo, IO[bytes] | None]] | None:
    """Describe an entry's tree as archive members, every file opened.

    Members are built from `lstat` records (no owner look-ups, links never
    followed); None when the entry changes or vanishes meanwhile.
    """
    members: list[tuple[tarfile.TarInfo, IO[bytes] | None]] = []
    try:
        for folder, dirs, files in os.walk(entry):
            rel = os.path.relpath(folder, entry)
            prefix = name if rel == "." else f"{name}/{rel.replace(os.sep, '/')}"
            folder_info = _member(prefix, os.lstat(folder))
            members.append((folder_info, None))
            # os.walk lists links to folders with the folders: archive them
            # as the links they are, never descend.
            for child in [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                dirs.remove(child)
                files.append(child)
            dirs.sort()
            for child in sorted(files):
                path = os.path.join(folder, child)
                st = os.lstat(path)
                member = _member(f"{prefix}/{child}", st)
                if stat.S_ISLNK(st.st_mode):
                    member.linkname = os.readlink(path)
                    members.append((member, None))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    _close_all(members)
                    return None  # a device or fifo: never part of an entry
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                handle = os.fdopen(fd, "rb")
                opened = os.fstat(fd)
                members.append((member, handle))
                if opened.st_ino != st.st_ino or opened.st_size != st.st_size:
                    _close_all(members)
                    return None
    except OSError:
        _close_all(members)
        return None
    return members


def _close_all(members: list[tuple[tarfile.TarInfo, IO[bytes] | None]]) -> None:
    for _, handle in members:
        if handle is not None:
            handle.close()


def _member(name: str, st: os.stat_result) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(st.st_mode) & 0o777
    member.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        member.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        member.type = tarfile.SYMTYPE
    else:
        member.size = st.st_size
    return member


def _members_whole(
    members: list[tuple[tarfile.TarInfo, IO[bytes] | None]], manifest: Manifest
) -> bool:
    """Check the opened files against the manifest the lookup verified."""
    files = {m.name.split("/", 3)[3]: m for m, _ in members if m.name.count("/") >= 3}
    for name in (CacheStore.MANIFEST, CacheStore.DONE_MARKER):
        if name not in files:
            return False
    for record in manifest.outputs:
        member = files.get(record.path)
        if member is None:
            return False
        if record.link is not None:
            if not member.issym() or member.linkname != record.link:
                return False
        elif not member.isfile() or member.size != record.size:
            return False
    return True


# Import ------------------------------------------------------------------------

MAX_LINK_HOPS = 40
"""Symlinks followed while resolving one link of an archive (as the kernel's limit)."""

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class _Member:
    """One member of an entry, as checked: where it goes and what it is."""

    info: tarfile.TarInfo
    key: str
    inside: str
    """Path inside the entry ("" for the entry folder itself)."""


@dataclasses.dataclass
class _Plan:
    """A fully checked archive: what to write, in archive order."""

    keys: list[str]
    members: list[_Member]
    manifests: dict[str, Manifest]
    total: int


def _fail_name(name: str, problem: str) -> TransferError:
    return TransferError(f"archive member {name!r} {problem}")


def _split_member(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """Return `(key, path inside the entry)`; None for the index and folders above."""
    name = member.name
    if name == INDEX_NAME:
        if not member.isfile():
            raise TransferError(f"{INDEX_NAME} in the archive is not a regular file")
        return None
    if name.startswith("/") or posixpath.isabs(name) or "\\" in name:
        raise _fail_name(name, "has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _fail_name(name, "leaves the extraction folder (..)")
    if any(part in ("", ".") for part in parts) or "\0" in name:
        raise _fail_name(name, "has an empty or '.' path component")
    if parts == [ENTRIES_DIR] and member.isdir():
        return None
    if parts[0] != ENTRIES_DIR or len(parts) < 2:
        raise _fail_name(name, "is not part of a styxcache export")
    if len(parts) == 2:
        if not member.isdir() or not is_shard_name(parts[1]):
            raise _fail_name(name, "is not a styxcache entry")
        return None
    shard, key = parts[1], parts[2]
    if not (is_cache_key(key) and key.startswith(shard)):
        raise _fail_name(name, f"is in {key!r}, which is not a cache key")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise _fail_name(name, "is not a file, folder or link (device or fifo)")
    inside = "/".join(parts[3:])
    if not inside and not member.isdir():
        raise _fail_name(name, "stands where an entry folder should be")
    return key, inside


def _resolve_in_entry(
    start: str, links: dict[str, str], kinds: dict[str, str], name: str
) -> str:
    """Resolve a link fully inside its entry's tree as the archive would build it.

    Every hop is checked: a chain of links that each look harmless but
    together leave the entry is refused.

    Args:
        start: The link's own path inside the entry.
        links: Every symlink of the entry: path -> target text.
        kinds: Every member of the entry: path -> "file", "dir" or "link".
        name: The member's name, for errors.

    Returns:
        The final path inside the entry ("" for the entry itself).
    """
    pending = links[start]
    base = posixpath.dirname(start)
    hops = 0
    while True:
        if posixpath.isabs(pending):
            raise _fail_name(
                name, f"is a symlink to {links[start]!r}, outside its entry"
            )
        parts: list[str] = [p for p in base.split("/") if p]
        remaining = [p for p in pending.split("/") if p not in ("", ".")]
        restart = False
        while remaining:
            part = remaining.pop(0)
            if part == "..":
                if not parts:
                    raise _fail_name(
                        name, f"is a symlink to {links[start]!r}, outside its entry"
                    )
                parts.pop()
                continue
            parts.append(part)
            here = "/".join(parts)
            if kinds.get(here) == "link":
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _fail_name(name, "is part of a symlink loop")
                parts.pop()
                base = "/".join(parts)
                pending = "/".join([links[here], *remaining])
                restart = True
                break
        if not restart:
            return "/".join(parts)


def _check_links(members: list[_Member]) -> None:
    """Refuse links that resolve outside their entry, and paths through links."""
    by_key: dict[str, dict[str, str]] = {}
    links: dict[str, dict[str, str]] = {}
    for item in members:
        kind = "dir" if item.info.isdir() else "link" if item.info.issym() else "file"
        kinds = by_key.setdefault(item.key, {})
        if item.inside in kinds:
            raise _fail_name(item.info.name, "appears twice in the archive")
        kinds[item.inside] = kind
        if kind == "link":
            links.setdefault(item.key, {})[item.inside] = item.info.linkname
    earlier: set[str] = set()
    for item in members:
        kinds = by_key[item.key]
        parents = item.inside.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            above = "/".join(parents[:depth])
            if kinds.get(above) == "link":
                raise _fail_name(
                    item.info.name, f"is written through the symlink {above!r}"
                )
        if item.info.issym():
            _resolve_in_entry(item.inside, links[item.key], kinds, item.info.name)
        elif item.info.islnk():
            prefix = f"{ENTRIES_DIR}/{item.key[:2]}/{item.key}/"
            target = item.info.linkname
            inside = target[len(prefix) :] if target.startswith(prefix) else None
            if inside is None or ".." in target.split("/"):
                raise _fail_name(
                    item.info.name,
                    f"is a hard link to {target!r}, outside its entry",
                )
            if kinds.get(inside) != "file" or target not in earlier:
                raise _fail_name(
                    item.info.name,
                    f"is a hard link to {target!r}, which is not an earlier file "
                    "of its entry",
                )
        elif item.info.isfile():
            earlier.add(item.info.name)


def _check_entry(
    key: str,
    manifest: Manifest,
    files: dict[str, tarfile.TarInfo],
    sizes: dict[str, int],
) -> None:
    """Check an entry's members against its manifest (before anything is written)."""
    short = key[:12]
    try:
        recomputed = key_of(manifest.payload)
    except (TypeError, ValueError) as exc:
        raise TransferError(
            f"entry {short}: its key payload cannot be hashed: {exc}"
        ) from exc
    if manifest.key != key or recomputed != key:
        raise TransferError(
            f"entry {short}: its manifest's key payload hashes to {recomputed[:12]}, "
            "not to its key; refusing a forged or damaged entry"
        )
    if CacheStore.DONE_MARKER not in files:
        raise TransferError(f"entry {short} has no done marker: it is not complete")
    if CacheStore.UNCOMMITTED in files:
        raise TransferError(f"entry {short} is an uncommitted run")
    listed = {record.path: record for record in manifest.outputs}
    for inside, info in files.items():
        if inside in CacheStore.RESERVED:
            continue
        record = listed.get(inside)
        if record is None:
            raise TransferError(
                f"entry {short}: file {inside!r} is not listed in its manifest"
            )
        if record.link is not None:
            if not info.issym() or info.linkname != record.link:
                raise TransferError(
                    f"entry {short}: {inside!r} should be a symlink to {record.link!r}"
                )
        elif info.issym() or sizes.get(inside) != record.size:
            raise TransferError(
                f"entry {short}: {inside!r} should be a file of {record.size} bytes"
            )
    for path in listed:
        if path not in files:
            raise TransferError(f"entry {short}: output {path!r} is missing")
    for log, lines in (
        (CacheStore.STDOUT_LOG, manifest.stdout_lines),
        (CacheStore.STDERR_LOG, manifest.stderr_lines),
    ):
        if lines and log not in files:
            raise TransferError(f"entry {short}: its log {log} is missing")


def _plan_import(archive: tarfile.TarFile, path: Path, limit: int | None) -> _Plan:
    """Check every member, link, size and manifest; write nothing."""
    members: list[_Member] = []
    keys: list[str] = []
    seen: set[str] = set()
    name_of: dict[str, str] = {}
    has_index = False
    total = 0
    manifest_text: dict[str, bytes] = {}
    index_text = b""
    # One pass over the (compressed) stream: small manifests and the index
    # are read as they go by, so the archive is decompressed only twice.
    for info in archive:
        if info.name in name_of:
            raise _fail_name(info.name, "appears twice in the archive")
        name_of[info.name] = "file" if info.isfile() else "other"
        where = _split_member(info)
        has_index = has_index or info.name == INDEX_NAME
        if info.isfile():
            total += info.size
            if limit is not None and total > limit:
                raise TransferError(
                    f"{path} unpacks to more than {limit} bytes (the limit); "
                    "nothing was imported"
                )
        if info.name == INDEX_NAME:
            index_text = _member_bytes(archive, info)
        if where is None:
            continue
        key, inside = where
        if inside == CacheStore.MANIFEST and info.isfile():
            manifest_text[key] = _member_bytes(archive, info)
        if key not in seen:  # a set: a list made this quadratic
            seen.add(key)
            keys.append(key)
        members.append(_Member(info, key, inside))
    if not has_index:
        raise TransferError(
            f"{path} is not a styxcache export (no {INDEX_NAME}); "
            "make one with `styxcache export`"
        )
    index = _read_index(index_text)
    listed = {str(item.get("key")) for item in index.get("entries", [])}
    if listed != set(keys):
        raise TransferError(
            f"{path}: the entries in the archive do not match its {INDEX_NAME}"
        )
    _check_links(members)
    manifests: dict[str, Manifest] = {}
    files: dict[str, dict[str, tarfile.TarInfo]] = {key: {} for key in keys}
    sizes: dict[str, dict[str, int]] = {key: {} for key in keys}
    by_name = {m.info.name: m for m in members}
    for item in members:
        if item.info.isdir():
            continue
        files[item.key][item.inside] = item.info
        source = by_name[item.info.linkname].info if item.info.islnk() else item.info
        sizes[item.key][item.inside] = source.size
        if item.inside == CacheStore.MANIFEST:
            if not item.info.isfile():
                raise _fail_name(item.info.name, "is not a regular file")
            manifests[item.key] = _parse_manifest(item, manifest_text[item.key])
    for key in keys:
        if key not in manifests:
            raise TransferError(f"entry {key[:12]} in the archive has no manifest")
        _check_entry(key, manifests[key], files[key], sizes[key])
    return _Plan(keys, members, manifests, total)


def _member_bytes(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    if info.size > 64 << 20:
        raise _fail_name(info.name, "is too large for a manifest or index")
    handle = archive.extractfile(info)
    if handle is None:
        raise _fail_name(info.name, "is not a regular file")
    return handle.read()


def _parse_manifest(item: _Member, data: bytes) -> Manifest:
    try:
        return Manifest.from_json(data.decode("utf-8"))
    except (ManifestError, UnicodeDecodeError) as exc:
        raise TransferError(f"entry {item.key[:12]}: {exc}") from exc


def _read_index(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
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


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise TransferError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise TransferError(f"{path} is a folder, not an archive") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TransferError(f"{path} is not a readable tar archive: {exc}") from exc


def _extract(archive: tarfile.TarFile, plan: _Plan, into: Path) -> None:
    """Write the checked members under `into/<key>/`, never following a link.

    Our own code, not `extractall`: it does not depend on the interpreter
    having tarfile's extraction filters, and every file is created with
    `O_EXCL | O_NOFOLLOW` in a private folder.
    """
    for key in plan.keys:
        os.mkdir(into / key, 0o700)
    for item in plan.members:
        target = os.path.join(into, item.key, *item.inside.split("/"))
        info = item.info
        if info.isdir():
            if item.inside:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(target, 0o700)
                if not real_dir(target):
                    raise TransferError(f"cannot extract {info.name}: not a folder")
            continue
        _make_parents(into / item.key, item.inside)
        if info.issym():
            os.symlink(info.linkname, target)
        elif info.islnk():
            source = info.linkname.split("/", 3)[3]
            os.link(os.path.join(into, item.key, *source.split("/")), target)
        else:
            _write_file(archive, info, target)
    # Folder modes and times last: a read-only folder could not be filled,
    # and writing into a folder bumps its time (an entry's time is its last use).
    for item in reversed(plan.members):
        if item.info.isdir():
            folder = os.path.join(into, item.key, *item.inside.split("/"))
            os.chmod(folder, (item.info.mode & 0o777) | 0o700)
            os.utime(folder, (item.info.mtime, item.info.mtime))


def _make_parents(root: Path, inside: str) -> None:
    folder = str(root)
    for part in inside.split("/")[:-1]:
        folder = os.path.join(folder, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        if not real_dir(folder):
            raise TransferError(f"cannot extract {inside}: {part} is not a folder")


def _write_file(archive: tarfile.TarFile, info: tarfile.TarInfo, target: str) -> None:
    handle = archive.extractfile(info)
    if handle is None:  # pragma: no cover - checked to be a regular file
        raise TransferError(f"cannot read {info.name} from the archive")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := handle.read(_CHUNK):
            written += len(chunk)
            if written > info.size:
                raise TransferError(f"{info.name} is longer than its header says")
            out.write(chunk)
    if written != info.size:
        raise TransferError(f"{info.name} is shorter than its header says")
    # Keep the exported modes, minus anything setuid/setgid/sticky.
    os.chmod(target, info.mode & 0o777)
    os.utime(target, (info.mtime, info.mtime))


def import_entries(
    store: CacheStore,
    source: Path,
    *,
    on_verified: Callable[[str], None] | None = None,
    max_bytes: int | None = None,
) -> ImportReport:
    """Import the entries of an export into a cache, after verifying all of them.

    Before anything is written, every member is checked (type, path, size
    against `max_bytes`, every link resolved through the others), and every
    entry's manifest: its key payload must hash to the entry's key, and it
    must list exactly the files the entry holds. Then the archive is
    extracted by our own code into a private staging folder, every file's
    content is compared with its manifest digest, and only then are entries
    committed. A rejected archive leaves nothing behind.

    Args:
        store: The cache to import into (created if needed).
        source: The archive made by `export_entries`.
        on_verified: Called with each key once its content is verified.
        max_bytes: Refuse an archive that unpacks to more than this
            (default: the free space of the cache's filesystem).

    Returns:
        What was imported and what was already there.

    Raises:
        TransferError: If the archive is unsafe, not an export, or holds a
            damaged or forged entry.
    """
    source = Path(source)
    limit = _free_space(store.root) if max_bytes is None else max_bytes
    with _open_archive(source) as archive:
        try:
            plan = _plan_import(archive, source, limit)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise TransferError(f"{source} is damaged: {exc}") from exc
        staging_root = housekeeping_dir(store.root, store.STAGING_DIR, create=True)
        if staging_root is None:
            raise TransferError(
                f"{store.root / store.STAGING_DIR} is not a folder (a symlink?); "
                "refusing to extract through it"
            )
        temp = staging_root / f"import-{uuid.uuid4().hex[:12]}"
        temp.mkdir(mode=0o700)
        try:
            try:
                _extract(archive, plan, temp)
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise TransferError(f"{source} cannot be extracted: {exc}") from exc
            staged = _StagedEntries(temp)
            _verify_all(staged, plan.keys, on_verified)
            return _commit_all(store, staged, plan.manifests)
        finally:
            remove_tree(temp)


def _free_space(root: Path) -> int | None:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


class _StagedEntries(CacheStore):
    """Extracted entries at `<temp>/<key>`: a store without shard folders."""

    def entry_dir(self, key: str) -> Path:
        """Return `<temp>/<key>`."""
        return self.root / key


def _verify_all(
    staged: CacheStore, keys: list[str], on_verified: Callable[[str], None] | None
) -> None:
    hasher = ContentHasher()
    problems: list[str] = []
    for key in keys:
        found = staged.lookup(
            key, verify="full", hash_file=hasher.hash_file, quarantine=False
        )
        if found.manifest is None:
            problems.append(f"{key[:12]}: {found.reason}")
            continue
        if on_verified is not None:
            on_verified(key)
    if problems:
        raise TransferError(
            f"{len(problems)} of {len(keys)} entries in the archive failed "
            "verification; nothing was imported: " + "; ".join(problems)
        )


def _commit_all(
    store: CacheStore, staged: CacheStore, manifests: dict[str, Manifest]
) -> ImportReport:
    report = ImportReport()
    for key, manifest in manifests.items():
        shard = store.root / key[:2]
        if os.path.lexists(shard) and not real_dir(shard):
            report.skipped[key] = f"{shard} is not a folder (a symlink?): not followed"
            _log.warning("not importing %s: %s", key[:12], report.skipped[key])
            continue
        # lookup() quarantines a damaged entry, so a good one is never replaced.
        if store.lookup(key, verify="size").manifest is not None:
            report.present.append(key)
            continue
        entry_mtime = os.lstat(staged.entry_dir(key)).st_mtime
        verified = os.lstat(staged.entry_dir(key) / store.MANIFEST)
        # File modes came from whoever made the archive: seal the entry as a
        # commit of our own would be, so no other member can edit it.
        seal_entry(staged.entry_dir(key), read_only=True)
        target = store.commit(staged.entry_dir(key), key)
        try:
            # Renamed into place, the verified manifest file is the entry's
            # (no parse needed); a twin committed first is read to be sure.
            now = os.lstat(target / store.MANIFEST)
            moved = (now.st_dev, now.st_ino) == (verified.st_dev, verified.st_ino)
            if not moved and Manifest.read(target / store.MANIFEST).key != key:
                raise ManifestError("manifest is for another key")
        except (OSError, ManifestError) as exc:  # pragma: no cover - atomic
            raise TransferError(f"entry {key[:12]} was not committed: {exc}") from exc
        store.record_tool(manifest.tool, key)
        record_commit(store.root, key, target, manifest)
        # Keep the exported last use, so LRU order survives the move.
        os.utime(target, (time.time(), min(entry_mtime, time.time())))
        report.imported.append(key)
        _log.info("imported entry %s (%s)", key[:12], manifest.tool)
    return report
