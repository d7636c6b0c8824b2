"""`CacheStore`: the on-disk layout of a cache directory, and safe moves within it.

```
<root>/<key[:2]>/<key>/          an entry: the tool's output tree, plus
    .styxcache.manifest.json     what the entry holds (manifest.py)
    .styxcache.stdout.gz         the tool's stdout, gzip, one line per line
    .styxcache.stderr.gz         the tool's stderr
    .styxcache.done              written last: the entry is complete
<root>/.incoming/<uuid>/         staging of runs in progress
<root>/.locks/<key>.lock         leases of running executions (lease.py)
<root>/.quarantine/<...>/        damaged entries, moved aside with a reason
<root>/.failed/<...>/            the newest failed runs, for inspection
<root>/.trash/<uuid>/            replaced entries, about to be deleted
<root>/.tools/<tool>/<key>       which keys belong to which tool (explanations)
<root>/.events/*.jsonl           per-process event files (events.py)
```

Every change to an entry is a rename within one filesystem, so readers see
either the old entry or the new one, never a half-written tree.

Why this module is long: every move of an entry folder (stage, commit,
replace, quarantine, trash, place uncommitted, keep failed, import) lives
here, because they share one set of rules (never through a planted link, a
twin's commit wins, a concurrent gc may remove anything at any moment) that
is easiest to check read together. Verification (entry_check.py), the tool
index (tool_index.py) and tree copies (trees.py) are apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from styxcache.catalog import record_use
from styxcache.entry_check import (
    DONE_MARKER,
    ENTRY_FILES,
    MANIFEST_FILE,
    STDERR_LOG,
    STDOUT_LOG,
    UNCOMMITTED,
    Lookup,
    check_outputs,
)
from styxcache.errors import UnsafeCacheFolderError
from styxcache.manifest import ManifestCache, ManifestError
from styxcache.tool_index import ToolIndex
from styxcache.trees import copy_entry, prune_oldest, remove_tree
from styxcache.trust import TrustSetting, UntrustedEntryError, check_entry
from styxcache.walk import housekeeping_dir, iter_entry_dirs

__all__ = [
    "CacheStore",
    "Lookup",
    "UnsafeCacheFolderError",
    "copy_entry",
    "remove_tree",
]

_log = logging.getLogger("styxcache.store")


class CacheStore:
    """The layout of one cache directory.

    Args:
        root: The cache directory.
    """

    DONE_MARKER = DONE_MARKER
    STAGING_DIR = ".incoming"
    MANIFEST = MANIFEST_FILE
    STDOUT_LOG = STDOUT_LOG
    STDERR_LOG = STDERR_LOG
    UNCOMMITTED = UNCOMMITTED
    QUARANTINE_DIR = ".quarantine"
    FAILED_DIR = ".failed"
    TRASH_DIR = ".trash"
    LOCKS_DIR = ".locks"
    TOOLS_DIR = ".tools"
    WORK_DIRS = (
        STAGING_DIR,
        LOCKS_DIR,
        QUARANTINE_DIR,
        FAILED_DIR,
        TRASH_DIR,
        TOOLS_DIR,
    )
    """The store's own folders beside the shards (events and catalog have theirs)."""
    RESERVED = ENTRY_FILES
    """Names inside an entry that belong to styxcache, not to the tool."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._entries: dict[str, Path] = {}
        self.manifests = ManifestCache()
        self.tools = ToolIndex(self.root, self.TOOLS_DIR)
        """Which keys belong to which tool (explanations of misses)."""
        """Parsed manifests of this cache's entries (hits parse once)."""

    # Layout ----------------------------------------------------------------

    def entry_dir(self, key: str) -> Path:
        """Return the folder of the entry with this key (which may not exist).

        Args:
            key: A cache key.

        Returns:
            `<root>/<key[:2]>/<key>`.

        Raises:
            ValueError: If the key could escape the cache directory.
        """
        known = self._entries.get(key)
        if known is not None:
            return known
        if len(key) < 3 or not key.isalnum():
            raise ValueError(f"not a cache key: {key!r}")
        path = self.root / key[:2] / key
        if len(self._entries) >= 4096:
            self._entries.clear()
        self._entries[key] = path
        return path

    def is_hit(self, key: str) -> bool:
        """Return True when a complete entry exists (its done marker is there).

        This is the quick check; `lookup()` also verifies the entry.

        Args:
            key: A cache key.
        """
        return (self.entry_dir(key) / self.DONE_MARKER).exists()

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every entry folder, complete or not.

        Links planted where a shard or entry should be are skipped (never
        followed), and names that are not keys are ignored (walk.py).
        """
        for entry in iter_entry_dirs(self.root):
            yield entry.name

    # Verification ---------------------------------------------------------

    def lookup(
        self,
        key: str,
        *,
        verify: str = "size",
        hash_file: Callable[[str, int], str] | None = None,
        quarantine: bool = True,
        trust: TrustSetting = "any",
    ) -> Lookup:
        """Find and verify an entry.

        A damaged entry (done marker or manifest missing, manifest unreadable
        or for another key, an output missing, resized or, with
        `verify="full"`, modified) is never served: it is moved to quarantine.

        Args:
            key: A cache key.
            verify: `"size"` or `"full"` (also compares content digests).
            hash_file: `(path, size) -> digest`, needed for `"full"`.
            quarantine: Move a damaged entry aside (False for read-only tiers).
            trust: Whose entries may be served (`CachePolicy.trust`).

        Returns:
            The lookup result.
        """
        entry = self.entry_dir(key)
        doubt = check_entry(self.root, entry, trust)
        if doubt is not None:
            if doubt.own:
                return self._damaged(key, doubt.reason, quarantine)
            reason = f"entry is not trusted ({doubt.reason})"
            return Lookup(None, reason, untrusted=True)
        try:
            manifest = self.manifests.read(entry / self.MANIFEST)
        except ManifestError as exc:
            return self._without_manifest(key, entry, str(exc), quarantine)
        if not (entry / self.DONE_MARKER).exists():
            problem = "done marker missing"
        elif manifest.key != key:
            problem = f"manifest is for key {manifest.key}"
        else:
            problem = check_outputs(entry, manifest, verify, hash_file)
        return self._damaged(key, problem, quarantine) if problem else Lookup(manifest)

    def _without_manifest(
        self, key: str, entry: Path, error: str, quarantine: bool
    ) -> Lookup:
        """A miss for an entry folder whose manifest cannot be read."""
        if not entry.is_dir():
            return Lookup(None, "no entry")
        note = entry / self.UNCOMMITTED
        if note.exists():
            return Lookup(None, f"previous run was not committed: {_read(note)}")
        if not os.path.lexists(entry / self.DONE_MARKER):
            # Neither manifest nor done marker: a run placed uncommitted
            # whose note could not be written (a full disk), not damage.
            return Lookup(None, "previous run was not committed")
        return self._damaged(key, error, quarantine)

    def _damaged(self, key: str, reason: str, quarantine: bool) -> Lookup:
        if not self.entry_dir(key).is_dir():
            # Removed while we looked (a concurrent gc or clear): a plain miss.
            return Lookup(None, "entry removed concurrently")
        if quarantine:
            try:
                where = self.quarantine(key, reason)
            except PermissionError:
                # Another member's entry in a sticky shard (trust.py): not
                # ours to move, so it is left alone and the call runs uncached.
                _log.warning(
                    "cache entry %s is damaged (%s) and belongs to someone else; "
                    "running uncached",
                    key[:12],
                    reason,
                )
                why = f"entry was damaged ({reason}) and is not ours to replace"
                return Lookup(None, why, damaged=True, untrusted=True)
            _log.warning(
                "cache entry %s is damaged (%s); moved to %s and recomputing",
                key[:12],
                reason,
                where,
            )
        return Lookup(None, f"entry was damaged ({reason})", damaged=True)

    def quarantine(self, key: str, reason: str) -> Path | None:
        """Move an entry aside, with a note saying why.

        Args:
            key: The entry's key.
            reason: Why it was quarantined.

        Returns:
            Where it went, or None if it was already gone.
        """
        folder = housekeeping_dir(self.root, self.QUARANTINE_DIR, create=True)
        if folder is None:  # a planted link: never move an entry through it
            self._to_trash(self.entry_dir(key))
            return None
        target = (
            folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{key}-{uuid.uuid4().hex[:6]}"
        )
        try:
            os.rename(self.entry_dir(key), target)
        except FileNotFoundError:
            return None
        (target.parent / f"{target.name}.reason").write_text(reason + "\n")
        return target

    # Writing ---------------------------------------------------------------

    def stage(self, key: str | None = None) -> Path:
        """Create and return a fresh staging folder for one run.

        Args:
            key: The key being computed; it prefixes the folder name, so that
                `gc` can tell a live run's staging (its lease is held) from a
                crashed one's.

        Returns:
            `<root>/.incoming/[<key>.]<uuid>`.
        """
        name = uuid.uuid4().hex if key is None else f"{key}.{uuid.uuid4().hex[:12]}"
        incoming = housekeeping_dir(self.root, self.STAGING_DIR, create=True)
        if incoming is None:
            # A symlink planted at .incoming would send a run's outputs (and
            # later the committed entry) wherever its author chose.
            raise UnsafeCacheFolderError(
                f"{self.root / self.STAGING_DIR} is not a folder of the cache (a "
                "symlink or a file stands there): refusing to stage a run through it"
            )
        path = incoming / name
        # Private while the tool runs: on a shared cache a member could
        # otherwise plant files in a folder the tool made group-writable,
        # before the run is sealed (trust.seal_entry opens it for reading).
        path.mkdir(mode=0o700)
        return path

    def discard(self, staging: Path) -> None:
        """Delete a staging folder.

        Args:
            staging: A folder returned by `stage()`.
        """
        remove_tree(staging)

    def commit(
        self,
        staging: Path,
        key: str,
        *,
        replace: bool = False,
        trust: TrustSetting = "any",
    ) -> Path:
        """Move a staged run into place as the entry for `key`.

        The done marker is written into the staging folder (if missing) before
        the move, so an entry is visible only once complete.

        Args:
            staging: The staged output tree.
            key: The key it is the result for.
            replace: Replace a complete entry already there (refresh, stale
                tool). Without it, a complete entry that a concurrent twin
                committed first wins and the staging folder is discarded.
            trust: Whose entries may be served (`CachePolicy.trust`): a
                twin's entry that fails the check is not taken instead.

        Returns:
            The entry folder.

        Raises:
            UntrustedEntryError: An untrusted entry appeared at the key's
                folder while the tool ran (see `trust.py`).
        """
        _write_done_marker(staging / self.DONE_MARKER)
        entry = self.entry_dir(key)
        for _ in range(5):
            try:
                os.rename(staging, entry)
                return entry
            except FileNotFoundError:
                if not staging.exists():
                    raise
                # The shard's first entry, or gc removed a long-empty shard
                # folder meanwhile.
                entry.parent.mkdir(parents=True, exist_ok=True)
                continue
            except OSError as exc:
                if not entry.exists():
                    raise OSError(f"cannot commit {staging} to {entry}: {exc}") from exc
            if not replace and (entry / self.DONE_MARKER).exists():
                doubt = check_entry(self.root, entry, trust)
                if doubt is not None:
                    raise UntrustedEntryError(entry, staging, doubt.reason)
                self.discard(staging)
                return entry
            self._to_trash(entry)
        raise OSError(f"cannot commit {staging} to {entry}: replaced concurrently")

    def import_entry(self, source: CacheStore, key: str) -> bool:
        """Copy another cache's entry (a read-only tier's) into this one.

        Args:
            source: The cache holding the entry.
            key: The entry's key.

        Returns:
            True when the entry is now in this cache.
        """
        staging = self.root / self.STAGING_DIR / f"{key}.{uuid.uuid4().hex[:12]}"
        try:
            copy_entry(source.entry_dir(key), staging)
            self.commit(staging, key)
        except OSError as exc:
            _log.warning("cannot copy entry %s from %s: %s", key[:12], source.root, exc)
            return False
        manifest = self.manifests.read(self.entry_dir(key) / self.MANIFEST)
        self.record_tool(manifest.tool, key)
        return True

    def drop_uncommitted(self, key: str) -> None:
        """Remove an uncommitted run's folder before the key runs again.

        It is never served, and on a full disk its files may be what keeps
        the new run from fitting. A complete entry is left alone.

        Args:
            key: The key about to run.
        """
        entry = self.entry_dir(key)
        if entry.is_dir() and not os.path.lexists(entry / self.DONE_MARKER):
            self._to_trash(entry)

    def place_uncommitted(self, staging: Path, key: str, reason: str) -> Path:
        """Put a run that must not be served where its outputs were promised.

        The caller still gets its files at the paths `output_file()` returned,
        but the folder carries a note instead of a done marker, so it is a miss
        for everyone and the next call runs the tool again.

        Args:
            staging: The staged output tree.
            key: The key the run was for.
            reason: Why it is not committed.

        Returns:
            The entry folder.
        """
        try:
            (staging / self.UNCOMMITTED).write_text(reason + "\n")
        except OSError as exc:
            # A full disk: the caller's files matter more than the note.
            # Without it the folder reads as damaged and is quarantined by
            # the next lookup, which is still never a hit.
            _log.debug("cannot write the uncommitted note in %s: %s", staging, exc)
        entry = self.entry_dir(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if (entry / self.DONE_MARKER).exists():
            self.discard(staging)  # a twin committed a good result meanwhile
            return entry
        self._to_trash(entry)
        try:
            os.rename(staging, entry)
        except OSError:
            self.discard(staging)
        return entry

    def _to_trash(self, entry: Path) -> None:
        # Beside the entry when `.trash` is a planted link (never followed).
        trash = housekeeping_dir(self.root, self.TRASH_DIR, create=True)
        target = (
            entry.parent / f".trash-{uuid.uuid4().hex}"
            if trash is None
            else trash / uuid.uuid4().hex
        )
        try:
            os.rename(entry, target)
        except FileNotFoundError:
            return
        remove_tree(target)

    def remove(self, key: str) -> bool:
        """Delete an entry (moved to trash first, so readers never see half of it).

        Args:
            key: The entry's key.

        Returns:
            True if there was an entry.
        """
        entry = self.entry_dir(key)
        if not entry.exists():
            return False
        self._to_trash(entry)
        return True

    def keep_failed(
        self, staging: Path, key: str, reason: str, *, limit: int
    ) -> Path | None:
        """Keep a failed run's files for inspection, pruning the oldest.

        Args:
            staging: The failed run's staging folder.
            key: The key it was for.
            reason: What failed.
            limit: How many failed runs to keep; 0 discards at once.

        Returns:
            Where the files are, or None when not kept.
        """
        if limit <= 0:
            self.discard(staging)
            return None
        folder = housekeeping_dir(self.root, self.FAILED_DIR, create=True)
        if folder is None:  # a planted link: never prune through it
            self.discard(staging)
            return None
        target = (
            folder
            / f"{time.strftime('%Y%m%dT%H%M%S')}-{key[:16]}-{uuid.uuid4().hex[:6]}"
        )
        os.rename(staging, target)
        with contextlib.suppress(OSError):  # a full disk must not hide the failure
            (target / ".styxcache.failed").write_text(reason + "\n")
        with contextlib.suppress(OSError):  # a concurrent gc may prune meanwhile
            prune_oldest(folder, limit)
        return target

    def touch(self, key: str) -> bool:
        """Record a use of the entry: bump its folder's modification time.

        Args:
            key: The entry's key.

        Returns:
            False when the entry no longer exists (removed by gc meanwhile).
        """
        try:
            os.utime(self.entry_dir(key))
        except FileNotFoundError:
            return False
        except OSError as exc:  # a read-only cache still serves its hits
            _log.debug("cannot record use of %s: %s", key[:12], exc)
            return True
        record_use(self.root, key)  # the index `ls` pages by (one write)
        return True

    # Per-tool index (tool_index.py) ----------------------------------------

    def record_tool(self, tool: str, key: str) -> None:
        """Note that `key` is an entry of `tool` (for explanations of misses).

        Args:
            tool: `package/id`.
            key: The entry's key.
        """
        self.tools.record(tool, [key])

    def record_tool_keys(self, tool: str, keys: list[str]) -> None:
        """`record_tool` for many entries of one tool (an import): one log append.

        Args:
            tool: `package/id`.
            keys: The entries' keys, oldest first.
        """
        self.tools.record(tool, keys)

    def recent_keys(self, tool: str, limit: int = 32) -> list[str]:
        """Return the newest keys recorded for a tool, newest first.

        Args:
            tool: `package/id`.
            limit: At most this many.
        """
        return self.tools.recent(tool, limit)


def _write_done_marker(path: Path) -> None:
    """Write the done marker if missing, sealed (read-only) like the entry."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        return
    try:
        os.write(fd, f"{time.time()}\n".encode())
        os.fchmod(fd, 0o444)  # whatever the umask: readable by the cache's readers
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "reason unknown"
