"""Rule 4 (overlap) and rule 10 (isolation) with real worker threads.

Runs block on events the test controls; nothing waits for time to pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from styxcache.scheduler import FakeClock, Scheduler, ThreadExecutor

MINUTE = 60.0


class Gate:
    """A target that blocks until released, counting its starts."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        self.started.release()
        assert self.release.wait(timeout=60), "test never released the gate"


@pytest.fixture
def threaded(clock: FakeClock, tmp_path: Path) -> Iterator[Callable[[], Scheduler]]:
    made: list[Scheduler] = []

    def make() -> Scheduler:
        s = Scheduler(
            clock=clock, executor=ThreadExecutor(4), state_dir=tmp_path / "state"
        )
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def fire_twice(scheduler: Scheduler, clock: FakeClock, gate: Gate) -> None:
    scheduler.run_pending(wait=False)
    clock.advance(MINUTE)
    scheduler.run_pending(wait=False)
    assert gate.started.acquire(timeout=30)
    clock.advance(MINUTE)
    scheduler.run_pending(wait=False)  # the first run is still blocked


def test_forbid_skips_with_reason(
    threaded: Callable[[], Scheduler], clock: FakeClock
) -> None:
    scheduler = threaded()
    gate = Gate()
    scheduler.register_task("slow", MINUTE, gate, overlap="forbid")
    fire_twice(scheduler, clock, gate)
    gate.release.set()
    assert scheduler.drain(timeout=30)
    rows = sorted(scheduler.ledger.history(entry="slow"), key=lambda r: r.nominal)
    assert [r.state for r in rows] == ["ok", "skipped"]
    assert rows[1].reason == "previous run still running"
    assert gate.calls == 1


def test_allow_runs_concurrently(
    threaded: Callable[[], Scheduler], clock: FakeClock
) -> None:
    scheduler = threaded()
    gate = Gate()
    scheduler.register_task("slow", MINUTE, gate, overlap="allow")
    fire_twice(scheduler, clock, gate)
    assert gate.started.acquire(timeout=30)  # second run started while first blocked
    gate.release.set()
    assert scheduler.drain(timeout=30)
    assert [r.state for r in scheduler.ledger.history(entry="slow")] == ["ok", "ok"]


def test_queue_runs_after_the_previous_one(
    threaded: Callable[[], Scheduler], clock: FakeClock
) -> None:
    scheduler = threaded()
    gate = Gate()
    scheduler.register_task("slow", MINUTE, gate, overlap="queue")
    fire_twice(scheduler, clock, gate)
    queued = scheduler.ledger.history(entry="slow", state="planned")
    assert len(queued) == 1  # waiting, recorded as planned
    assert gate.calls == 1
    gate.release.set()
    assert scheduler.drain(timeout=30)
    assert [r.state for r in scheduler.ledger.history(entry="slow")] == ["ok", "ok"]
    assert gate.calls == 2


def test_queue_is_bounded(threaded: Callable[[], Scheduler], clock: FakeClock) -> None:
    scheduler = threaded()
    gate = Gate()
    scheduler.register_task("slow", MINUTE, gate, overlap="queue", max_catchup=2)
    scheduler.run_pending(wait=False)
    clock.advance(MINUTE)
    scheduler.run_pending(wait=False)
    assert gate.started.acquire(timeout=30)
    for _ in range(4):
        clock.advance(MINUTE)
        scheduler.run_pending(wait=False)
    skipped = scheduler.ledger.history(entry="slow", state="skipped")
    assert len(skipped) == 2 and "queue full" in skipped[0].reason
    gate.release.set()
    assert scheduler.drain(timeout=30)
    assert scheduler.ledger.count_by_state("slow") == {"ok": 3, "skipped": 2}


def test_slow_job_never_blocks_others(
    threaded: Callable[[], Scheduler], clock: FakeClock
) -> None:
    scheduler = threaded()
    gate = Gate()
    quick_done = threading.Semaphore(0)
    scheduler.register_task("slow", MINUTE, gate)
    scheduler.register_task("quick", MINUTE, quick_done.release, overlap="allow")

    def boom() -> None:
        raise RuntimeError("always fails")

    scheduler.register_task("failing", MINUTE, boom, overlap="allow")
    scheduler.run_pending(wait=False)
    for _ in range(3):
        clock.advance(MINUTE)
        scheduler.run_pending(wait=False)
    # All three quick runs finish while the slow one is still blocked.
    for _ in range(3):
        assert quick_done.acquire(timeout=30)
    assert gate.calls == 1 and not gate.release.is_set()
    gate.release.set()
    assert scheduler.drain(timeout=30)
    assert scheduler.ledger.count_by_state("failing") == {"failed": 3}
    assert scheduler.ledger.count_by_state("quick") == {"ok": 3}
    assert scheduler.ledger.count_by_state("slow") == {"ok": 1, "skipped": 2}
