"""The entry registry: registered jobs, the heap of their next fires, reloads.

The registry owns the lock the whole engine shares: the dispatcher takes it
for its own bookkeeping too, so that a reload, a registration from another
thread and a wake never see each other half done.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import threading
from collections.abc import Iterable, Mapping

from styxcache.errors import ConfigError
from styxcache.scheduler.clock import Clock, utc_from_timestamp
from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.planner import Fire, Job, jitter, plan, sync_rows
from styxcache.scheduler.runstore import RunRecord, RunStore
from styxcache.scheduler.triggers import NextFireMemo, load_zone

__all__ = ["Collected", "Registry"]

# A herd due within this window is claimed ahead, at about this cost per fire.
_HERD_WINDOW_S = 1.0
_CLAIM_COST_S = 100e-6

Collected = tuple[list[RunRecord], list[Fire], dict[str, float]]
"""Records to claim, fires among them, and the entries' new watermarks."""


class Registry:
    """Registered jobs by name, and a heap of `(due, seq, name, version)`.

    A heap slot whose version no longer matches its job's is stale (the job
    was replanned or replaced) and is skipped when it surfaces.
    """

    def __init__(self, clock: Clock, logger: logging.Logger) -> None:
        """Create an empty registry.

        Args:
            clock: Time source (when an entry was learned).
            logger: Where late fires are reported.
        """
        self.clock = clock
        self.logger = logger
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        # Insertion-ordered, so fires due together start in registration order.
        self.unsynced: dict[str, None] = {}
        self._recovered = False
        # While the run store is out of reach, re-sync no sooner than this
        # (monotonic seconds), instead of spinning.
        self.store_retry_at = 0.0
        # Entries registered in code share cron answers, as a file's do.
        self.memo = NextFireMemo()

    # ------------------------------------------------------------- entries

    def add(self, entry: ScheduleEntry, *, replace: bool) -> None:
        """Register an entry; see `Scheduler.add_entry`."""
        with self.lock:
            if entry.name in self.jobs and not replace:
                raise ConfigError(
                    "already registered (pass replace=True)",
                    entry=entry.name,
                    field="name",
                )
            self.install(entry)

    def install(self, entry: ScheduleEntry, *, fresh: bool = False) -> None:
        """Add or replace a job (lock held by the caller)."""
        old = self.jobs.get(entry.name)
        if old is None:
            self.jobs[entry.name] = Job(
                entry=entry, learned=self.clock.time(), fresh=fresh
            )
            self.unsynced[entry.name] = None
            return
        trigger_changed = old.entry.trigger.signature != entry.trigger.signature
        # Either direction is written to the ledger: re-enabling must start
        # from "now" even after a restart.
        enabled_changed = entry.enabled != old.entry.enabled
        old.entry = entry
        old.version += 1
        if trigger_changed or enabled_changed or not old.synced:
            old.synced = False
            old.learned = self.clock.time()
            self.unsynced[entry.name] = None
        else:
            self.schedule_next(old)

    def apply(
        self, entries: Iterable[ScheduleEntry], *, initial: bool
    ) -> tuple[int, int, int, int]:
        """Make the registry hold exactly `entries` (a reload's diff).

        Unchanged entries keep their state; a changed one keeps its history;
        removed ones let running work finish; new ones start from now
        (from their watermark on the first load).

        Returns:
            How many were added, changed, removed and kept.
        """
        new = {e.name: e for e in entries}
        with self.lock:
            removed = [name for name in self.jobs if name not in new]
            added = changed = kept = 0
            for name in removed:
                del self.jobs[name]
            for entry in new.values():
                old = self.jobs.get(entry.name)
                if old is None:
                    added += 1
                    self.install(entry, fresh=not initial)
                elif old.entry.fingerprint == entry.fingerprint:
                    kept += 1
                else:
                    changed += 1
                    self.install(entry)
        return added, changed, len(removed), kept

    def entries(self) -> dict[str, ScheduleEntry]:
        """Return the registered entries by name."""
        with self.lock:
            return {name: job.entry for name, job in self.jobs.items()}

    def schedule_next(self, job: Job) -> None:
        """Push the job's next fire (or a lower bound of it) on the heap."""
        job.version += 1
        if not job.entry.enabled:
            return
        bound = getattr(job.entry.trigger, "lower_bound", None)
        low = bound(job.watermark) if bound is not None else None
        if low is not None:
            # Registering thousands of entries must not compute thousands of
            # calendars: the exact fire is computed when the bound comes due.
            job.lazy = True
            self._push(low, job.entry.name, job.version)
            return
        job.lazy = False
        nominal = job.entry.trigger.next_after(job.watermark)
        if nominal is not None:
            self._push(
                nominal + jitter(job.entry, nominal), job.entry.name, job.version
            )

    def _push(self, due: float, name: str, version: int) -> None:
        heapq.heappush(self.heap, (due, next(self._seq), name, version))

    # ---------------------------------------------------------- run store

    def sync(self, store: RunStore, now: float) -> None:
        """Read the watermarks of jobs not yet synced with the run store."""
        if not self.unsynced:
            return
        pending = [self.jobs[n] for n in self.unsynced if n in self.jobs]
        self.unsynced.clear()
        if not pending:
            return
        if not self._recovered:
            self._recovered = True
            # A shared store retries lost runs by lease (see adopt) instead.
            if not hasattr(store, "adopt_orphans"):
                store.recover_orphans(now)
        states = store.sync_entries(
            sync_rows(pending), restart=[j.entry.name for j in pending if j.fresh]
        )
        for job in pending:
            job.watermark = states[job.entry.name].watermark
            job.synced = True
            job.fresh = False
            self.schedule_next(job)

    def store_lost(self, retry_at: float) -> None:
        """Forget planned state until the run store answers again.

        Every job is re-read from the store when it is back, so the fires
        due meanwhile go through the catch-up rules like after a restart.

        Args:
            retry_at: Monotonic instant of the next attempt.
        """
        self.store_retry_at = retry_at
        for name, job in self.jobs.items():
            job.synced = False
            job.version += 1  # its heap slot is stale now
            self.unsynced[name] = None

    # ---------------------------------------------------------------- due

    def collect(
        self, now: float, horizon: float, paused: Mapping[str, float]
    ) -> Collected:
        """Pop the jobs due by `horizon`, plan them and schedule their next."""
        records: list[RunRecord] = []
        fires: list[Fire] = []
        watermarks: dict[str, float] = {}
        while self.heap and self.heap[0][0] <= horizon:
            _, _, name, version = heapq.heappop(self.heap)
            job = self.jobs.get(name)
            if job is None or job.version != version or not job.entry.enabled:
                continue
            if job.lazy and not self._resolve_lazy(job, horizon):
                continue
            result = plan(job, now, horizon, paused_since=paused.get(name))
            if result.late is not None:
                self.logger.warning(
                    "%s: %d fire(s) are late (newest due %s, %.0fs ago); catchup=%s",
                    name,
                    result.late.count,
                    utc_from_timestamp(result.late.newest_due).isoformat(),
                    now - result.late.newest_due,
                    job.entry.catchup,
                )
            records.extend(result.records)
            fires.extend(result.fires)
            job.watermark = result.watermark
            watermarks[name] = job.watermark
            self.schedule_next(job)
        return records, fires, watermarks

    def due_soon(self, horizon: float) -> bool:
        """Whether the heap's top is due by `horizon` (stale slots included)."""
        return bool(self.heap) and self.heap[0][0] <= horizon

    def _resolve_lazy(self, job: Job, horizon: float) -> bool:
        """Replace a popped lower bound by the exact fire; True if it is due."""
        job.lazy = False
        nominal = job.entry.trigger.next_after(job.watermark)
        if nominal is None:
            return False
        due = nominal + jitter(job.entry, nominal)
        if due > horizon:
            self._push(due, job.entry.name, job.version)
            return False
        return True

    def seconds_to_next_due(self, now: float) -> float:
        """Seconds until the next fire (or the next store retry)."""
        with self.lock:
            while self.heap:
                _, _, name, version = self.heap[0]
                job = self.jobs.get(name)
                if job is not None and job.version == version:
                    break
                heapq.heappop(self.heap)  # stale: superseded by a reload
            if self.unsynced:
                return max(0.0, self.store_retry_at - self.clock.monotonic())
            return self.heap[0][0] - now if self.heap else float("inf")

    def claim_lead(self, lead: float, max_sleep: float) -> float:
        """How early to claim: longer when many fires are due at once.

        Planning and claiming cost tens of microseconds per fire, so a herd
        of thousands due in the same second is claimed ahead (up to one
        second) and each fire is then started at its due instant.

        Args:
            lead: The configured lead (`dispatch_lead_seconds`).
            max_sleep: The loop's longest wait.

        Returns:
            The lead to use, in seconds.
        """
        with self.lock:
            if not self.heap:
                return lead
            top = self.heap[0][0]
            if top > self.clock.time() + max_sleep:
                return lead  # the loop wakes again before then anyway
            soon = sum(1 for item in self.heap if item[0] <= top + _HERD_WINDOW_S)
        return min(_HERD_WINDOW_S, max(lead, soon * _CLAIM_COST_S))

    def next_fire_times(self, now: float, n: int) -> dict[str, list[dt.datetime]]:
        """Return the next `n` nominal fire times of every entry (see Scheduler)."""
        result: dict[str, list[dt.datetime]] = {}
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            entry = job.entry
            if not entry.enabled:
                result[entry.name] = []
                continue
            start = max(now, job.watermark) if job.synced else now
            zone = load_zone(getattr(entry.trigger, "timezone", "UTC"))
            fires = itertools.islice(entry.trigger.iter_after(start), n)
            result[entry.name] = [dt.datetime.fromtimestamp(t, zone) for t in fires]
        return result
