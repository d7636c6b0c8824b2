"""The remote form of an entry: one small JSON object plus content-addressed blobs.

```
<prefix>/styxcache-v1/entries/<key[:2]>/<key>.json   the envelope, written last
<prefix>/styxcache-v1/blobs/<digest[:2]>/<digest>     file contents, by blake3
```

The envelope carries the manifest's exact text (the key payload, every
output's size and digest), the size and digest of the captured logs, and the
entry's empty folders. Blobs are named by their content, so concurrent
writers of one key, or of two keys with a shared output, write identical
bytes to the same names and never tear each other's entries; the envelope is
written with a create-only conditional put, so the first writer wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
from pathlib import Path
from typing import Any

from blake3 import blake3

from styxcache.key import key_of
from styxcache.manifest import Manifest, ManifestError, OutputRecord
from styxcache.remote.errors import DamagedEntryError
from styxcache.store import CacheStore

__all__ = [
    "ENVELOPE_FORMAT",
    "LAYOUT",
    "BlobRef",
    "Envelope",
    "blob_path",
    "envelope_path",
    "local_envelope",
]

ENVELOPE_FORMAT = 1
LAYOUT = "styxcache-v1"
"""Top folder under the URL's prefix; bumped if the layout ever changes."""

_LOGS = (CacheStore.STDOUT_LOG, CacheStore.STDERR_LOG)


def envelope_path(key: str) -> str:
    """Object path of an entry's envelope.

    Args:
        key: The cache key.
    """
    return f"{LAYOUT}/entries/{key[:2]}/{key}.json"


def blob_path(digest: str) -> str:
    """Object path of a blob.

    Args:
        digest: blake3 hex digest of the content.
    """
    return f"{LAYOUT}/blobs/{digest[:2]}/{digest}"


@dataclasses.dataclass(frozen=True)
class BlobRef:
    """One regular file of an entry and the blob holding its content.

    Attributes:
        path: Relative POSIX path inside the entry.
        size: Size in bytes.
        digest: blake3 hex digest.
    """

    path: str
    size: int
    digest: str


@dataclasses.dataclass(frozen=True)
class Envelope:
    """An entry as stored remotely.

    Attributes:
        key: The cache key.
        manifest_text: The manifest file's exact content.
        manifest: The parsed manifest.
        logs: The captured stdout/stderr logs.
        dirs: Empty folders of the output tree.
    """

    key: str
    manifest_text: str
    manifest: Manifest
    logs: tuple[BlobRef, ...] = ()
    dirs: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[BlobRef, ...]:
        """Every regular file: the outputs (symlinks excluded) and the logs."""
        outputs = tuple(
            BlobRef(r.path, r.size, r.digest)
            for r in self.manifest.outputs
            if r.link is None
        )
        return outputs + self.logs

    @property
    def links(self) -> tuple[OutputRecord, ...]:
        """The symlinks of the output tree."""
        return tuple(r for r in self.manifest.outputs if r.link is not None)

    @property
    def size(self) -> int:
        """Bytes of all files."""
        return sum(f.size for f in self.files)

    def to_bytes(self) -> bytes:
        """Serialise the envelope."""
        data = {
            "format": ENVELOPE_FORMAT,
            "key": self.key,
            "manifest": self.manifest_text,
            "logs": [dataclasses.asdict(b) for b in self.logs],
            "dirs": list(self.dirs),
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, key: str) -> Envelope:
        """Parse and check an envelope fetched for `key`.

        Checks that it is for this key, that the key recomputed from the
        manifest's payload is this key, and that every path stays inside
        the entry. The blobs are checked as they are downloaded.

        Args:
            data: The object's bytes.
            key: The key it was fetched for.

        Returns:
            The envelope.

        Raises:
            DamagedEntryError: Saying what is wrong.
        """
        try:
            raw: Any = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != ENVELOPE_FORMAT:
                raise DamagedEntryError("not a styxcache envelope of a known format")
            text = raw["manifest"]
            manifest = Manifest.from_json(text)
            logs = tuple(
                BlobRef(str(b["path"]), int(b["size"]), str(b["digest"]))
                for b in raw.get("logs", [])
            )
            dirs = tuple(str(d) for d in raw.get("dirs", []))
        except DamagedEntryError:
            raise
        except (ValueError, TypeError, KeyError, ManifestError) as exc:
            raise DamagedEntryError(f"unreadable envelope: {exc}") from None
        if raw.get("key") != key or manifest.key != key:
            raise DamagedEntryError("envelope or manifest is for another key")
        if key_of(manifest.payload) != key:
            raise DamagedEntryError("the key recomputed from the manifest differs")
        envelope = cls(key, text, manifest, logs, dirs)
        for ref in envelope.files:
            _check_relative(ref.path, log=ref in logs)
            if ref.size < 0 or not _is_digest(ref.digest):
                raise DamagedEntryError(f"bad size or digest for {ref.path}")
        for record in envelope.links:
            _check_relative(record.path, log=False)
        for folder in dirs:
            _check_relative(folder, log=False)
        names = [r.path for r in manifest.outputs] + [b.path for b in logs]
        if len(set(names)) != len(names):
            raise DamagedEntryError("a path is listed twice")
        return envelope


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_relative(path: str, *, log: bool) -> None:
    """Refuse a path that could leave the entry or overwrite styxcache's files."""
    if log:
        if path not in _LOGS:
            raise DamagedEntryError(f"unexpected log name {path!r}")
        return
    normal = posixpath.normpath(path)
    if (
        not path
        or path.startswith("/")
        or "\x00" in path
        or normal != path
        or normal in {".", ".."}
        or normal.startswith("../")
        or normal.split("/", 1)[0] in CacheStore.RESERVED
    ):
        raise DamagedEntryError(f"unsafe path {path!r} in the remote entry")


def local_envelope(cache: CacheStore, key: str) -> Envelope:
    """Describe a committed local entry as an envelope (hashing its logs).

    Args:
        cache: The local cache.
        key: The entry's key.

    Raises:
        OSError: If the entry is not complete, or its manifest is unreadable
            or for another key.
    """
    entry = cache.entry_dir(key)
    if not (entry / CacheStore.DONE_MARKER).exists():
        raise OSError(f"entry {key[:12]} is not complete in {cache.root}")
    text = (entry / CacheStore.MANIFEST).read_text(encoding="utf-8")
    try:
        manifest = Manifest.from_json(text)
    except ManifestError as exc:
        raise OSError(f"entry {key[:12]}: {exc}") from None
    if manifest.key != key:
        raise OSError(f"entry {key[:12]}: its manifest is for another key")
    logs = []
    for name in (CacheStore.STDOUT_LOG, CacheStore.STDERR_LOG):
        path = entry / name
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()  # gzip logs of captured lines: small
            logs.append(BlobRef(name, len(data), str(blake3(data).hexdigest())))
    return Envelope(key, text, manifest, tuple(logs), _empty_dirs(entry))


def _empty_dirs(entry: Path) -> tuple[str, ...]:
    found: list[str] = []
    for folder, dirs, files in os.walk(entry):
        if folder == str(entry):
            continue
        if not dirs and not files:
            found.append(os.path.relpath(folder, entry).replace(os.sep, "/"))
    return tuple(sorted(found))
