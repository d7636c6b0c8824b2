"""What an execution is given: the services a `CachingRunner` builds once.

An execution never calls back into its runner. The runner builds one
`ExecutionServices` (the cache, its read-only and remote tiers, the policy,
the hashers and memo, the event sink) and hands it to every execution it
starts; the data flows one way: runner -> execution -> key -> store.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styxcache.cache_size import CacheSizeEstimate
from styxcache.events import CacheEvent
from styxcache.fingerprint import ExecutableDigests
from styxcache.hashing import ContentHasher, stat_signature
from styxcache.manifest import Manifest
from styxcache.memo import DigestMemo
from styxcache.policy import CachePolicy
from styxcache.remote import Fetched, RemoteTier
from styxcache.store import CacheStore, Lookup

__all__ = ["ExecutionServices", "WarnOnce"]

_log = logging.getLogger("styxcache")


class WarnOnce:
    """Says yes the first time a topic is seen (one warning per tool, not per call).

    A pipeline of 200 subjects must not print the same sentence 200 times.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, topic: str) -> bool:
        """Return True the first time `topic` is seen.

        Args:
            topic: What the warning is about (usually a kind and the tool).
        """
        with self._lock:
            if topic in self._seen:
                return False
            self._seen.add(topic)
            return True


@dataclasses.dataclass(frozen=True)
class ExecutionServices:
    """Everything an execution needs, built once by its runner.

    Attributes:
        store: The main cache.
        tiers: Read-only caches searched after it, in order.
        remote: The object-store tier, or None.
        policy: The cache policy.
        hasher: The content hasher of outputs and executables.
        memo: The digest memo, or None.
        exclusions: Folders never part of an input folder's digest (the
            caches, the base runner's scratch folder, the memo).
        writable: Whether the main cache can take new entries.
        version: The styxcache version written into manifests.
        base_runner: The runner that really runs tools; it answers the
            attribute look-ups (environ, logger) a deferred execution would.
        data_dir: The innermost base runner's data folder, if any.
        emit: Where events go (the runner's `EventSink.emit`).
        warn_once: Tells whether a per-tool warning was given already.
        executables: Digests of the executables commands resolve to.
        size_estimate: The cache's running size total between `max_size`
            scans (gc_trim.py).
    """

    store: CacheStore
    tiers: tuple[CacheStore, ...]
    remote: RemoteTier | None
    policy: CachePolicy
    hasher: ContentHasher
    memo: DigestMemo | None
    exclusions: tuple[Path, ...]
    writable: bool
    version: str
    base_runner: Any
    data_dir: Path | None
    emit: Callable[[CacheEvent], None]
    warn_once: WarnOnce
    executables: ExecutableDigests
    size_estimate: CacheSizeEstimate = dataclasses.field(
        default_factory=CacheSizeEstimate
    )

    # Looking keys up --------------------------------------------------------

    def lookup(self, store: CacheStore, key: str, *, quarantine: bool) -> Lookup:
        """Look a key up in one cache under this policy's checks.

        Args:
            store: The main cache or a read-only tier.
            key: The cache key.
            quarantine: Move a damaged entry aside (never in a tier).
        """
        return store.lookup(
            key,
            verify=self.policy.verify,
            hash_file=self.hasher.hash_file,
            quarantine=quarantine,
            trust=self.policy.trust_setting,
        )

    def find_in_tiers(self, key: str) -> tuple[CacheStore, Manifest] | None:
        """Look a key up in the read-only caches, in order.

        Args:
            key: The cache key.

        Returns:
            The first tier holding a verified entry, with its manifest.
        """
        for tier in self.tiers:
            found = self.lookup(tier, key, quarantine=False)
            if found.manifest is not None:
                return tier, found.manifest
        return None

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
            fetched.manifest = self.lookup(self.store, key, quarantine=True).manifest
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

    def after_commit(self, key: str) -> None:
        """Trim the cache to `policy.max_size` after a commit, if set.

        Args:
            key: The entry just committed (never trimmed).
        """
        limit = self.policy.max_size_bytes
        if limit is None:
            return
        # gc sits above the execution's modules: imported when a limit is set.
        from styxcache.gc_trim import trim_after_commit

        trim_after_commit(self.store, limit, keep=key, estimate=self.size_estimate)

    # Digests ------------------------------------------------------------------

    def digest(self, path: Path) -> tuple[str, str]:
        """Digest an input for the key, with its quick-check stat signature.

        Args:
            path: The input file or folder.

        Returns:
            `(digest, signature)`.
        """
        hasher = self.policy.hasher
        if isinstance(hasher, ContentHasher):
            found = hasher.digest(path, memo=self.memo, exclude=self.exclusions)
            return found.value, found.signature
        signature = stat_signature(path, self.exclusions)  # before the content
        return hasher.hash_path(path), signature

    def digest_value(self, path: Path) -> str:
        """Digest a path the way the key does, without the signature.

        Args:
            path: The file or folder.
        """
        hasher = self.policy.hasher
        if isinstance(hasher, ContentHasher):
            return hasher.digest(path, memo=self.memo, exclude=self.exclusions).value
        return hasher.hash_path(path)
