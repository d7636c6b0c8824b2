"""Import, first step: check a whole archive before anything is written.

Every member's name, type and size is checked, every link resolved through
the others (a chain of links that each look harmless but together leave the
entry is refused), and every entry's manifest: its key payload must hash to
its key, and it must list exactly the entry's files. `plan_import` reads
the archive once and checks what needs all of it (names, types, sizes, the
index); `check_entries` checks entries, each on its own (links, manifests),
so that workers can share that part; nothing is written until both passed.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Container
from pathlib import Path
from typing import Any, NamedTuple

from blake3 import blake3

from styxcache.key import key_of
from styxcache.manifest import Manifest, ManifestError, OutputRecord
from styxcache.store import CacheStore
from styxcache.tarstream import TarMember, TarReader
from styxcache.transfer.common import (
    ENTRIES_DIR,
    EXPORT_FORMAT,
    INDEX_NAME,
    MAX_SMALL_MEMBER,
    TransferError,
)
from styxcache.walk import is_cache_key, is_shard_name

__all__ = ["MAX_LINK_HOPS", "Checked", "Member", "Plan", "check_entries", "plan_import"]

MAX_LINK_HOPS = 40
"""Symlinks followed while resolving one link of an archive (as the kernel's limit)."""


class Member(NamedTuple):
    """One member of an entry, as checked: where it goes and what it is."""

    info: TarMember
    key: str
    inside: str
    """Path inside the entry ("" for the entry folder itself)."""


@dataclasses.dataclass
class Plan:
    """A fully checked archive: what to write, in archive order."""

    keys: list[str]
    members: list[Member]
    manifest_data: dict[str, bytes]
    """Each entry's manifest, as read (parsed and checked by `check_entries`)."""
    mtimes: dict[str, float]
    """Each entry folder's time in the archive (its last use)."""
    total: int


class Checked(NamedTuple):
    """Entries whose manifests match their members."""

    manifests: dict[str, Manifest]
    digests: dict[str, str]
    """blake3 of each manifest's bytes as checked (the second read must match)."""


_MANIFEST = CacheStore.MANIFEST


def _fail_name(name: str, problem: str) -> TransferError:
    return TransferError(f"archive member {name!r} {problem}")


def _split_member(member: TarMember, known: Container[str]) -> tuple[str, str] | None:
    """Return `(key, path inside the entry)`; None for the index and folders above.

    Args:
        member: The member.
        known: Keys already found valid (their names are not matched again).
    """
    name = member.name
    if name == INDEX_NAME:
        if not member.isfile():
            raise TransferError(f"{INDEX_NAME} in the archive is not a regular file")
        return None
    parts = _checked_parts(name)
    if len(parts) < 3:
        _check_above_entries(member, parts)
        return None
    shard, key = parts[1], parts[2]
    if parts[0] != ENTRIES_DIR:
        raise _fail_name(name, "is not part of a styxcache export")
    if not (key.startswith(shard) and (key in known or is_cache_key(key))):
        raise _fail_name(name, f"is in {key!r}, which is not a cache key")
    if member.kind == "other":
        raise _fail_name(name, "is not a file, folder or link (device or fifo)")
    inside = name[len(ENTRIES_DIR) + len(shard) + len(key) + 3 :]
    if not inside and not member.isdir():
        raise _fail_name(name, "stands where an entry folder should be")
    return key, inside


def _checked_parts(name: str) -> list[str]:
    """Split a member's name, refusing absolute, `..`, empty and `.` parts."""
    if name.startswith("/") or "\\" in name:
        raise _fail_name(name, "has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _fail_name(name, "leaves the extraction folder (..)")
    if "" in parts or "." in parts or "\0" in name:
        raise _fail_name(name, "has an empty or '.' path component")
    return parts


def _check_above_entries(member: TarMember, parts: list[str]) -> None:
    """Only `entries` and its shard folders may stand above the entries."""
    if parts == [ENTRIES_DIR] and member.isdir():
        return
    if parts[0] != ENTRIES_DIR or len(parts) < 2:
        raise _fail_name(member.name, "is not part of a styxcache export")
    if not member.isdir() or not is_shard_name(parts[1]):
        raise _fail_name(member.name, "is not a styxcache entry")


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


def _check_links(members: list[Member]) -> dict[str, dict[str, str]]:
    """Refuse links that resolve outside their entry, and paths through links.

    Returns:
        For each key, what each path inside the entry is: "dir", "link" or
        "file" (hard links count as files).
    """
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
        if "/" in item.inside:
            _check_parents(item, by_key[item.key])
        if item.info.issym():
            _resolve_in_entry(
                item.inside, links[item.key], by_key[item.key], item.info.name
            )
        elif item.info.islnk():
            _check_hard_link(item, by_key[item.key], earlier)
        elif item.info.isfile():
            earlier.add(item.info.name)
    return by_key


def _check_parents(item: Member, kinds: dict[str, str]) -> None:
    parents = item.inside.split("/")[:-1]
    for depth in range(1, len(parents) + 1):
        above = "/".join(parents[:depth])
        if kinds.get(above) == "link":
            raise _fail_name(
                item.info.name, f"is written through the symlink {above!r}"
            )


def _check_hard_link(item: Member, kinds: dict[str, str], earlier: set[str]) -> None:
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
            f"is a hard link to {target!r}, which is not an earlier file of its entry",
        )


def _check_entry(
    key: str,
    manifest: Manifest,
    files: dict[str, TarMember],
    sizes: dict[str, int],
) -> None:
    """Check an entry's members against its manifest (before anything is written)."""
    short = key[:12]
    _check_key(short, key, manifest)
    if CacheStore.DONE_MARKER not in files:
        raise TransferError(f"entry {short} has no done marker: it is not complete")
    if CacheStore.UNCOMMITTED in files:
        raise TransferError(f"entry {short} is an uncommitted run")
    listed = {record.path: record for record in manifest.outputs}
    for inside, info in files.items():
        if inside not in CacheStore.RESERVED:
            _check_output(short, inside, info, listed.get(inside), sizes)
    for path in listed:
        if path not in files:
            raise TransferError(f"entry {short}: output {path!r} is missing")
    _check_logs(short, manifest, sizes)


def _check_key(short: str, key: str, manifest: Manifest) -> None:
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


def _check_output(
    short: str,
    inside: str,
    info: TarMember,
    record: OutputRecord | None,
    sizes: dict[str, int],
) -> None:
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


def _check_logs(short: str, manifest: Manifest, sizes: dict[str, int]) -> None:
    for log, lines, size in (
        (CacheStore.STDOUT_LOG, manifest.stdout_lines, manifest.stdout_size),
        (CacheStore.STDERR_LOG, manifest.stderr_lines, manifest.stderr_size),
    ):
        if not lines:
            continue
        if log not in sizes:
            raise TransferError(f"entry {short}: its log {log} is missing")
        if size and sizes[log] != size:
            raise TransferError(
                f"entry {short}: its log {log} has {sizes[log]} bytes, expected {size}"
            )


def plan_import(reader: TarReader, path: Path, limit: int | None) -> Plan:
    """Check every member, link, size and manifest of an archive; write nothing.

    Args:
        reader: The archive, at its start.
        path: Its path, for messages.
        limit: Refuse an archive whose files add up to more than this.

    Returns:
        The plan.

    Raises:
        TransferError: If anything is unsafe, missing or inconsistent.
    """
    scan = _Scan(path, limit)
    for info in reader:
        scan.add(reader, info)
    return scan.finish()


@dataclasses.dataclass
class _Scan:
    """What one pass over the archive's members gathers."""

    path: Path
    limit: int | None
    members: list[Member] = dataclasses.field(default_factory=list)
    keys: dict[str, None] = dataclasses.field(default_factory=dict)
    """In archive order (a dict: a list made membership tests quadratic)."""
    names: set[str] = dataclasses.field(default_factory=set)
    manifests: dict[str, bytes] = dataclasses.field(default_factory=dict)
    mtimes: dict[str, float] = dataclasses.field(default_factory=dict)
    index: bytes | None = None
    total: int = 0

    def add(self, reader: TarReader, info: TarMember) -> None:
        """Check one member as it goes by; read the index and manifests."""
        names = self.names
        seen = len(names)
        names.add(info.name)
        if len(names) == seen:
            raise _fail_name(info.name, "appears twice in the archive")
        where = _split_member(info, self.keys)
        if info.kind == "file":
            self.total += info.size
            if self.limit is not None and self.total > self.limit:
                raise TransferError(
                    f"{self.path} unpacks to more than {self.limit} bytes (the limit); "
                    "nothing was imported"
                )
        if info.name == INDEX_NAME:
            self.index = _small(reader, info)
        if where is None:
            return
        key, inside = where
        if inside == _MANIFEST:
            if not info.isfile():
                raise _fail_name(info.name, "is not a regular file")
            self.manifests[key] = _small(reader, info)
        elif not inside and info.kind == "dir":
            self.mtimes[key] = info.mtime
        self.keys.setdefault(key)
        self.members.append(Member(info, key, inside))

    def finish(self) -> Plan:
        """Check what needs the whole archive: the index and its entries."""
        if self.index is None:
            raise TransferError(
                f"{self.path} is not a styxcache export (no {INDEX_NAME}); "
                "make one with `styxcache export`"
            )
        index = _read_index(self.index)
        listed = {str(item.get("key")) for item in index.get("entries", [])}
        if listed != set(self.keys):
            raise TransferError(
                f"{self.path}: the entries in the archive do not match its {INDEX_NAME}"
            )
        return Plan(
            list(self.keys),
            self.members,
            self.manifests,
            self.mtimes,
            self.total,
        )


def check_entries(plan: Plan, keys: list[str]) -> Checked:
    """Check entries of a plan against their manifests (before anything is written).

    Every link is resolved inside its entry (links never cross entries), each
    manifest's key payload must hash to its key, and it must list exactly
    the entry's files, with their sizes and links.

    Args:
        plan: From `plan_import`.
        keys: The entries to check (all of them, or one worker's slice).

    Raises:
        TransferError: At the first entry that does not match.
    """
    wanted = set(keys)
    members = [item for item in plan.members if item.key in wanted]
    kinds = _check_links(members)
    files: dict[str, dict[str, TarMember]] = {key: {} for key in keys}
    sizes: dict[str, dict[str, int]] = {key: {} for key in keys}
    by_name: dict[str, TarMember] | None = None
    for item in members:
        info = item.info
        if info.isdir():
            continue
        files[item.key][item.inside] = info
        if info.islnk():
            if by_name is None:  # only archives with hard links need it
                by_name = {m.info.name: m.info for m in members}
            info = by_name[info.linkname]  # checked: an earlier file of its entry
        sizes[item.key][item.inside] = info.size
    checked = Checked({}, {})
    for key in keys:
        data = plan.manifest_data.get(key)
        if data is None:
            raise TransferError(f"entry {key[:12]} in the archive has no manifest")
        manifest = _parse_manifest(key, data)
        _check_entry(key, manifest, files[key], sizes[key])
        _check_absent(key, manifest, kinds[key])
        checked.manifests[key] = manifest
        checked.digests[key] = str(blake3(data).hexdigest())
    return checked


def _small(reader: TarReader, info: TarMember) -> bytes:
    if info.size > MAX_SMALL_MEMBER:
        raise _fail_name(info.name, "is too large for a manifest or index")
    return reader.read(info, MAX_SMALL_MEMBER)


def _parse_manifest(key: str, data: bytes) -> Manifest:
    try:
        return Manifest.from_json(data.decode("utf-8"))
    except (ManifestError, UnicodeDecodeError) as exc:
        raise TransferError(f"entry {key[:12]}: {exc}") from exc


def _check_absent(key: str, manifest: Manifest, present: Container[str]) -> None:
    for name in manifest.absent:
        # Served absent, as the tool left it: anything there is not this result.
        if name in present:
            raise TransferError(
                f"entry {key[:12]}: {name!r} was not written by the tool but is "
                "in the archive"
            )


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
