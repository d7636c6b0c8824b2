"""Settling runs: completions, retries of lost runs, overlap slots, reports.

Executors call back from their own threads; each finished fire goes through
a queue and is settled by whichever thread drains it next (the loop, or a
`run_pending()` caller waiting for its runs). Settling frees the entry's
run slot and releases its next queued fire; lost runs start again while
retries remain; every settled run is announced on the bus.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
import time
from collections.abc import Callable

from styxcache.scheduler.bus import RunBus, RunEvent
from styxcache.scheduler.clock import SystemClock
from styxcache.scheduler.planner import Fire
from styxcache.scheduler.registry import Registry
from styxcache.scheduler.runs import RunLostError, RunOutcome
from styxcache.scheduler.runstore import RunRecord

__all__ = ["SHUTDOWN_SKIP", "Settler"]

SHUTDOWN_SKIP = "scheduler shut down before it could start"

Starter = Callable[[Fire], int]


class Settler:
    """Collects finished fires and settles them (thread-safe)."""

    def __init__(
        self,
        registry: Registry,
        bus: RunBus,
        *,
        stopping: threading.Event,
        max_wait: float,
    ) -> None:
        """Create the settler.

        Args:
            registry: The jobs (its lock guards this object's state too).
            bus: Where settled runs are announced.
            stopping: Set once shutdown has begun.
            max_wait: Longest wait for a completion before looking again.
        """
        self.registry = registry
        self.bus = bus
        self.clock = registry.clock
        self.lock = registry.lock
        self.stopping = stopping
        self.max_wait = max_wait
        self.inflight: dict[str, Fire] = {}
        self.loop_ident: int | None = None
        """The loop thread, if running (completions elsewhere wake it)."""
        self._settle = threading.Condition()
        self._waiting = 0  # threads in wait_settled (completions notify them)
        self._completions: queue.SimpleQueue[Fire] = queue.SimpleQueue()
        self._ready: list[Fire] = []
        self._unreported: list[tuple[Fire, RunOutcome]] = []

    def track(self, fire: Fire) -> None:
        """Mark a fire in flight (its executor will call `on_done`)."""
        with self.lock:
            self.inflight[fire.record.key] = fire

    def on_done(self, fire: Fire, future: cf.Future[RunOutcome]) -> None:
        """Queue a finished fire for settling (called from executor threads)."""
        # Set here too: an inline executor finishes before submit() returns.
        fire.future = future
        self._completions.put(fire)
        # Read after the put: a waiter that registers later sees the item.
        if self._waiting:
            with self._settle:
                self._settle.notify_all()
        # The loop thread drains its own completions before it next waits;
        # waking it from inside would only cost an empty cycle.
        if self.loop_ident is not None and threading.get_ident() != self.loop_ident:
            self.clock.wake()

    def finish_slot(self, name: str, *, start_queued: bool = True) -> None:
        """Free a run slot of `name` (lock held); start its queued fire."""
        job = self.registry.jobs.get(name)
        if job is None:
            return
        job.running = max(0, job.running - 1)
        if not start_queued or job.running > 0 or not job.queued:
            return
        if self.stopping.is_set():
            return
        fire = job.queued.popleft()
        job.running += 1
        self._ready.append(fire)

    def drain_completions(self, start: Starter, *, report: bool = True) -> int:
        """Settle finished runs and start queued fires they released.

        With `report=False` the ledger writes, log lines and hooks of the
        finished runs wait for the next `report()`, so that a due fire is
        dispatched before that slower bookkeeping.
        """
        started = 0
        while True:
            done: list[Fire] = []
            while True:
                try:
                    done.append(self._completions.get_nowait())
                except queue.Empty:
                    break
            if done:
                now = self.clock.time()
                for fire in done:
                    outcome = self._complete(fire, now)
                    if outcome is not None:
                        self._unreported.append((fire, outcome))
            with self.lock:
                # Fires released from overlap queues while the lock was held.
                ready, self._ready = self._ready, []
            for fire in ready:
                started += start(fire)
            if not done and not ready:
                if report:
                    self.report()
                return started

    def _complete(self, fire: Fire, now: float) -> RunOutcome | None:
        """Settle a finished future; None when a lost run was restarted."""
        record = fire.record
        record.ended = now
        assert fire.future is not None
        try:
            outcome = fire.future.result(timeout=0)
        except RunLostError as exc:
            return self._lost(fire, exc)
        except BaseException as exc:  # the executor itself failed
            outcome = RunOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        record.state = "ok" if outcome.ok else "failed"
        record.error = outcome.error
        record.hits, record.misses = outcome.hits, outcome.misses
        if (
            outcome.started is not None
            and outcome.ended is not None
            and (outcome.on_clock or isinstance(self.clock, SystemClock))
        ):
            # When the target really ran, not when the fire was claimed.
            record.started, record.ended = outcome.started, outcome.ended
            due = record.due if record.due is not None else record.nominal
            record.lateness = outcome.started - due
        self._release(fire)
        return outcome

    def _release(self, fire: Fire) -> None:
        with self.lock:
            self.inflight.pop(fire.record.key, None)
            self.finish_slot(fire.entry.name)
        fire.settled = True
        if self._waiting:
            with self._settle:
                self._settle.notify_all()

    def _lost(self, fire: Fire, lost: RunLostError) -> RunOutcome | None:
        """Record a run the executor lost; restart it while retries remain."""
        outcome = RunOutcome(ok=False, error=f"RunLostError: {lost}")
        record = fire.record
        retries = fire.entry.retries
        record.state, record.error = "interrupted", outcome.error
        record.reason = f"attempt {fire.attempt} lost: {lost}"
        if fire.attempt > retries or self.stopping.is_set():
            if retries:
                record.reason += f" (no retries left of {retries})"
            self._release(fire)
            return outcome
        record.reason += f"; retry {fire.attempt} of {retries} follows"
        # Published now: the restart below overwrites the row with "running".
        self.bus.publish([RunEvent("retrying", dataclasses.replace(record), outcome)])
        fire.attempt += 1
        record.error, record.ended = "", None
        with self.lock:
            self.inflight.pop(record.key, None)
            # The slot stays taken: the same run starts again.
            self._ready.append(fire)
        return None

    def report(self) -> None:
        """Announce the runs settled since the last report on the bus."""
        with self.lock:
            batch, self._unreported = self._unreported, []
        self.bus.publish([RunEvent("settled", f.record, o) for f, o in batch])

    def wait_settled(self, fires: list[Fire], start: Starter) -> None:
        """Record completions until every fire in `fires` has ended."""
        while True:
            self.drain_completions(start)
            if all(f.settled for f in fires):
                return
            with self._settle:
                self._waiting += 1
                try:
                    if self._completions.empty() and not all(f.settled for f in fires):
                        # Woken by each completion; the timeout only guards
                        # against a completion drained by another thread.
                        self._settle.wait(self.max_wait)
                finally:
                    self._waiting -= 1

    def drain(self, timeout: float | None, start: Starter) -> bool:
        """Wait (real time) until no run is in flight (see `Scheduler.drain`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.drain_completions(start)
            with self.lock:
                futures = [
                    f.future for f in self.inflight.values() if f.future is not None
                ]
                ready = bool(self._ready)
            if not futures and not ready and self._completions.empty():
                return True
            if not futures:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            cf.wait(futures, timeout=remaining, return_when=cf.FIRST_COMPLETED)

    def give_up(self, timeout: float) -> bool:
        """Record runs still going as interrupted, queued ones as skipped.

        Returns:
            True if there was nothing to give up on.
        """
        now = self.clock.time()
        leftovers: list[RunRecord] = []
        with self.lock:
            for fire in self.inflight.values():
                fire.record.state = "interrupted"
                fire.record.ended = now
                fire.record.reason = (
                    f"still running when shutdown gave up after {timeout:.1f}s"
                )
                leftovers.append(fire.record)
            self.inflight.clear()
            for job in self.registry.jobs.values():
                while job.queued:
                    record = job.queued.popleft().record
                    record.state, record.ended = "skipped", now
                    record.reason = SHUTDOWN_SKIP
                    leftovers.append(record)
        self.bus.publish([RunEvent("abandoned", r) for r in leftovers])
        return not leftovers
