"""Executors behind the one protocol, and the clocks' own error paths."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import threading
from pathlib import Path

import pytest

from styxcache.scheduler import (
    FakeClock,
    FuturesExecutor,
    InlineExecutor,
    ProcessExecutor,
    Scheduler,
    ThreadExecutor,
)
from styxcache.scheduler.executors import make_executor


def test_process_executor_runs_importable_targets(
    tmp_path: Path, clock: FakeClock
) -> None:
    scheduler = Scheduler(
        clock=clock, executor=ProcessExecutor(1), state_dir=tmp_path / "s"
    )
    scheduler.register_task("p", 60, "sched_jobs:fake_pipeline")
    scheduler.run_pending()
    clock.advance(60)
    scheduler.run_pending()
    assert scheduler.drain(timeout=120)
    (row,) = scheduler.ledger.history(entry="p")
    assert (row.state, row.hits, row.misses) == ("ok", 1, 2)  # counted in the child
    scheduler.close()


def test_futures_executor_wraps_any_executor(tmp_path: Path, clock: FakeClock) -> None:
    pool = cf.ThreadPoolExecutor(2)
    scheduler = Scheduler(
        clock=clock, executor=FuturesExecutor(pool, "pool"), state_dir=tmp_path / "s"
    )
    scheduler.register_task("t", 60, "sched_jobs:record")
    scheduler.run_pending()
    clock.advance(60)
    scheduler.run_pending()
    assert scheduler.drain(timeout=30)
    assert scheduler.ledger.count_by_state("t") == {"ok": 1}
    scheduler.close()


def test_executor_failure_is_recorded(tmp_path: Path, clock: FakeClock) -> None:
    executor = ThreadExecutor(1)
    executor.shutdown()
    scheduler = Scheduler(clock=clock, executor=executor, state_dir=tmp_path / "s")
    scheduler.register_task("t", 60, lambda: None)
    scheduler.run_pending()
    clock.advance(60)
    scheduler.run_pending()
    (row,) = scheduler.ledger.history(entry="t")
    assert row.state == "failed" and "executor is shut down" in row.error
    scheduler.close()


def test_thread_executor_cancels_pending_on_shutdown() -> None:
    pool = ThreadExecutor(1)
    started, gate = threading.Event(), threading.Event()

    def block(_: object) -> bool:
        started.set()
        return gate.wait(30)

    first = pool.submit(block, None)
    assert started.wait(30)
    second = pool.submit(abs, -1)
    pool.shutdown(wait=False, cancel_pending=True)
    gate.set()
    assert first.result(timeout=30) is True
    assert second.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(abs, 1)


def test_inline_executor_carries_exceptions() -> None:
    def boom(_: object) -> None:
        raise ValueError("x")

    future = InlineExecutor().submit(boom, None)
    assert isinstance(future.exception(), ValueError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ThreadExecutor(0), "max_workers"),
        (lambda: make_executor("gpu"), "unknown executor kind"),
        (lambda: FakeClock(dt.datetime(2024, 1, 1)), "timezone-aware"),
        (lambda: FakeClock().advance(-1), "non-negative"),
        (lambda: FakeClock().set(dt.datetime(2024, 1, 1)), "timezone-aware"),
        (lambda: Scheduler(max_sleep_seconds=0), "max_sleep_seconds"),
    ],
)
def test_bad_arguments(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_make_executor_kinds() -> None:
    assert make_executor("inline").name == "inline"
    threads = make_executor("threads", 3)
    assert threads.name == "threads"
    threads.shutdown()


def test_fake_clock_wait_wake_and_jump() -> None:
    clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    mono = clock.monotonic()
    assert clock.wait(5) is False
    assert clock.monotonic() - mono == 5
    clock.wake()
    assert clock.wait(100) is True  # woken: time did not move
    assert clock.monotonic() - mono == 5
    clock.jump(-3600)
    assert clock.monotonic() - mono == 5
    assert clock.now() == dt.datetime(2023, 12, 31, 23, 0, 5, tzinfo=dt.timezone.utc)
