"""Dispatch: claim due fires, start them, fan out, run by hand.

Every wake goes through the same steps: sync new jobs with the run store,
adopt runs of dead schedulers (stores with leases), let the registry plan
what is due, claim it in the store (a key already there is somebody else's),
then hand the fires to their executors outside the lock, each at its due
instant. Finished runs come back to the `Settler` (settle.py), which frees
overlap slots, retries lost runs and hands released queued fires back here.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from styxcache.scheduler.bus import RunEvent
from styxcache.scheduler.clock import Clock, utc_from_timestamp
from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.planner import Fire, fanout_items
from styxcache.scheduler.refs import resolve_callable
from styxcache.scheduler.routing import ExecutorRoutes
from styxcache.scheduler.runs import (
    RunContext,
    RunOutcome,
    RunRequest,
    execute_run,
)
from styxcache.scheduler.runstore import RunRecord, RunStore, run_key
from styxcache.scheduler.settle import SHUTDOWN_SKIP, Settler
from styxcache.scheduler.stores import StoreUnavailableError

__all__ = ["Dispatch"]


class Dispatch:
    """Claims, starts and settles runs for one scheduler (thread-safe)."""

    def __init__(
        self, store: RunStore, routes: ExecutorRoutes, settler: Settler
    ) -> None:
        """Wire the dispatcher to the scheduler's services.

        Args:
            store: The run store.
            routes: Entry to executor.
            settler: Settles what this starts; shares its registry, bus,
                lock and stop flag.
        """
        self.store = store
        self.routes = routes
        self.settler = settler
        self.registry = settler.registry
        self.bus = settler.bus
        self.clock: Clock = settler.clock
        self.logger = settler.registry.logger
        self.stopping = settler.stopping
        self.max_wait = settler.max_wait
        self.lock = settler.lock
        # Fires started by the current thread's run_pending() (it waits for them).
        self._tls = threading.local()
        self._nominal_dt: tuple[float, dt.datetime] = (float("nan"), dt.datetime.min)

    # ------------------------------------------------------------- entry points

    def run_pending(self, lookahead: float, *, wait: bool) -> int:
        """Dispatch what is due; with `wait`, until it has run (see Scheduler)."""
        batch: list[Fire] = []
        started = self._tracked(batch if wait else None, self._dispatch_due, lookahead)
        if wait and batch:
            self.settler.wait_settled(batch, self._start)
        return started

    def run_now(
        self, entry: ScheduleEntry, items: Sequence[Mapping[str, Any]] | None
    ) -> list[RunRecord]:
        """Run an entry outside its timetable and wait (see `Scheduler.trigger`)."""
        now = self.clock.time()
        name = entry.name
        fires: list[Fire] = []
        if items is None:
            expand = entry.expand_from is not None
            record = _manual_record(name, now, "*" if expand else "")
            fires.append(Fire(record=record, entry=entry, expand=expand))
        else:
            for key, item in self._items(entry, list(items)):
                record = _manual_record(name, now, key)
                fires.append(Fire(record=record, entry=entry, item=item))
        claimed = self.store.claim([f.record for f in fires])
        mine = [f for f, ok in zip(fires, claimed, strict=True) if ok]
        with self.lock:
            job = self.registry.jobs.get(name)
            if job is not None:
                job.running += len(mine)
        batch: list[Fire] = []
        self._tracked(batch, self._start_each, mine)
        self.settler.wait_settled(batch, self._start)
        return [f.record for f in batch]

    def _tracked(
        self, batch: list[Fire] | None, fn: Callable[..., int], *args: Any
    ) -> int:
        """Call `fn` with this thread's started fires collected in `batch`."""
        outer = getattr(self._tls, "batch", None)
        self._tls.batch = batch
        try:
            return fn(*args)
        finally:
            self._tls.batch = outer

    def _start_each(self, fires: list[Fire]) -> int:
        return sum(self._start(fire, persisted=True) for fire in fires)

    def drain(self, timeout: float | None) -> bool:
        """Wait (real time) until no run is in flight (see `Scheduler.drain`)."""
        return self.settler.drain(timeout, self._start)

    # ---------------------------------------------------------------- claiming

    def _dispatch_due(self, lookahead: float) -> int:
        """Claim what is due by now + `lookahead` and hand it to executors."""
        # Completions free overlap slots first; their bookkeeping waits until
        # the due fires are on their way.
        started = self.settler.drain_completions(self._start, report=False)
        if self.stopping.is_set():
            self.settler.report()
            return started
        to_start = self._claim_due(lookahead)
        ordered = sorted(to_start, key=lambda f: f.record.started or 0.0)
        index = 0
        while index < len(ordered):
            due = ordered[index].record.started or 0.0
            while (remaining := due - self.clock.time()) > 0:
                if self.stopping.is_set():
                    self._abandon(ordered[index:])
                    return started
                self.clock.wait(remaining)
            # Everything due by now goes out together (a herd in one batch).
            now = self.clock.time()
            end = index + 1
            while end < len(ordered) and (ordered[end].record.started or 0.0) <= now:
                end += 1
            started += self._start_many(ordered[index:end])
            index = end
        return started + self.settler.drain_completions(self._start)

    def _claim_due(self, lookahead: float) -> list[Fire]:
        """Plan and claim the due fires; return those to start now."""
        to_start: list[Fire] = []
        registry = self.registry
        with self.lock:
            now = self.clock.time()
            try:
                registry.sync(self.store, now)
                to_start.extend(self._adopt(now))
                horizon = now + max(0.0, lookahead)
                records, fires, watermarks = registry.collect(
                    now, horizon, self._paused(horizon)
                )
                claimed = self.store.claim(records, watermarks) if records else []
            except StoreUnavailableError:
                records, fires, claimed = [], [], []
                retry_at = self.clock.monotonic() + min(1.0, self.max_wait)
                registry.store_lost(retry_at)
            won = {r.key for r, ok in zip(records, claimed, strict=True) if ok}
            for fire in fires:
                if fire.record.key not in won:
                    continue  # another scheduler sharing the ledger owns it
                job = registry.jobs[fire.entry.name]
                if fire.action == "queue":
                    job.queued.append(fire)
                else:
                    job.running += 1
                    to_start.append(fire)
        return to_start

    def _paused(self, horizon: float) -> Mapping[str, float]:
        if not self.registry.due_soon(horizon):
            return {}
        # Operators pause through the shared store; read it once per wake.
        reader = getattr(self.store, "paused_entries", None)
        return reader() if reader is not None else {}

    def _adopt(self, now: float) -> list[Fire]:
        """Take over runs of schedulers that died (stores with leases only)."""
        adopt = getattr(self.store, "adopt_orphans", None)
        if adopt is None or self.stopping.is_set():
            return []
        jobs = self.registry.jobs
        retries = {n: j.entry.retries for n, j in jobs.items() if j.synced}
        fires: list[Fire] = []
        for record, attempt in adopt(now, retries):
            job = jobs[record.entry]
            fire = Fire(
                record=record,
                entry=job.entry,
                expand=record.item == "*",
                attempt=attempt,
            )
            if record.item not in ("", "*") and job.entry.expand_from is not None:
                fire.item = self._item_for(job.entry, record.item)
            job.running += 1
            fires.append(fire)
        return fires

    def _item_for(self, entry: ScheduleEntry, key: str) -> dict[str, Any]:
        """Find a fan-out item by key again (its dict is not stored)."""
        try:
            items = resolve_callable(entry.expand_from)()  # type: ignore[arg-type]
            found = dict(self._items(entry, items)).get(key)
        except Exception as exc:
            self.logger.warning("%s: expand_from failed: %s", entry.name, exc)
            found = None
        if found is None:
            self.logger.warning(
                "%s: item %s is no longer listed by expand_from; retried without it",
                entry.name,
                key,
            )
        return found or {}

    def _items(
        self, entry: ScheduleEntry, items: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        result, dropped = fanout_items(entry, items)
        for key in dropped:
            self.logger.info("%s: dropping duplicate fan-out item %s", entry.name, key)
        return result

    def _abandon(self, fires: list[Fire]) -> None:
        """Record claimed fires that shutdown overtook before their due time."""
        now = self.clock.time()
        with self.lock:
            for fire in fires:
                record = fire.record
                record.state, record.ended = "skipped", now
                record.reason = SHUTDOWN_SKIP
                self.settler.finish_slot(fire.entry.name, start_queued=False)
        self.bus.publish([RunEvent("abandoned", f.record) for f in fires])

    # ---------------------------------------------------------------- starting

    def _start_many(self, fires: list[Fire]) -> int:
        """Start claimed fires; batch-capable executors get them in one call."""
        if len(fires) == 1:
            return self._start(fires[0], persisted=True)
        started = 0
        batches: dict[int, tuple[Any, list[tuple[Any, Any, Any]], list[Fire]]] = {}
        tracked = getattr(self._tls, "batch", None)
        for fire in fires:
            executor = None if fire.expand else self.routes.for_entry(fire.entry)
            if executor is None or not hasattr(executor, "submit_many"):
                started += self._start(fire, persisted=True)
                continue
            if tracked is not None:
                tracked.append(fire)
            request, on_done = self._prepare(fire)
            _, calls, owners = batches.setdefault(id(executor), (executor, [], []))
            calls.append((execute_run, request, on_done))
            owners.append(fire)
            started += 1
        for executor, calls, owners in batches.values():
            try:
                futures = executor.submit_many(calls)
            except Exception as exc:
                for _fn, _request, on_done in calls:
                    on_done(_failed(exc))
                continue
            for fire, future in zip(owners, futures, strict=True):
                if fire.future is None:
                    fire.future = future
        return started

    def _start(self, fire: Fire, *, persisted: bool = False) -> int:
        """Start one claimed fire (outside the lock); return runs started."""
        batch = getattr(self._tls, "batch", None)
        if batch is not None:
            batch.append(fire)
        record = fire.record
        if not persisted:
            now = self.clock.time()
            record.state = "running"
            record.started = now
            record.lateness = now - (
                record.due if record.due is not None else record.nominal
            )
            if not fire.expand:
                self.store.update([record])
        now = record.started if record.started is not None else self.clock.time()
        if fire.expand:
            try:
                return self._expand(fire, now)
            finally:
                fire.settled = True
        request, on_done = self._prepare(fire)
        try:
            executor = self.routes.for_entry(fire.entry)
            fire.future = executor.submit(execute_run, request, on_done=on_done)
        except Exception as exc:
            on_done(_failed(exc))
        return 1

    def _prepare(
        self, fire: Fire
    ) -> tuple[RunRequest, Callable[[cf.Future[RunOutcome]], None]]:
        """Build a fire's request and mark it in flight (batch-tracked too)."""
        record = fire.record
        cached = self._nominal_dt
        if cached[0] != record.nominal:
            # A herd shares one nominal instant: convert it once.
            cached = (record.nominal, utc_from_timestamp(record.nominal))
            self._nominal_dt = cached
        context = RunContext.quick(
            fire.entry.name,
            record.key,
            cached[1],
            fire.item,
            record.item,
            fire.entry.cache.value,
            fire.attempt,
        )
        request = RunRequest(
            fire.entry.target,  # type: ignore[arg-type]
            context,
            fire.entry.pass_context,
            fire.entry.runner,
            runner_is_default=fire.entry.runner_is_default,
            clock=self.clock,
        )
        self.settler.track(fire)
        return request, functools.partial(self.settler.on_done, fire)

    def _expand(self, fire: Fire, now: float) -> int:
        entry = fire.entry
        parent = fire.record
        try:
            expander = resolve_callable(entry.expand_from)  # type: ignore[arg-type]
            children = self._items(entry, expander())
        except Exception as exc:
            parent.state, parent.ended = "failed", self.clock.time()
            parent.error = f"{type(exc).__name__}: {exc}"
            self.store.update([parent])
            self.logger.error("%s: expand_from failed: %s", parent.key, parent.error)
            with self.lock:
                self.settler.finish_slot(entry.name)
            return 0
        records = [
            RunRecord(
                key=run_key(entry.name, parent.nominal, item_key),
                entry=entry.name,
                nominal=parent.nominal,
                item=item_key,
                state="running",
                due=parent.due,
                started=now,
                lateness=parent.lateness,
            )
            for item_key, _item in children
        ]
        try:
            claimed = self.store.claim(records) if records else []
        except StoreUnavailableError as exc:
            # Nothing was claimed; the fire is recorded when the store is back.
            parent.state, parent.ended = "interrupted", self.clock.time()
            parent.reason = f"its items could not be claimed: {exc}"
            self.store.update([parent])
            with self.lock:
                self.settler.finish_slot(entry.name)
            return 0
        parent.state, parent.ended = "ok", self.clock.time()
        parent.reason = f"expanded into {len(children)} item(s)"
        self.store.update([parent])
        mine = [
            (rec, item)
            for rec, (_k, item), ok in zip(records, children, claimed, strict=True)
            if ok
        ]
        with self.lock:
            job = self.registry.jobs.get(entry.name)
            if job is not None:
                job.running += len(mine)
            self.settler.finish_slot(entry.name, start_queued=not mine)
        return sum(
            self._start(Fire(record=rec, entry=entry, item=item), persisted=True)
            for rec, item in mine
        )

    # ----------------------------------------------------------------- settling


def _manual_record(name: str, now: float, item: str) -> RunRecord:
    """The row of a run triggered by hand (its nominal time is now)."""
    return RunRecord(
        key=run_key(name, now, item),
        entry=name,
        nominal=now,
        item=item,
        state="running",
        reason="triggered by hand",
        due=now,
        started=now,
        lateness=0.0,
    )


def _failed(exc: BaseException) -> cf.Future[RunOutcome]:
    """A future that failed with `exc` (the executor refused the run)."""
    future: cf.Future[RunOutcome] = cf.Future()
    future.set_exception(exc)
    return future
