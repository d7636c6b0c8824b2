"""`push` and `pull`: move many entries between a local cache and a remote tier.

Entries move `jobs` at a time (and each entry's files several at a time,
see `RemoteTier`); with `dry_run` nothing moves and the report says what
would have. A remote failure stops the transfer and raises `RemoteError`
for the command to report: what was moved stays moved (every entry is
committed or written whole, never half). A problem with one entry (a local
file changed, a damaged remote entry) is noted in the report and the others
go on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable

from styxcache.manifest import Manifest
from styxcache.remote.errors import DamagedEntryError
from styxcache.remote.tier import RemoteTier
from styxcache.store import CacheStore

__all__ = ["SyncReport", "pull_entries", "push_entries"]

_log = logging.getLogger("styxcache.remote")

ENTRY_WORKERS = 4
"""Entries moved at once by push and pull."""


@dataclasses.dataclass
class SyncReport:
    """What a push or pull did.

    Attributes:
        moved: Keys uploaded (push) or downloaded and verified (pull).
        present: Keys the destination already had.
        damaged: Remote entries refused by verification, with why (pull).
        failed: Entries that could not be moved, with why.
        bytes: Output bytes moved.
        dry_run: Nothing was moved; `moved` is what would have been.
    """

    moved: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    damaged: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    bytes: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


class _Collector:
    """Thread-safe additions to a report."""

    def __init__(self, report: SyncReport) -> None:
        self.report = report
        self.lock = threading.Lock()

    def moved(self, key: str, size: int) -> None:
        with self.lock:
            self.report.moved.append(key)
            self.report.bytes += size

    def present(self, key: str) -> None:
        with self.lock:
            self.report.present.append(key)

    def problem(self, table: dict[str, str], key: str, why: str) -> None:
        with self.lock:
            table[key] = why


def _run_all(items: Iterable[str], work: Callable[[str], None], jobs: int) -> None:
    """Run `work` on every item, `jobs` at a time; stop at a remote failure."""
    with concurrent.futures.ThreadPoolExecutor(
        max(1, jobs), thread_name_prefix="styxcache-sync"
    ) as pool:
        pending: set[concurrent.futures.Future[None]] = set()
        try:
            for item in items:
                pending.add(pool.submit(work, item))
                if len(pending) >= 2 * jobs:
                    done, pending = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        future.result()
            for future in concurrent.futures.as_completed(pending):
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def push_entries(
    tier: RemoteTier,
    cache: CacheStore,
    keys: Iterable[tuple[str, int]],
    *,
    jobs: int = ENTRY_WORKERS,
    dry_run: bool = False,
) -> SyncReport:
    """Upload the local entries `keys` (`(key, size)` pairs) the remote lacks.

    See the module's docstring for `jobs`, `dry_run` and errors.
    """
    out = _Collector(SyncReport(dry_run=dry_run))
    sizes = dict(keys)

    def push(key: str) -> None:
        if dry_run:
            if tier.has_entry(key):
                out.present(key)
            else:
                out.moved(key, sizes[key])
            return
        try:
            outcome = tier.upload(cache, key)
        except OSError as exc:
            out.problem(out.report.failed, key, str(exc))
            return
        if outcome == "uploaded":
            out.moved(key, sizes[key])
        else:
            out.present(key)

    _run_all(sizes, push, jobs)
    return out.report


def pull_entries(
    tier: RemoteTier,
    cache: CacheStore,
    *,
    uploaded_since: float | None = None,
    accept: Callable[[Manifest], bool] | None = None,
    read_only_outputs: bool = True,
    jobs: int = ENTRY_WORKERS,
    dry_run: bool = False,
) -> SyncReport:
    """Download, verify and commit remote entries the local cache lacks.

    Only entries uploaded at or after `uploaded_since` (Unix time) and, when
    `accept` is given, those it accepts from their manifest; with
    `read_only_outputs` the files are made read-only, as local commits do.
    See the module's docstring for `jobs`, `dry_run` and errors.
    """
    out = _Collector(SyncReport(dry_run=dry_run))

    def wanted() -> Iterable[str]:
        for key, uploaded in tier.iter_keys():
            if uploaded_since is not None and uploaded < uploaded_since:
                continue
            if cache.is_hit(key):
                out.present(key)
                continue
            yield key

    def pull(key: str) -> None:
        try:
            if dry_run:
                found = tier.read_envelope(key)
                manifest = found[0].manifest if found is not None else None
                if manifest is not None and accept is not None and not accept(manifest):
                    manifest = None
            else:
                manifest = tier.download(
                    cache, key, read_only_outputs=read_only_outputs, accept=accept
                )
        except DamagedEntryError as exc:
            out.problem(out.report.damaged, key, str(exc))
            _log.warning("remote entry %s is damaged: %s", key[:12], exc)
            return
        except OSError as exc:
            out.problem(out.report.failed, key, str(exc))
            return
        if manifest is not None:
            out.moved(key, manifest.total_size)

    _run_all(wanted(), pull, jobs)
    return out.report
