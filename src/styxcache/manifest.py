"""The manifest: what a committed entry holds and how to check it.

Stored as `<entry>/.styxcache.manifest.json` (format documented in
docs/design/manifest.md). A manifest is written once, at commit; an entry's
last use is the modification time of its folder, bumped on every hit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

from styxcache.canonical import JSON
from styxcache.errors import ManifestError

__all__ = [
    "MANIFEST_FORMAT",
    "Manifest",
    "ManifestCache",
    "ManifestError",
    "OutputRecord",
    "OutsideRecord",
    "plain",
    "scan_outputs",
]

MANIFEST_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class OutputRecord:
    """One file (or symlink) of an entry's output tree.

    Attributes:
        path: Relative POSIX path inside the entry.
        size: Size in bytes (of the link text, for a symlink).
        digest: blake3 of the content (of the link text, for a symlink).
        link: The symlink's target text, or None for a regular file.
    """

    path: str
    size: int
    digest: str
    link: str | None = None


@dataclasses.dataclass(frozen=True)
class OutsideRecord:
    """A declared output outside the entry (an absolute name), as the run left it.

    The cache never moves, copies or changes such a path; it only remembers
    what was there after the run, and a hit requires it to be unchanged.

    Attributes:
        path: The absolute path the caller was given.
        present: Whether anything existed there after the run.
        size: Its size in bytes (0 when absent).
        digest: Its content digest ("" when absent).
    """

    path: str
    present: bool
    size: int = 0
    digest: str = ""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The record of one committed execution.

    Attributes:
        key: The cache key.
        tool: `package/id`.
        payload: The full key payload (see `key.KeyPayload.to_json`).
        outputs: Every file of the output tree.
        fingerprint: The run-time fingerprint (command line and executable).
        fingerprint_parts: The parts it was made of, for explanations.
        duration_s: How long the tool ran.
        exit_status: The tool's exit status (0 for committed entries).
        created: Unix time of the commit.
        last_used: Unix time of the commit; later uses bump the entry
            folder's mtime instead of rewriting this file.
        stdout_lines: Lines captured on stdout.
        stderr_lines: Lines captured on stderr.
        stdout_size: Size of the compressed stdout log in bytes.
        stderr_size: Size of the compressed stderr log in bytes.
        version: styxcache version that wrote the entry.
        format: Manifest format number.
        absent: Declared outputs inside the entry that the tool did not
            write (relative POSIX paths); a hit serves them absent too.
        outside: Declared outputs outside the entry (absolute names).
    """

    key: str
    tool: str
    payload: dict[str, JSON]
    outputs: tuple[OutputRecord, ...]
    fingerprint: str
    fingerprint_parts: dict[str, str]
    duration_s: float
    exit_status: int
    created: float
    last_used: float
    stdout_lines: int = 0
    stderr_lines: int = 0
    stdout_size: int = 0
    stderr_size: int = 0
    version: str = ""
    format: int = MANIFEST_FORMAT
    absent: tuple[str, ...] = ()
    outside: tuple[OutsideRecord, ...] = ()

    @property
    def total_size(self) -> int:
        """Sum of the output sizes in bytes."""
        return sum(record.size for record in self.outputs)

    def to_json(self) -> str:
        """Serialise the manifest (stable key order, one line).

        Not indented: `json` serialises indented text in pure Python, three
        times slower than its C encoder (about 20 us of every miss); readers
        parse it either way, and `styxcache show` prints it for humans.
        """
        # Not `dataclasses.asdict`: it deep-copies the key payload.
        return json.dumps(plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest.

        Args:
            text: The manifest file's content (bytes are read as UTF-8).

        Returns:
            The manifest.

        Raises:
            ManifestError: If the text is not a manifest of a known format.
        """
        try:
            data: dict[str, Any] = json.loads(text)
            fmt = data.get("format")
            if fmt != MANIFEST_FORMAT:
                raise ManifestError(f"unknown manifest format {fmt!r}")
            data["outputs"] = tuple(OutputRecord(**o) for o in data["outputs"])
            data["absent"] = tuple(str(name) for name in data.get("absent", ()))
            data["outside"] = tuple(OutsideRecord(**o) for o in data.get("outside", ()))
            names = _MANIFEST_FIELDS  # `verify` parses 100,000 of these
            return cls(**{k: v for k, v in data.items() if k in names})
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read and parse a manifest file (see `ManifestCache` for repeated reads).

        Args:
            path: The manifest's path.

        Returns:
            The manifest.

        Raises:
            ManifestError: If missing, unreadable or of an unknown format.
        """
        try:
            # Bytes: `json` decodes UTF-8 itself, without a text layer.
            with open(path, "rb") as handle:
                text = handle.read()
        except FileNotFoundError as exc:
            raise ManifestError("manifest missing") from exc
        except OSError as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from exc
        return cls.from_json(text)


_MANIFEST_FIELDS = frozenset(f.name for f in dataclasses.fields(Manifest))

_Stamp = tuple[int, int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ManifestCache:
    """Parsed manifests, remembered under their file's stat record.

    A manifest is written once and replaced only by a rename (a new inode),
    so while a file's stat record is unchanged its parsed manifest is still
    right: a repeated hit costs one `stat` instead of a parse. Each
    `CacheStore` owns one (there is no process-wide cache).

    Args:
        limit: Most manifests remembered; past it the cache starts afresh (a
            bound, not an LRU: refilling costs one parse each).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._parsed: dict[str, tuple[_Stamp, Manifest]] = {}

    def read(self, path: Path | str) -> Manifest:
        """`Manifest.read`, parsing each version of the file once.

        Args:
            path: The manifest's path.

        Raises:
            ManifestError: As `Manifest.read`.
        """
        name = os.fspath(path)
        try:
            st = os.stat(name)
        except FileNotFoundError as exc:
            raise ManifestError("manifest missing") from exc
        except OSError as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from exc
        stamp = _stamp(st)
        known = self._parsed.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        manifest = Manifest.read(Path(name))
        self.remember(name, st, manifest)
        return manifest

    def remember(
        self, path: Path | str, st: os.stat_result, manifest: Manifest
    ) -> None:
        """Note a manifest this process wrote (or parsed) as its file's content.

        Args:
            path: Where the file is now.
            st: Its stat record, taken when its content was known to be
                `manifest` (a rename keeps it; any rewrite changes it).
            manifest: The parsed manifest.
        """
        if len(self._parsed) >= self._limit:
            self._parsed.clear()
        self._parsed[os.fspath(path)] = (_stamp(st), manifest)


def plain(value: object) -> object:
    """`value` with dataclasses turned into dicts, for `json.dumps` (no copies)."""
    if isinstance(value, _LEAVES):  # most values: no dataclass look-up
        return value
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            if isinstance(value, (list, tuple)):
                return [plain(item) for item in value]
            return value
        names = _FIELD_NAMES[type(value)] = tuple(
            f.name for f in dataclasses.fields(value)
        )
    return {name: plain(getattr(value, name)) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
"""Field names per dataclass: `dataclasses.fields` is slow to call per value."""
_LEAVES = (str, int, float, type(None), dict)
"""Values `plain` returns as they are (a dict is never a dataclass)."""


def scan_outputs(
    root: Path, *, skip: frozenset[str], hash_file: Any
) -> tuple[OutputRecord, ...]:
    """List and digest every file of an output tree.

    Args:
        root: The tree's root.
        skip: Top-level names that belong to styxcache, not to the tool.
        hash_file: `(path, size) -> hex digest`.

    Returns:
        The records, sorted by path.
    """
    from blake3 import blake3

    records: list[OutputRecord] = []
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        prefix = "" if rel_folder == "." else rel_folder.replace(os.sep, "/") + "/"
        for name in dirs[:]:
            if os.path.islink(os.path.join(folder, name)):
                dirs.remove(name)
                files.append(name)
        for name in files:
            rel = prefix + name
            if not prefix and name in skip:
                continue
            full = os.path.join(folder, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(full)
                data = link.encode(errors="surrogateescape")
                records.append(
                    OutputRecord(rel, len(data), str(blake3(data).hexdigest()), link)
                )
            else:
                records.append(
                    OutputRecord(rel, st.st_size, hash_file(full, st.st_size))
                )
    records.sort(key=lambda r: r.path)
    return tuple(records)
