"""`CachingRunner`: the middleware users install with `set_global_runner`."""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
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

from styxcache._system import innermost
from styxcache.errors import CacheDirectoryError
from styxcache.events import CacheEvent, CacheStats, EventLog, EventSink
from styxcache.execution import CachingExecution
from styxcache.fingerprint import ExecutableDigests
from styxcache.hashing import ContentHasher
from styxcache.key import tool_id
from styxcache.memo import DigestMemo
from styxcache.modes import CacheMode, current_mode
from styxcache.policy import CachePolicy
from styxcache.remote import RemoteTier
from styxcache.services import ExecutionServices, WarnOnce
from styxcache.store import CacheStore

__all__ = ["CacheDirectoryError", "CachingRunner", "use_cache"]

_log = logging.getLogger("styxcache")


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
        self._policy = policy if policy is not None else CachePolicy()
        self.store = CacheStore(Path(cache_dir).absolute())
        self.tiers = [CacheStore(Path(p).absolute()) for p in read_only_caches]
        remote_tier = RemoteTier.from_settings(remote, remote_write)  # checked first
        self.version = _version()
        self.writable = _prepare(self.store.root)
        memo_dir = self._policy.memo_path()
        self.memo = DigestMemo(memo_dir) if memo_dir is not None else None
        self._sink = EventSink(
            EventLog(self.store.root) if self.writable else None, on_event
        )
        self._services = self._build_services(remote_tier, WarnOnce())

    def _build_services(
        self, remote: RemoteTier | None, warn_once: WarnOnce
    ) -> ExecutionServices:
        hasher = self._policy.hasher
        content = hasher if isinstance(hasher, ContentHasher) else ContentHasher()
        data_dir = getattr(innermost(self.base), "data_dir", None)
        exclusions = [self.store.root, *(tier.root for tier in self.tiers)]
        if data_dir is not None:
            exclusions.append(Path(data_dir).absolute())
        if self.memo is not None:
            exclusions.append(self.memo.path.parent)
        return ExecutionServices(
            store=self.store,
            tiers=tuple(self.tiers),
            remote=remote,
            policy=self._policy,
            hasher=content,
            memo=self.memo,
            exclusions=tuple(exclusions),
            writable=self.writable,
            version=self.version,
            base_runner=self.base,
            data_dir=Path(data_dir) if data_dir is not None else None,
            emit=self._sink.emit,
            warn_once=warn_once,
            executables=ExecutableDigests(content, self.memo),
        )

    def policy_hasher(self) -> ContentHasher:
        """The content hasher of outputs and executables (for `CacheStore.lookup`)."""
        return self._services.hasher

    @property
    def policy(self) -> CachePolicy:
        """Keying and storage knobs; executions started later use a new one."""
        return self._policy

    @policy.setter
    def policy(self, policy: CachePolicy) -> None:
        self._policy = policy
        self._services = self._build_services(
            self._services.remote, self._services.warn_once
        )

    @property
    def stats(self) -> CacheStats:
        """Running totals of this runner's events."""
        return self._sink.stats

    @property
    def on_event(self) -> Callable[[CacheEvent], None] | None:
        """Called with every event (see the constructor); may be replaced."""
        return self._sink.on_event

    @on_event.setter
    def on_event(self, callback: Callable[[CacheEvent], None] | None) -> None:
        self._sink.on_event = callback

    @property
    def remote(self) -> RemoteTier | None:
        """The object-store tier, or None; executions started later use a new one."""
        return self._services.remote

    @remote.setter
    def remote(self, tier: RemoteTier | None) -> None:
        self._services = dataclasses.replace(self._services, remote=tier)

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
                self._services,
                metadata,
                mode,
                start_base=lambda: self.base.start_execution(metadata),
            )
        return CachingExecution(
            self._services, metadata, mode, base=self.base.start_execution(metadata)
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

    def emit(self, event: CacheEvent) -> None:
        """Count an event and hand it to the callback, collectors, log and file.

        Args:
            event: The event.
        """
        self._sink.emit(event)


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
