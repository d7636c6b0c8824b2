"""Seed 000 (routine loop + session ledger) and seed 001 (register_task / run_pending)."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from styxcache.scheduler import (
    Cache,
    CacheMemory,
    ConfigError,
    FakeClock,
    InlineExecutor,
    Scheduler,
    ThreadExecutor,
)


def test_seed_000_usage_runs_as_written(tmp_path: Path, clock: FakeClock) -> None:
    logger = logging.getLogger("demo")

    def fetch_snapshot() -> dict[str, float]:
        return {"btc": 100_000.0}

    memory_cache = CacheMemory(
        source_func=fetch_snapshot, expire=dt.timedelta(seconds=30), logger=logger
    )
    disk_cache = Cache(
        source_func=fetch_snapshot,
        expire=dt.timedelta(minutes=5),
        logger=logger,
        path=tmp_path / "tmp/snapshot.pkl",
    )
    seen: list[tuple[int, dict[str, float], dict[str, float]]] = []

    def routine(scheduler: Scheduler) -> None:
        seen.append(
            (
                scheduler.cycle,
                memory_cache(fresh=False, tolerance_seconds=0),
                disk_cache(fresh=False, tolerance_seconds=0),
            )
        )

    scheduler = Scheduler(
        routine=routine, wait_ms=5_000, logger=logger, max_cycles=3, clock=clock
    )
    scheduler.run()
    assert [c for c, _, _ in seen] == [0, 1, 2]
    assert scheduler.cycle == 3
    assert (tmp_path / "tmp/snapshot.pkl").exists()
    # Cycles are wait_ms apart on the clock.
    assert clock.now() - dt.datetime(
        2024, 1, 1, tzinfo=dt.timezone.utc
    ) == dt.timedelta(seconds=10)
    records = scheduler.get_records_df()
    assert len(records) == 1
    assert records[0]["cycles"] == 3
    assert records[0]["termination reason"] == "max_cycles=3 reached"


def test_until_ms_stops_the_loop(clock: FakeClock) -> None:
    calls: list[int] = []
    stop_at = int((clock.time() + 12) * 1000)
    scheduler = Scheduler(
        routine=lambda s: calls.append(s.cycle),
        wait_ms=5_000,
        until_ms=stop_at,
        clock=clock,
    )
    scheduler.run()
    assert calls == [0, 1, 2]
    assert scheduler.records[-1]["termination reason"] == "until_ms reached"


def test_sess_stats_and_records_list_are_used(clock: FakeClock) -> None:
    records: list[dict[str, object]] = [{"earlier": "session"}]
    scheduler = Scheduler(
        routine=lambda s: None,
        wait_ms=1_000,
        max_cycles=2,
        sess_stats=lambda s: {"custom": s.cycle * 10},
        records=records,
        clock=clock,
    )
    scheduler.run()
    assert records[0] == {"earlier": "session"}
    assert records[1]["custom"] == 20


def test_default_exception_handler_records_and_reraises(clock: FakeClock) -> None:
    def routine(scheduler: Scheduler) -> None:
        if scheduler.cycle == 1:
            raise ValueError("bad cycle")

    scheduler = Scheduler(routine=routine, wait_ms=1_000, max_cycles=5, clock=clock)
    with pytest.raises(ValueError, match="bad cycle"):
        scheduler.run()
    assert "ValueError: bad cycle" in scheduler.records[-1]["termination reason"]


def test_custom_exception_handler_keeps_the_loop_going(clock: FakeClock) -> None:
    errors: list[tuple[str, str]] = []

    def routine(scheduler: Scheduler) -> None:
        raise RuntimeError(f"cycle {scheduler.cycle}")

    scheduler = Scheduler(
        routine=routine,
        wait_ms=1_000,
        max_cycles=3,
        clock=clock,
        exception_handler=lambda exc, where, s: errors.append((where, str(exc))),
    )
    scheduler.run()
    assert errors == [
        ("routine", "cycle 0"),
        ("routine", "cycle 1"),
        ("routine", "cycle 2"),
    ]


def test_slow_routine_does_not_drift(clock: FakeClock) -> None:
    starts: list[float] = []

    def routine(scheduler: Scheduler) -> None:
        starts.append(clock.monotonic())
        clock.advance(2)  # the routine itself takes 2 s

    Scheduler(routine=routine, wait_ms=5_000, max_cycles=4, clock=clock).run()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [5.0, 5.0, 5.0]


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="routine \\(callable\\) or an object"):
        Scheduler(routine=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_ms"):
        Scheduler(wait_ms=-1)
    with pytest.raises(ValueError, match="max_cycles"):
        Scheduler(max_cycles=-1)


def test_seed_001_register_and_run_pending(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    executed: list[str] = []
    scheduler.register_task("minute_task", "* * * * *", lambda: executed.append("x"))
    assert scheduler.run_pending() == 0  # registered now: nothing due yet
    clock.advance(60)
    assert scheduler.run_pending() == 1
    assert executed == ["x"]
    assert scheduler.run_pending() == 0  # the same fire never runs twice


def test_invalid_cron_raises_at_registration(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    with pytest.raises(ConfigError, match=r"schedule 'bad', field 'cron'"):
        scheduler.register_task("bad", "61 * * * *", lambda: None)
    with pytest.raises(ConfigError, match=r"field 'overlap'"):
        scheduler.register_task("bad2", 60, lambda: None, overlap="sometimes")
    with pytest.raises(ConfigError, match="unknown key"):
        scheduler.register_task("bad3", 60, lambda: None, colour="blue")
    assert scheduler.jobs == {}


def test_duplicate_registration_needs_replace(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task("a", 60, lambda: None)
    with pytest.raises(ConfigError, match="already registered"):
        scheduler.register_task("a", 30, lambda: None)
    scheduler.register_task("a", 30, lambda: None, replace=True)
    assert scheduler.jobs["a"].trigger.describe() == "every 30s"


def test_callback_exception_is_logged_and_recorded(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = make_scheduler()

    def explode() -> None:
        raise KeyError("missing subject")

    ran: list[int] = []
    scheduler.register_task("explodes", 60, explode)
    scheduler.register_task("fine", 60, lambda: ran.append(1))
    clock.advance(60)
    with caplog.at_level(logging.ERROR):
        assert scheduler.run_pending() == 2  # the exception does not propagate
    assert ran == [1]
    (row,) = scheduler.ledger.history(entry="explodes")
    assert row.state == "failed"
    assert "KeyError" in row.error and "missing subject" in row.error
    assert "missing subject" in caplog.text


def test_timedelta_interval_and_pass_context(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    got: list[object] = []
    scheduler.register_task(
        "ctx", dt.timedelta(minutes=1), got.append, pass_context=True
    )
    clock.advance(60)
    scheduler.run_pending()
    (ctx,) = got
    assert ctx.schedule == "ctx"  # type: ignore[attr-defined]
    assert ctx.nominal_time == dt.datetime(2024, 1, 1, 0, 1, tzinfo=dt.timezone.utc)  # type: ignore[attr-defined]


def test_run_pending_is_thread_safe_during_registration(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Several threads register and run at once; every fire runs exactly once."""
    scheduler = Scheduler(
        clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "s"
    )
    counts: dict[str, int] = {}
    lock = threading.Lock()
    in_callback = threading.Event()

    def make_callback(name: str) -> Callable[[], None]:
        def callback() -> None:
            in_callback.set()
            with lock:
                counts[name] = counts.get(name, 0) + 1

        return callback

    for i in range(20):
        scheduler.register_task(f"t{i}", 60, make_callback(f"t{i}"))
    clock.advance(60)
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            barrier.wait()
            scheduler.run_pending()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    def registrar() -> None:
        try:
            barrier.wait()
            for i in range(20, 60):
                scheduler.register_task(f"t{i}", 60, make_callback(f"t{i}"))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(4)]
    threads.append(threading.Thread(target=registrar))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # The 20 entries registered before the fire ran exactly once each.
    assert {k: v for k, v in counts.items() if int(k[1:]) < 20} == {
        f"t{i}": 1 for i in range(20)
    }
    assert len(scheduler.jobs) == 60
    clock.advance(60)
    scheduler.run_pending()
    assert all(counts[f"t{i}"] == 2 for i in range(20))
    assert all(counts[f"t{i}"] == 1 for i in range(20, 60))
    scheduler.close()


def test_callback_can_register_tasks_without_deadlock(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task(
        "parent", 60, lambda: scheduler.register_task("child", 60, lambda: None)
    )
    clock.advance(60)
    scheduler.run_pending()
    assert "child" in scheduler.jobs


def test_thread_executor_runs_callbacks_off_the_caller(
    tmp_path: Path, clock: FakeClock
) -> None:
    scheduler = Scheduler(
        clock=clock, executor=ThreadExecutor(2), state_dir=tmp_path / "s"
    )
    names: list[str] = []
    scheduler.register_task(
        "t", 60, lambda: names.append(threading.current_thread().name)
    )
    clock.advance(60)
    scheduler.run_pending()
    assert scheduler.drain(timeout=30)
    assert names and names[0].startswith("styxcache-run-")
    assert scheduler.ledger.history(entry="t")[0].state == "ok"
    scheduler.close()
