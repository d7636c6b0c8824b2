"""Rules 2, 3 and 5: run keys, the ledger, missed runs, restarts and clock jumps."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from styxcache.scheduler import (
    FakeClock,
    InlineExecutor,
    Ledger,
    RunRecord,
    Scheduler,
)
from styxcache.scheduler.ledger import run_key

MINUTE = 60.0


def states(scheduler: Scheduler, entry: str) -> list[tuple[float, str]]:
    rows = scheduler.ledger.history(entry=entry, limit=None)
    return sorted((r.nominal, r.state) for r in rows)


def test_on_time_within_grace(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    ran: list[float] = []
    scheduler.register_task("e", MINUTE, lambda: ran.append(clock.time()))
    scheduler.run_pending()
    clock.advance(MINUTE + 59)  # 59 s late: still on time (grace 60 s)
    assert scheduler.run_pending() == 1
    (row,) = scheduler.ledger.history(entry="e")
    assert row.state == "ok"
    assert row.lateness == pytest.approx(59)
    assert row.key == run_key("e", clock.time() - 59)


@pytest.mark.parametrize(
    ("catchup", "expected_states", "runs"),
    [
        ("latest", ["coalesced"] * 4 + ["ok"], 1),
        ("all", ["ok"] * 5, 5),
        ("none", ["missed"] * 5, 0),
    ],
)
def test_catchup_policies(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    catchup: str,
    expected_states: list[str],
    runs: int,
) -> None:
    scheduler = make_scheduler()
    ran: list[float] = []
    scheduler.register_task(
        "e", MINUTE, lambda: ran.append(1), catchup=catchup, grace_seconds=30
    )
    scheduler.run_pending()
    clock.advance(5 * MINUTE + 40)  # five fires, all beyond the 30 s grace
    scheduler.run_pending()
    assert [s for _, s in states(scheduler, "e")] == expected_states
    assert len(ran) == runs


def test_latest_prefers_on_time_fire_and_coalesces_late(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task("e", MINUTE, lambda: None)
    scheduler.run_pending()
    clock.advance(5 * MINUTE + 10)  # the newest fire is 10 s old: on time
    scheduler.run_pending()
    assert [s for _, s in states(scheduler, "e")] == ["coalesced"] * 4 + ["ok"]
    coalesced = scheduler.ledger.history(entry="e", state="coalesced")
    assert all("coalesced into" in r.reason for r in coalesced)


def test_catchup_all_respects_max_catchup_and_runs_in_order(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    order: list[str] = []
    scheduler.register_task(
        "e",
        MINUTE,
        order.append,
        catchup="all",
        max_catchup=3,
        pass_context=True,
        grace_seconds=30,
    )
    scheduler.run_pending()
    clock.advance(6 * MINUTE + 40)
    scheduler.run_pending()
    got = states(scheduler, "e")
    assert [s for _, s in got] == ["missed", "missed", "missed", "ok", "ok", "ok"]
    nominals = [ctx.nominal_time for ctx in order]  # type: ignore[attr-defined]
    assert nominals == sorted(nominals) and len(nominals) == 3
    missed = scheduler.ledger.history(entry="e", state="missed")
    assert all("max_catchup=3" in r.reason for r in missed)


def test_restart_resumes_from_the_ledger(tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "state"
    ran: list[str] = []

    def make() -> Scheduler:
        s = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=state)
        s.register_task("e", MINUTE, ran.append, catchup="all", pass_context=True)
        return s

    first = make()
    first.run_pending()
    clock.advance(MINUTE)
    first.run_pending()
    first.close()
    assert len(ran) == 1
    # Down for three fires; the restarted scheduler runs them (catchup=all)
    # and never repeats the one that already ran.
    clock.advance(3 * MINUTE + 120)
    second = make()
    second.run_pending()
    keys = [ctx.key for ctx in ran]  # type: ignore[attr-defined]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert [s for _, s in states(second, "e")] == ["ok"] * 6
    second.close()


def test_restart_without_downtime_does_not_rerun(
    tmp_path: Path, clock: FakeClock
) -> None:
    state = tmp_path / "state"
    ran: list[int] = []
    for _ in range(3):
        s = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=state)
        s.register_task("e", MINUTE, lambda: ran.append(1))
        s.run_pending()
        s.close()
    assert ran == []
    clock.advance(MINUTE)
    for _ in range(3):
        s = Scheduler(clock=clock, executor=InlineExecutor(), state_dir=state)
        s.register_task("e", MINUTE, lambda: ran.append(1))
        s.run_pending()
        s.close()
    assert ran == [1]


def test_no_catchup_before_the_entry_existed(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    clock.advance(10 * 86400)
    scheduler = make_scheduler()
    scheduler.register_task("e", "0 * * * *", lambda: None, catchup="all")
    clock.advance(30)
    scheduler.run_pending()
    assert scheduler.ledger.history(entry="e") == []


def test_disabled_entry_does_not_fire_and_resumes_from_enable_time(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    ran: list[int] = []
    scheduler.register_task(
        "e", MINUTE, lambda: ran.append(1), enabled=False, catchup="all"
    )
    scheduler.run_pending()
    clock.advance(10 * MINUTE)
    scheduler.run_pending()
    assert ran == [] and scheduler.next_fire_times(1) == {"e": []}
    scheduler.register_task(
        "e", MINUTE, lambda: ran.append(1), enabled=True, catchup="all", replace=True
    )
    scheduler.run_pending()
    assert ran == []  # nothing from the disabled period is caught up
    clock.advance(MINUTE)
    scheduler.run_pending()
    assert ran == [1]


def test_wall_clock_jump_is_logged_and_caught_up(
    make_scheduler: Callable[..., Scheduler],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[int] = []
    jumped = [False]

    def routine(s: Scheduler) -> None:
        if s.cycle == 1 and not jumped[0]:
            jumped[0] = True
            clock.jump(3600)  # laptop lid closed for an hour

    scheduler = make_scheduler(routine=routine, wait_ms=10_000, max_cycles=3)
    scheduler.register_task("e", 600, lambda: ran.append(1))
    with caplog.at_level(logging.WARNING):
        scheduler.run()
    assert "wall clock jumped by" in caplog.text or "late" in caplog.text
    # Six fires fell in the jump: one ran, the rest were coalesced (not lost).
    counts = scheduler.ledger.count_by_state("e")
    assert counts.get("ok", 0) == 1
    assert counts.get("coalesced", 0) == 5


def test_sleep_is_capped(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler(max_sleep_seconds=30, max_cycles=4)
    scheduler.register_task("daily", "0 3 * * *", lambda: None)
    scheduler.run()
    assert max(clock.waits) <= 30


def test_jump_detected_during_wait(
    make_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    class JumpyClock(FakeClock):
        def wait(self, timeout: float) -> bool:
            self.jump(7200)  # the machine slept through the wait
            return super().wait(timeout)

    clock = JumpyClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    scheduler = make_scheduler(clock=clock, max_cycles=2)
    scheduler.register_task("e", MINUTE, lambda: None)
    with caplog.at_level(logging.WARNING):
        scheduler.run()
    assert "wall clock jumped by +7200.0s" in caplog.text
    assert scheduler.ledger.count_by_state("e")["coalesced"] > 100


def test_backward_jump_never_duplicates(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    ran: list[int] = []
    scheduler.register_task("e", MINUTE, lambda: ran.append(1))
    scheduler.run_pending()
    clock.advance(MINUTE)
    scheduler.run_pending()
    clock.jump(-3 * MINUTE)
    for _ in range(4):
        clock.advance(MINUTE)
        scheduler.run_pending()
    assert len(ran) == 2  # the fire at +1 min ran once; +2 min ran once


def test_long_outage_is_summarised_not_dropped(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task("e", 1.0, lambda: None)
    scheduler.run_pending()
    clock.advance(30_000)
    scheduler.run_pending()
    counts = scheduler.ledger.count_by_state("e")
    assert counts["ok"] == 1
    # One summary row plus the last hour and the grace window, row by row.
    assert counts["coalesced"] == 1 + 3600 + 60 - 1
    summary = [
        r for r in scheduler.ledger.history(entry="e", limit=None) if r.item == "older"
    ]
    assert len(summary) == 1 and "summarised" in summary[0].reason


def test_ledger_shared_in_one_process_claims_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "ledger.sqlite3"
    ran: list[str] = []
    a = Scheduler(clock=clock, executor=InlineExecutor(), ledger=Ledger(path))
    b = Scheduler(clock=clock, executor=InlineExecutor(), ledger=Ledger(path))
    for s, tag in ((a, "a"), (b, "b")):
        s.register_task("e", MINUTE, lambda tag=tag: ran.append(tag))  # type: ignore[misc]
        s.run_pending()
    for _ in range(10):
        clock.advance(MINUTE)
        a.run_pending()
        b.run_pending()
    assert len(ran) == 10
    a.close()
    b.close()


def test_runs_of_a_dead_process_are_marked_interrupted(
    tmp_path: Path, clock: FakeClock
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.owner = f"{socket.gethostname()}:{dead.stdout.strip()}:deadbeef"
    ledger.claim([RunRecord(key="e@1.000000", entry="e", nominal=1.0, state="running")])
    ledger.close()
    scheduler = Scheduler(
        clock=clock, executor=InlineExecutor(), state_dir=tmp_path / "state"
    )
    scheduler.register_task("e", MINUTE, lambda: None)
    scheduler.run_pending()
    row = scheduler.ledger.get("e@1.000000")
    assert row is not None and row.state == "interrupted"
    assert "ended first" in row.reason
    scheduler.close()
