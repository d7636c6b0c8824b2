"""`CachingRunner`: the middleware users install with `set_global_runner`."""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from styxdefs import (
    Execution,
    LocalRunner,
    Metadata,
    Runner,
    get_global_runner,
    set_global_runner,
)

from styxcache.events import CacheEvent, CacheStats, EventLog, publish
from styxcache.execution import CachingExecution, copy_entry
from styxcache.hashing import ContentHasher
from styxcache.key import tool_id
from styxcache.manifest import Manifest
from styxcache.memo import DigestMemo, file_memo_key
from styxcache.modes import CacheMode, current_mode
from styxcache.policy import CachePolicy
from styxcache.remote import Fetched, RemoteTier
from styxcache.store import CacheStore

__all__ = ["CacheDirectoryError", "CachingRunner", "use_cache"]

_log = logging.getLogger("styxcache")

_EXECUTABLE_TTL = 5.0
"""Seconds a PATH look-up is trusted before it is repeated."""


class CacheDirectoryError(OSError):
    """The cache directory cannot be created or is not a directory."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("styxcache")
    except Exception:
        return "unknown"


def _prepare(root: Path) -> bool:
    """Create the cache directory; return whether it is writable.

    Raises:
        CacheDirectoryError: If it cannot be created or is not a folder.
    """
    if root.exists() and not root.is_dir():
        raise CacheDirectoryError(
            f"cache directory {root} exists and is not a directory"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheDirectoryError(
            f"cannot create cache directory {root}: {exc.strerror or exc}"
        ) from exc
    # os.access is unreliable on NFS and with ACLs: try to write for real.
    probe = root / CacheStore.STAGING_DIR / f".probe-{uuid.uuid4().hex}"
    try:
        probe.parent.mkdir(exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            _log.info("cache directory %s is read-only: serving hits only", root)
            return False
        raise CacheDirectoryError(
            f"cannot write to cache directory {root}: {exc}"
        ) from exc
    return True


def _innermost_runner(runner: Any) -> Any:
    seen = 0
    while hasattr(runner, "base") and seen < 16:
        runner = runner.base
        seen += 1
    return runner


class CachingRunner(Runner):
    """A `Runner` that stores each tool run's outputs in a content-addressed cache.

    Args:
        base: The runner that really runs tools (LocalRunner, DockerRunner...).
        cache_dir: The cache directory (created if needed). An existing
            read-only directory is served read-only.
        policy: Keying and storage knobs; `CachePolicy()` by default.
        read_only_caches: More cache directories searched, in order, after
            the main one and never written (a restored CI cache, a lab-wide
            cache). A hit there is copied (hard-linked where possible) into
            the main cache.
        on_event: Called with a `CacheEvent` for every hit, miss, bypass and
            refresh, in the thread that ran the execution.
        remote: An object-store cache behind the local one
            (`s3://bucket/prefix`, also `gs://`, `az://`, `file:///`): looked
            up on a local miss, written after each commit. None reads
            `STYXCACHE_REMOTE`; `""` disables it. See `styxcache.remote`.
        remote_write: Upload to the remote (False for read-only consumers);
            None reads `STYXCACHE_REMOTE_WRITE` (default true).

    Raises:
        CacheDirectoryError: If the cache directory cannot be created.
        TypeError: If `base` is not a runner.
        RemoteConfigError: If the remote URL is malformed.
    """

    def __init__(
        self,
        base: Runner,
        cache_dir: str | os.PathLike[str],
        *,
        policy: CachePolicy | None = None,
        read_only_caches: Iterable[str | os.PathLike[str]] = (),
        on_event: Callable[[CacheEvent], None] | None = None,
        remote: str | None = None,
        remote_write: bool | None = None,
    ) -> None:
        if isinstance(base, type):
            raise TypeError(
                f"base must be a Styx Runner instance, got the class {base.__name__} "
                f"(did you mean {base.__name__}()?)"
            )
        if not callable(getattr(base, "start_execution", None)):
            raise TypeError(f"base must be a Styx Runner, got {type(base).__name__}")
        if policy is not None and not isinstance(policy, CachePolicy):
            raise TypeError(
                f"policy must be a CachePolicy, got {type(policy).__name__}"
            )
        self.base = base
        self.policy = policy if policy is not None else CachePolicy()
        self.store = CacheStore(Path(cache_dir).absolute())
        self.tiers = [CacheStore(Path(p).absolute()) for p in read_only_caches]
        self.remote = RemoteTier.from_settings(remote, remote_write)
        self.on_event = on_event
        self.stats = CacheStats()
        self.version = _version()
        self.writable = _prepare(self.store.root)
        memo_dir = self.policy.memo_path()
        self.memo = DigestMemo(memo_dir) if memo_dir is not None else None
        self._events = EventLog(self.store.root) if self.writable else None
        self._stats_lock = threading.Lock()
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()
        self._default_hasher = ContentHasher()
        self._executables: dict[
            tuple[str, str | None], tuple[float, str, str, str]
        ] = {}
        self._exclusions = [self.store.root, *(tier.root for tier in self.tiers)]
        data_dir = getattr(_innermost_runner(base), "data_dir", None)
        if data_dir is not None:
            self._exclusions.append(Path(data_dir).absolute())
        if self.memo is not None:
            self._exclusions.append(self.memo.path.parent)

    def start_execution(self, metadata: Metadata) -> Execution:
        """Start an execution that is served from, or stored in, the cache.

        Args:
            metadata: The tool's metadata.

        Returns:
            A caching execution wrapping the base runner's execution; under
            `bypass()` or a `bypass_tools` match, the base runner's execution
            itself (as in styxcache 0.3.0), still counted as a bypass.
        """
        mode = current_mode()
        if mode is CacheMode.BYPASS:
            return self._bypassed(metadata, "bypassed")
        if self.policy.bypasses(metadata):
            return self._bypassed(metadata, "matches CachePolicy.bypass_tools")
        if type(self.base) is LocalRunner:
            return CachingExecution(
                self,
                metadata,
                mode,
                start_base=lambda: self.base.start_execution(metadata),
            )
        return CachingExecution(
            self, metadata, mode, base=self.base.start_execution(metadata)
        )

    def _bypassed(self, metadata: Metadata, reason: str) -> Execution:
        """Start the base execution and count its run as a bypass event."""
        execution = self.base.start_execution(metadata)
        original = execution.run
        tool = tool_id(metadata)

        @functools.wraps(original)
        def run(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            ok = False
            try:
                original(*args, **kwargs)
                ok = True
            finally:
                self.emit(
                    CacheEvent(
                        kind="bypass",
                        tool=tool,
                        key="",
                        duration_s=time.perf_counter() - started,
                        reason=reason,
                        ok=ok,
                    )
                )

        try:
            # An instance attribute: the object stays the base's own execution.
            execution.run = run  # type: ignore[method-assign]
        except (AttributeError, TypeError):
            self.emit(CacheEvent(kind="bypass", tool=tool, key="", reason=reason))
        return execution

    def base_data_dir(self) -> Path | None:
        """The innermost base runner's data folder (LocalRunner's), if any."""
        data_dir = getattr(_innermost_runner(self.base), "data_dir", None)
        return Path(data_dir) if data_dir is not None else None

    # Services for executions --------------------------------------------------

    def warn_once(self, topic: str) -> bool:
        """Return True the first time this runner sees `topic`.

        Some warnings are given once per tool, not once per call: a pipeline
        of 200 subjects must not print the same sentence 200 times.

        Args:
            topic: What the warning is about (usually a kind and the tool).

        Returns:
            Whether to warn now.
        """
        with self._warned_lock:
            if topic in self._warned:
                return False
            self._warned.add(topic)
            return True

    def verify_args(self) -> dict[str, Any]:
        """Keyword arguments for `CacheStore.lookup` under this policy."""
        return {
            "verify": self.policy.verify,
            "hash_file": self.policy_hasher().hash_file,
            "trust": self.policy.trust_setting,
        }

    def policy_hasher(self) -> ContentHasher:
        """The ContentHasher used for outputs and executables."""
        hasher = self.policy.hasher
        return hasher if isinstance(hasher, ContentHasher) else self._default_hasher

    def hash_exclusions(self) -> list[Path]:
        """Folders never part of an input folder's digest: caches, scratch, memo."""
        return self._exclusions

    def executable_digest(self, name: str, search_path: str | None) -> str | None:
        """Digest of the executable a command name resolves to on PATH.

        The resolution is remembered for a few seconds and re-validated with
        one `stat`, so a hit does not walk PATH and resolve symlinks every time,
        while a binary replaced in place is noticed at once.

        Args:
            name: `cargs[0]`.
            search_path: The PATH the tool runs with.

        Returns:
            The digest, or None when nothing on PATH matches.
        """
        now = time.monotonic()
        cached = self._executables.get((name, search_path))
        if cached is not None and now - cached[0] < _EXECUTABLE_TTL:
            _, real, stamp, digest = cached
            try:
                if file_memo_key(os.stat(real)) == stamp:
                    return digest
            except OSError:
                pass
        found = shutil.which(name, path=search_path)
        if found is None:
            return None
        real = os.path.realpath(found)
        try:
            stamp = file_memo_key(os.stat(real))
            digest = self.policy_hasher().hash_path(Path(real), memo=self.memo)
        except OSError:
            return None
        self._executables[(name, search_path)] = (now, real, stamp, digest)
        return digest

    def find_in_tiers(self, key: str) -> tuple[CacheStore, Manifest] | None:
        """Look a key up in the read-only caches, in order.

        Args:
            key: The cache key.

        Returns:
            The first tier holding a verified entry, with its manifest.
        """
        for tier in self.tiers:
            found = tier.lookup(key, quarantine=False, **self.verify_args())
            if found.manifest is not None:
                return tier, found.manifest
        return None

    def import_from_tier(self, tier: CacheStore, key: str) -> bool:
        """Copy a tier's entry into the main cache.

        Args:
            tier: The read-only cache holding the entry.
            key: The entry's key.

        Returns:
            True when the entry is now in the main cache.
        """
        staging = (
            self.store.root / self.store.STAGING_DIR / f"{key}.{uuid.uuid4().hex[:12]}"
        )
        try:
            copy_entry(tier.entry_dir(key), staging)
            self.store.commit(staging, key)
        except OSError as exc:
            _log.warning("cannot copy entry %s from %s: %s", key[:12], tier.root, exc)
            return False
        manifest = Manifest.read(self.store.entry_dir(key) / self.store.MANIFEST)
        self.store.record_tool(manifest.tool, key)
        return True

    def fetch_remote(self, key: str) -> Fetched | None:
        """Look a local miss up in the remote tier; a hit is now a local entry.

        Never raises: remote failures are reported in the outcome.

        Args:
            key: The cache key.

        Returns:
            None without a remote tier (or a read-only cache); otherwise the
            verified manifest of the downloaded entry, or None, with the
            outcome for the event.
        """
        if self.remote is None or not self.writable:
            return None
        fetched = self.remote.fetch_for_run(
            self.store,
            key,
            read_only_outputs=self.policy.read_only_outputs,
            max_age_s=self.policy.max_age_s,
        )
        if fetched.manifest is not None:
            fetched.manifest = self.store.lookup(key, **self.verify_args()).manifest
        return fetched

    def upload_remote(self, key: str, previous: str, *, replace: bool) -> str:
        """Upload an entry just committed, if a writable remote tier is set.

        Never raises: remote failures are reported in the outcome.

        Args:
            key: The committed entry's key.
            previous: The remote outcome of the lookup (`""` if none).
            replace: The commit replaced an entry on purpose (a refresh).

        Returns:
            The remote outcome for the event.
        """
        if self.remote is None:
            return previous
        return self.remote.upload_for_run(self.store, key, previous, replace=replace)

    def emit(self, event: CacheEvent) -> None:
        """Count an event and hand it to the callback, collectors, log and file.

        Args:
            event: The event.
        """
        with self._stats_lock:
            self.stats.add(event)
        if event.kind == "hit":
            _log.info(
                "styxcache hit %s (%s): saved %.2fs%s",
                event.tool,
                event.key[:12],
                event.saved_s,
                f", {event.reason}" if event.reason else "",
            )
        elif event.kind in ("miss", "refresh"):
            _log.info(
                "styxcache %s %s (%s): %s",
                event.kind,
                event.tool,
                event.key[:12],
                event.reason or "not cached yet",
            )
        else:
            _log.debug("styxcache bypass %s: %s", event.tool, event.reason)
        publish(event)
        if self._events is not None:
            self._events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                _log.exception("on_event callback failed for %s", event.tool)

    def after_commit(self, key: str) -> None:
        """Trim the cache to `policy.max_size` after a commit, if set.

        Args:
            key: The entry just committed (never trimmed).
        """
        limit = self.policy.max_size_bytes
        if limit is None:
            return
        from styxcache.gc import trim_after_commit

        trim_after_commit(self.store, limit, keep=key)


def use_cache(
    cache_dir: str | os.PathLike[str],
    *,
    base: Runner | None = None,
    read_only_caches: Iterable[str | os.PathLike[str]] = (),
    on_event: Callable[[CacheEvent], None] | None = None,
    remote: str | None = None,
    remote_write: bool | None = None,
    **policy_fields: Any,
) -> CachingRunner:
    """Wrap the current global runner in a `CachingRunner` and make it global.

    Like `styxkit.use_graph()`: call it after choosing a runner
    (`styxkit.use_docker()`...), or pass `base`.

    Args:
        cache_dir: The cache directory.
        base: The runner to wrap; the current global runner by default.
        read_only_caches: See `CachingRunner`.
        on_event: See `CachingRunner`.
        remote: See `CachingRunner`.
        remote_write: See `CachingRunner`.
        **policy_fields: Fields of `CachePolicy`.

    Returns:
        The new global runner.
    """
    runner = CachingRunner(
        base if base is not None else get_global_runner(),
        cache_dir,
        policy=CachePolicy(**policy_fields),
        read_only_caches=read_only_caches,
        on_event=on_event,
        remote=remote,
        remote_write=remote_write,
    )
    set_global_runner(runner)
    return runner
