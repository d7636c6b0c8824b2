"""Rule 6 (fan-out), rule 9 (jitter) and the cache mode / event counting of runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sched_jobs

from styxcache.scheduler import FakeClock, Scheduler
from styxcache.scheduler.planner import item_key, jitter

MINUTE = 60.0


@pytest.fixture(autouse=True)
def _reset_jobs() -> None:
    sched_jobs.CALLS.clear()
    sched_jobs.ITEMS[:] = [{"subject": "s1"}, {"subject": "s2"}]


def fire_once(scheduler: Scheduler, clock: FakeClock) -> None:
    scheduler.run_pending()
    clock.advance(MINUTE)
    scheduler.run_pending()


def test_fanout_one_run_per_item_with_stable_keys(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    sched_jobs.ITEMS[:] = [
        {"subject": "s1"},
        {"subject": "s2"},
        {"subject": "s1"},  # duplicate: dropped
        {"key": "sub-3", "subject": "s3", "extra": [1, 2]},
    ]
    scheduler.register_task(
        "fan",
        MINUTE,
        "sched_jobs:record",
        expand_from="sched_jobs:list_subjects",
        pass_context=True,
    )
    fire_once(scheduler, clock)
    subjects = sorted(ctx["subject"] for ctx in sched_jobs.CALLS)
    assert subjects == ["s1", "s2", "s3"]
    keys = sorted(ctx.item_key for ctx in sched_jobs.CALLS)
    assert keys == sorted(['{"subject":"s1"}', '{"subject":"s2"}', "sub-3"])
    rows = {r.item: r for r in scheduler.ledger.history(entry="fan")}
    assert rows["*"].state == "ok" and "3 item(s)" in rows["*"].reason
    assert all(rows[k].state == "ok" for k in keys)


def test_item_key_is_canonical_and_bounded() -> None:
    assert item_key({"b": 1, "a": 2}) == item_key({"a": 2, "b": 1})
    long = item_key({"subject": "x" * 500})
    assert long.startswith("sha256:") and len(long) < 80


def test_expander_error_is_recorded_as_failed(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task(
        "fan", MINUTE, "sched_jobs:record", expand_from="sched_jobs:broken_expander"
    )
    fire_once(scheduler, clock)
    (row,) = scheduler.ledger.history(entry="fan")
    assert row.state == "failed" and row.item == "*"
    assert "OSError: subject database unreachable" in row.error
    assert sched_jobs.CALLS == []
    # The entry keeps firing afterwards.
    sched_jobs.ITEMS[:] = []
    clock.advance(MINUTE)
    scheduler.run_pending()
    assert scheduler.ledger.count_by_state("fan")["failed"] == 2


def test_expander_must_return_list_of_dicts(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task(
        "fan", MINUTE, "sched_jobs:record", expand_from="sched_jobs:not_a_list"
    )
    fire_once(scheduler, clock)
    (row,) = scheduler.ledger.history(entry="fan")
    assert row.state == "failed" and "list of dicts" in row.error


def test_max_fanout_is_enforced(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    sched_jobs.ITEMS[:] = [{"subject": f"s{i}"} for i in range(5)]
    scheduler.register_task(
        "fan",
        MINUTE,
        "sched_jobs:record",
        expand_from="sched_jobs:list_subjects",
        max_fanout=4,
    )
    fire_once(scheduler, clock)
    (row,) = scheduler.ledger.history(entry="fan")
    assert row.state == "failed"
    assert "returned 5 items; max_fanout is 4" in row.error
    assert sched_jobs.CALLS == []


def test_fanout_items_run_once_across_schedulers(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    a = make_scheduler()
    b = make_scheduler()
    for s in (a, b):
        s.register_task(
            "fan", MINUTE, "sched_jobs:record", expand_from="sched_jobs:list_subjects"
        )
        s.run_pending()
    clock.advance(MINUTE)
    a.run_pending()
    b.run_pending()
    assert len(sched_jobs.CALLS) == 2


@pytest.mark.parametrize("mode", ["normal", "refresh", "bypass"])
def test_cache_mode_is_in_force_inside_the_run(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock, mode: str
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task(
        "m", MINUTE, "sched_jobs:record_mode", cache=mode, pass_context=True
    )
    fire_once(scheduler, clock)
    ((_, seen),) = sched_jobs.CALLS
    assert seen == mode


def test_invalid_cache_mode_names_the_field(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    with pytest.raises(ValueError, match=r"schedule 'm', field 'cache'"):
        make_scheduler().register_task(
            "m", MINUTE, "sched_jobs:record", cache="sometimes"
        )


def test_cache_hits_and_misses_are_recorded(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    scheduler.register_task("p", MINUTE, "sched_jobs:fake_pipeline", pass_context=True)
    fire_once(scheduler, clock)
    (row,) = scheduler.ledger.history(entry="p")
    assert (row.hits, row.misses) == (1, 2)


def test_jitter_is_deterministic_and_below_the_period(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    entry = scheduler.register_task("j", 10.0, lambda: None, jitter_seconds=3600)
    jitters = [jitter(entry, 1_700_000_000 + 10 * k) for k in range(2000)]
    assert all(0 <= j < 10.0 for j in jitters)
    assert len(set(jitters)) > 1000  # spread, not constant
    again = [jitter(entry, 1_700_000_000 + 10 * k) for k in range(2000)]
    assert again == jitters
    cron = scheduler.register_task("c", "0 * * * *", lambda: None, jitter_seconds=30)
    assert all(0 <= jitter(cron, 3600.0 * k) < 30 for k in range(500))


def test_jittered_fire_waits_for_its_due_time(
    make_scheduler: Callable[..., Scheduler], clock: FakeClock
) -> None:
    scheduler = make_scheduler()
    ran: list[float] = []
    entry = scheduler.register_task(
        "j", 3600.0, lambda: ran.append(clock.time()), jitter_seconds=600
    )
    scheduler.run_pending()
    nominal = entry.trigger.next_after(clock.time())
    assert nominal is not None
    due = nominal + jitter(entry, nominal)
    clock.set(FakeClock(due - 0.5).now())
    scheduler.run_pending()
    assert ran == []
    clock.advance(1.0)
    scheduler.run_pending()
    assert len(ran) == 1
    (row,) = scheduler.ledger.history(entry="j")
    assert row.due == pytest.approx(due) and row.nominal == nominal


def _unused(_: Any) -> None:  # keeps sched_jobs import used by linters
    pass
