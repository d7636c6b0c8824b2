"""`RemoteTier`: an object store behind the local cache.

Read on a local miss, written after a local commit. A remote entry is
downloaded into a staging folder of the local cache and verified there (the
key recomputed from the manifest's payload, every file's size and blake3
digest) before it is committed and served, so a damaged or tampered remote
entry is never served. Uploads write the content-addressed blobs first and
the envelope last, with a create-only conditional put.

Two kinds of methods: `download`, `upload` and `iter_keys` raise (the
`push`/`pull` commands report errors); `fetch_for_run` and `upload_for_run`
never do: a remote failure costs a pipeline step one warning per outage and
the step goes on with the local cache alone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from styxcache.manifest import Manifest
from styxcache.remote.blobs import PART_CONCURRENCY, fill_entry, upload_file
from styxcache.remote.connect import (
    ENV_REMOTE,
    ENV_REMOTE_WRITE,
    check_url,
    open_store,
)
from styxcache.remote.envelope import (
    BlobRef,
    Envelope,
    blob_path,
    envelope_path,
    local_envelope,
)
from styxcache.remote.errors import (
    DamagedEntryError,
    ObjectMissingError,
    RemoteError,
    client_call,
)
from styxcache.remote.health import RemoteHealth
from styxcache.remote.outcomes import Fetched, RemoteOutcome, merge_outcomes
from styxcache.store import CacheStore
from styxcache.trust import seal_entry

__all__ = ["Fetched", "RemoteOutcome", "RemoteTier", "merge_outcomes"]


_log = logging.getLogger("styxcache.remote")

FILE_WORKERS = 8
"""Files moved at once (per tier, across entries)."""

_DAMAGED_MEMORY = 1024


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


class RemoteTier:
    """A remote cache on object storage.

    Args:
        url: `s3://bucket/prefix` (also `gs://`, `az://`, `file:///path`).
        write: Upload entries after local commits (False for read-only
            consumers, such as CI runs of pull requests).
        source: Where the URL came from, for error messages.
        clock: Monotonic seconds, for the pause after a failure (tests
            inject a fake one).

    Raises:
        RemoteConfigError: If the URL is malformed (nothing is contacted).
    """

    def __init__(
        self,
        url: str,
        *,
        write: bool = True,
        source: str = "remote",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = check_url(url, source=source)
        self.write = write
        self._health = RemoteHealth(self.url, clock)
        self._store: Any = None
        self._lock = threading.Lock()
        self._damaged: dict[str, str | None] = {}
        self._files: concurrent.futures.ThreadPoolExecutor | None = None
        self._parts: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    @classmethod
    def from_settings(cls, remote: str | None, write: bool | None) -> RemoteTier | None:
        """Build the tier from arguments, falling back to the environment.

        Args:
            remote: A URL; None reads `STYXCACHE_REMOTE`; `""` means none.
            write: None reads `STYXCACHE_REMOTE_WRITE` (default true).

        Returns:
            The tier, or None when no remote is configured.

        Raises:
            RemoteConfigError: If the URL is malformed.
        """
        source = "remote"
        if remote is None:
            remote = os.environ.get(ENV_REMOTE, "")
            source = ENV_REMOTE
        if not remote or not remote.strip():
            return None
        if write is None:
            write = _env_flag(ENV_REMOTE_WRITE)
        return cls(remote, write=True if write is None else write, source=source)

    def __repr__(self) -> str:
        return f"RemoteTier({self.url!r}, write={self.write})"

    # Plumbing -------------------------------------------------------------

    def _after_fork(self) -> None:
        # A forked child inherits pools whose threads did not survive the
        # fork (a submit would wait forever) and the client's connections.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._health.after_fork()
            self._store, self._files, self._parts = None, None, None

    @property
    def store(self) -> Any:
        """The obstore store, built on first use."""
        self._after_fork()
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.url)
        return self._store

    def _pools(
        self,
    ) -> tuple[
        concurrent.futures.ThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor
    ]:
        # Two pools: a file task waits on its parts, so they must not share one.
        self._after_fork()
        with self._lock:
            if self._files is None or self._parts is None:
                self._files = concurrent.futures.ThreadPoolExecutor(
                    FILE_WORKERS, thread_name_prefix="styxcache-remote-file"
                )
                self._parts = concurrent.futures.ThreadPoolExecutor(
                    FILE_WORKERS * PART_CONCURRENCY,
                    thread_name_prefix="styxcache-remote-part",
                )
            return self._files, self._parts

    def close(self) -> None:
        """Stop the transfer threads (they are restarted if needed)."""
        with self._lock:
            pools, self._files, self._parts = (self._files, self._parts), None, None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)

    # Reading --------------------------------------------------------------

    def read_envelope(self, key: str) -> tuple[Envelope, str | None] | None:
        """Fetch and check an entry's envelope.

        Args:
            key: The cache key.

        Returns:
            The envelope and its ETag, or None when there is no entry.

        Raises:
            DamagedEntryError: If it is unreadable or for another key.
            RemoteError: If the store fails.
        """
        import obstore

        path = envelope_path(key)
        try:
            with client_call(f"read {path}"):
                result = obstore.get(self.store, path)
                data = bytes(result.bytes())
                etag = result.meta.get("e_tag")
        except ObjectMissingError:
            return None
        try:
            return Envelope.parse(data, key), etag
        except DamagedEntryError:
            self._remember_damage(key, etag)
            raise

    def download(
        self,
        cache: CacheStore,
        key: str,
        *,
        read_only_outputs: bool = True,
        accept: Callable[[Manifest], bool] | None = None,
    ) -> Manifest | None:
        """Download, verify and commit one entry into a local cache.

        Args:
            cache: The local cache.
            key: The cache key.
            read_only_outputs: Make the files read-only, as local commits do.
            accept: Says from the manifest whether the entry is wanted.

        Returns:
            The manifest of the committed entry; None when the remote has no
            entry or `accept` declined it.

        Raises:
            DamagedEntryError: The entry failed verification (nothing was
                committed).
            RemoteError: The store failed (nothing was committed).
            OSError: The local cache could not be written.
        """
        found = self.read_envelope(key)
        if found is None:
            return None
        envelope, etag = found
        if accept is not None and not accept(envelope.manifest):
            return None
        staging = cache.stage(key)
        try:
            try:
                fill_entry(self.store, staging, envelope, *self._pools())
            except DamagedEntryError:
                self._remember_damage(key, etag)
                raise
            (staging / CacheStore.MANIFEST).write_text(
                envelope.manifest_text, encoding="utf-8"
            )
            seal_entry(staging, read_only=read_only_outputs)
            cache.commit(staging, key)
        except BaseException:
            cache.discard(staging)
            raise
        cache.record_tool(envelope.manifest.tool, key)
        return envelope.manifest

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        """Yield `(key, upload time)` of every remote entry, in listing order.

        Raises:
            RemoteError: If the store fails.
        """
        import obstore

        prefix = envelope_path("00000").rsplit("/", 2)[0] + "/"
        with client_call(f"list {prefix}"):
            stream = obstore.list(self.store, prefix=prefix, chunk_size=1000)
            for batch in stream:
                for meta in batch:
                    name = str(meta["path"]).rsplit("/", 1)[-1]
                    key = name.removesuffix(".json")
                    if name.endswith(".json") and key.isalnum() and len(key) > 2:
                        yield key, meta["last_modified"].timestamp()

    def has_entry(self, key: str) -> bool:
        """Return True when the remote holds an envelope for the key.

        Raises:
            RemoteError: If the store fails.
        """
        import obstore

        try:
            with client_call(f"check {envelope_path(key)}"):
                obstore.head(self.store, envelope_path(key))
        except ObjectMissingError:
            return False
        return True

    # Writing --------------------------------------------------------------

    def upload(
        self,
        cache: CacheStore,
        key: str,
        *,
        replace: bool = False,
        check_present: bool = True,
    ) -> str:
        """Upload one committed local entry: blobs first, the envelope last.

        A remote entry known to be damaged is replaced (conditionally on its
        ETag, so a concurrent repair is not overwritten), and its blobs are
        rewritten even where they exist.

        Args:
            cache: The local cache holding the entry.
            key: The entry's key.
            replace: Overwrite a remote entry (a refresh).
            check_present: Ask first whether the remote already has it.

        Returns:
            `"uploaded"`, or `"present"` when the remote had it already.

        Raises:
            RemoteError: If the store fails.
            OSError: If the local entry cannot be read or changed meanwhile.
        """
        import obstore

        with self._lock:
            repair = key in self._damaged
            etag = self._damaged.get(key)
        if check_present and not replace and not repair and self.has_entry(key):
            return "present"
        envelope = local_envelope(cache, key)
        files, _parts = self._pools()
        unique = {ref.digest: ref for ref in envelope.files}
        entry = cache.entry_dir(key)
        jobs = [
            files.submit(self._put_blob, entry / ref.path, ref, repair)
            for ref in unique.values()
        ]
        concurrent.futures.wait(jobs)
        for job in jobs:
            job.result()
        mode: Any = "overwrite" if replace else "create"
        if repair and not replace:
            mode = {"e_tag": etag} if etag else "overwrite"
        path = envelope_path(key)
        try:
            with client_call(f"write {path}"):
                obstore.put(self.store, path, envelope.to_bytes(), mode=mode)
        except RemoteError as exc:
            if exc.kind in ("AlreadyExistsError", "PreconditionError"):
                return "present"  # a concurrent writer stored it first
            raise
        with self._lock:
            self._damaged.pop(key, None)
        return "uploaded"

    def _put_blob(self, source: Path, ref: BlobRef, force: bool) -> None:
        import obstore

        path = blob_path(ref.digest)
        if not force:
            try:
                with client_call(f"check {path}"):
                    if int(obstore.head(self.store, path)["size"]) == ref.size:
                        return
            except ObjectMissingError:
                pass
        size = os.stat(source).st_size
        if size != ref.size:
            raise OSError(
                f"{source} has {size} bytes, its manifest says {ref.size}: "
                "changed since it was cached; not uploaded"
            )
        upload_file(self.store, path, source, size)

    def _remember_damage(self, key: str, etag: str | None) -> None:
        with self._lock:
            if len(self._damaged) >= _DAMAGED_MEMORY:
                self._damaged.clear()
            self._damaged[key] = etag

    # For pipeline steps: never raise ------------------------------------------

    def fetch_for_run(
        self,
        cache: CacheStore,
        key: str,
        *,
        read_only_outputs: bool,
        max_age_s: float | None,
    ) -> Fetched:
        """Look a key up for a pipeline step that missed locally.

        Args:
            cache: The local cache to download into.
            key: The key.
            read_only_outputs: See `download`.
            max_age_s: Entries older than this are not fetched.

        Returns:
            The manifest committed locally (or None), with the outcome.
        """
        if not self._health.available():
            return Fetched(None, "offline")

        def young_enough(manifest: Manifest) -> bool:
            return max_age_s is None or time.time() - manifest.created <= max_age_s

        try:
            manifest = self.download(
                cache, key, read_only_outputs=read_only_outputs, accept=young_enough
            )
        except DamagedEntryError as exc:
            self._health.succeeded()
            _log.warning(
                "remote cache entry %s in %s is damaged (%s); it is not served, "
                "and the tool runs",
                key[:12],
                self.url,
                exc,
            )
            return Fetched(None, "damaged")
        except RemoteError as exc:
            self._health.failed("lookup", exc)
            return Fetched(None, "error")
        except Exception as exc:
            self._health.unexpected(
                f"cannot copy remote entry {key[:12]} into {cache.root}; "
                "running the tool",
                exc,
            )
            return Fetched(None, "error")
        self._health.succeeded()
        return Fetched(manifest, "hit" if manifest is not None else "miss")

    def upload_for_run(
        self, cache: CacheStore, key: str, previous: str, *, replace: bool
    ) -> str:
        """Upload an entry a pipeline step just committed.

        Args:
            cache: The local cache.
            key: The committed entry's key.
            previous: The lookup's outcome for this step.
            replace: The step replaced the entry on purpose (a refresh).

        Returns:
            The outcome the step's event reports.
        """
        if not self.write:
            return previous
        if not self._health.available():
            return merge_outcomes(previous, "offline")
        if previous in ("error", "offline"):
            return previous
        try:
            # After a remote miss the envelope is known to be absent: skip
            # the extra request (the conditional put still guards a race).
            outcome = self.upload(
                cache, key, replace=replace, check_present=previous != "miss"
            )
        except RemoteError as exc:
            self._health.failed("upload", exc)
            return merge_outcomes(previous, "error")
        except Exception as exc:
            self._health.unexpected(
                f"cannot upload entry {key[:12]} to {self.url}", exc
            )
            return merge_outcomes(previous, "error")
        self._health.succeeded()
        if previous == "damaged" and outcome == "uploaded":
            _log.info("remote cache entry %s repaired", key[:12])
        return merge_outcomes(previous, outcome)
