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
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import shutil
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from styxcache.manifest import Manifest, ManifestError
from styxcache.trust import TrustSetting, UntrustedEntryError, check_entry
from styxcache.walk import folder_entries, housekeeping_dir, iter_entry_dirs

__all__ = ["CacheStore", "Lookup", "UnsafeCacheFolderError"]

_log = logging.getLogger("styxcache.store")


class UnsafeCacheFolderError(PermissionError):
    """A folder of the cache is a symlink or a file: it is never written through."""


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


def _make_writable_and_retry(
    func: Callable[[str], object], path: str, _exc: object
) -> None:
    # Cached files and tool-made folders may be read-only; removal needs the
    # parent folder writable, and the item itself for folders.
    parent = os.path.dirname(path)
    try:
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    except OSError:
        pass
    func(path)


def remove_tree(path: Path) -> None:
    """Delete a folder tree, read-only files and folders included.

    Args:
        path: The folder; a missing one is fine.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    shutil.rmtree(path, onerror=_make_writable_and_retry)


class CacheStore:
    """The layout of one cache directory.

    Args:
        root: The cache directory.
    """

    DONE_MARKER = ".styxcache.done"
    STAGING_DIR = ".incoming"
    MANIFEST = ".styxcache.manifest.json"
    STDOUT_LOG = ".styxcache.stdout.gz"
    STDERR_LOG = ".styxcache.stderr.gz"
    UNCOMMITTED = ".styxcache.uncommitted"
    QUARANTINE_DIR = ".quarantine"
    FAILED_DIR = ".failed"
    TRASH_DIR = ".trash"
    LOCKS_DIR = ".locks"
    TOOLS_DIR = ".tools"
    RESERVED = frozenset({DONE_MARKER, MANIFEST, STDOUT_LOG, STDERR_LOG, UNCOMMITTED})
    """Names inside an entry that belong to styxcache, not to the tool."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._entries: dict[str, Path] = {}

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
            manifest = Manifest.read(entry / self.MANIFEST)
        except ManifestError as exc:
            if not entry.is_dir():
                return Lookup(None, "no entry")
            note = entry / self.UNCOMMITTED
            if note.exists():
                return Lookup(None, f"previous run was not committed: {_read(note)}")
            if not os.path.lexists(entry / self.DONE_MARKER):
                # Neither manifest nor done marker: a run placed uncommitted
                # whose note could not be written (a full disk), not damage.
                return Lookup(None, "previous run was not committed")
            return self._damaged(key, str(exc), quarantine)
        if not (entry / self.DONE_MARKER).exists():
            return self._damaged(key, "done marker missing", quarantine)
        if manifest.key != key:
            return self._damaged(key, f"manifest is for key {manifest.key}", quarantine)
        problem = _check_outputs(entry, manifest, verify, hash_file)
        if problem:
            return self._damaged(key, problem, quarantine)
        return Lookup(manifest)

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
        done = staging / self.DONE_MARKER
        if not done.exists():
            done.write_text(f"{time.time()}\n")
            done.chmod(0o444)  # sealed like the rest of the entry (trust.py)
        entry = self.entry_dir(key)
        for _ in range(5):
            # Inside the loop: gc may remove a long-empty shard folder meanwhile.
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, entry)
                return entry
            except FileNotFoundError:
                if not staging.exists():
                    raise
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
            self._prune_failed(folder, limit)
        return target

    def _prune_failed(self, folder: Path, limit: int) -> None:
        kept = sorted(
            (p for p in folder_entries(folder) if p.is_dir(follow_symlinks=False)),
            key=lambda p: p.stat(follow_symlinks=False).st_mtime,
        )
        for old in kept[: max(0, len(kept) - limit)]:
            remove_tree(Path(old.path))

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

    # Per-tool index ---------------------------------------------------------

    def _tool_dir(self, tool: str) -> Path:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in tool)
        return self.root / self.TOOLS_DIR / slug

    def record_tool(self, tool: str, key: str) -> None:
        """Note that `key` is an entry of `tool` (for explanations of misses).

        Args:
            tool: `package/id`.
            key: The entry's key.
        """
        tools = housekeeping_dir(self.root, self.TOOLS_DIR, create=True)
        if tools is None:
            return  # reported; only explanations of later misses need it
        folder = housekeeping_dir(tools, self._tool_dir(tool).name, create=True)
        if folder is None:
            return
        # O_NOFOLLOW: a link planted at the key's name is never written through.
        fd = os.open(
            folder / key,
            os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
        )
        try:
            os.utime(fd)  # the newest entries are found by this time
        finally:
            os.close(fd)
        _append_recent(folder / self.RECENT_LOG, key)

    RECENT_LOG = ".recent"
    """In a tool's index folder: the keys committed, one a line, newest last.

    With 100,000 entries, finding a tool's newest records by their times
    cost a `stat` per record of the tool on every miss (5 ms at 1,000 per
    tool); the tail of this log costs one read."""

    def recent_keys(self, tool: str, limit: int = 32) -> list[str]:
        """Return the newest keys recorded for a tool, newest first.

        Args:
            tool: `package/id`.
            limit: At most this many.

        Returns:
            Keys, newest first.
        """
        folder = os.fspath(self._tool_dir(tool))
        logged = _read_recent(Path(folder, self.RECENT_LOG), limit)
        if logged is not None and len(logged) >= limit:
            return [
                key
                for key in logged
                if os.path.lexists(os.path.join(folder, key))  # gc keeps these
            ]
        # A young log (or a cache from before it): the records' times tell.
        try:
            items = list(os.scandir(self._tool_dir(tool)))
        except FileNotFoundError:
            return []
        stamped: list[tuple[int, str]] = []
        for item in items:
            with contextlib.suppress(OSError):  # removed by a concurrent gc
                stamped.append((item.stat().st_mtime_ns, item.name))
        stamped.sort(reverse=True)
        return [name for _, name in stamped[:limit]]


_RECENT_TRIM = 64 * 1024
"""A tool's recent-keys log is cut back to its tail beyond this many bytes."""


def _append_recent(path: Path, key: str) -> None:
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
        )
    except OSError:
        return  # only explanations of later misses need it
    try:
        os.write(fd, f"{key}\n".encode())  # one write: appends never interleave
        size = os.fstat(fd).st_size
    except OSError:
        return
    finally:
        os.close(fd)
    if size > _RECENT_TRIM:
        tail = _read_recent(path, 256)
        if tail is None:
            return
        temp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            temp.write_text("".join(f"{k}\n" for k in reversed(tail)))
            os.replace(temp, path)  # a racing append may be lost: only a hint


def _read_recent(path: Path, limit: int) -> list[str] | None:
    """The newest distinct keys of a recent-keys log, newest first; None if none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        want = min(size, 65 * limit * 4)
        data = os.pread(fd, want, size - want)
    except OSError:
        return None
    finally:
        os.close(fd)
    keys: list[str] = []
    for line in reversed(data.decode("ascii", errors="replace").split("\n")):
        if len(line) == 64 and line not in keys and line.isalnum():
            keys.append(line)
            if len(keys) >= limit:
                break
    return keys


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "reason unknown"


def _check_outputs(
    entry: Path,
    manifest: Manifest,
    verify: str,
    hash_file: Callable[[str, int], str] | None,
) -> str:
    # A hit replays the captured output: a missing or truncated log would make
    # every hit fail, so it is checked like an output: its size on every hit
    # (one stat), its line count only with verify="full" (it reads the log).
    for name, lines, size in (
        (CacheStore.STDOUT_LOG, manifest.stdout_lines, manifest.stdout_size),
        (CacheStore.STDERR_LOG, manifest.stderr_lines, manifest.stderr_size),
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
    for name in manifest.absent:
        # Served absent, as the tool left it: a file that appeared there
        # since (another tool writing beside its input) is not this result.
        if os.path.lexists(os.path.join(entry, name)):
            return f"output {name} was not written by the tool but exists now"
    for record in manifest.outputs:
        full = os.path.join(entry, record.path)
        try:
            st = os.lstat(full)
        except OSError:
            return f"output {record.path} is missing"
        if record.link is not None:
            try:
                if os.readlink(full) != record.link:
                    return f"symlink {record.path} changed"
            except OSError:
                return f"output {record.path} is not a symlink any more"
            continue
        if not stat.S_ISREG(st.st_mode):
            # A symlink or folder of the same size where a file was recorded.
            return f"output {record.path} is not a regular file any more"
        if st.st_size != record.size:
            return (
                f"output {record.path} has {st.st_size} bytes, expected {record.size}"
            )
        if (
            verify == "full"
            and hash_file is not None
            and hash_file(full, st.st_size) != record.digest
        ):
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
