"""The cron fast path (own field parser and walk) agrees with croniter's walk."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from styxcache.scheduler import CronTrigger, TriggerError
from styxcache.scheduler.triggers import _walker_template

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
FIXED = [
    "* * * * *",
    "*/15 * * * *",
    "0 2 * * *",
    "30 2 * * *",
    "0 */3 * * 1-5",
    "5 4 1 * sun",
    "0 0 1,15 * *",
    "0 0 5/10 * *",
    "15 10 * jan-mar mon,wed",
    "0 0 * * 7",
    "0 0 * * 0-7",
    "0 12 29 2 *",
    "0-10/5 1-3 * * *",
    "59 23 31 12 *",
    "2 1 14 * */1",
    "2 1 1-31 * 1",
    "0 0 */1 * *",
    "0 0 1-31 * */2",
]


def random_expression(rng: random.Random) -> str:
    def field(lo: int, hi: int) -> str:
        kind = rng.randrange(5)
        if kind == 0:
            return "*"
        if kind == 1:
            return f"*/{rng.randint(1, max(1, (hi - lo) // 2))}"
        a = rng.randint(lo, hi)
        if kind == 2:
            return str(a)
        if kind == 3 and a < hi:
            # (croniter reads a one-value range such as 28-28 as `*`; we don't)
            b = rng.randint(a + 1, hi)
            return f"{a}-{b}"
        return ",".join(str(rng.randint(lo, hi)) for _ in range(rng.randint(1, 3)))

    return " ".join(
        (field(0, 59), field(0, 23), field(1, 28), field(1, 12), field(0, 6))
    )


def croniter_trigger(expression: str, zone: str) -> CronTrigger:
    trigger = CronTrigger(expression, zone)
    trigger._spec = None  # force the croniter walk
    trigger._template = _walker_template(expression)
    return trigger


def fires(trigger: CronTrigger, after: float, n: int) -> list[float]:
    return list(itertools.islice(trigger.iter_after(after), n))


@pytest.mark.parametrize("zone", ZONES)
def test_fast_path_matches_croniter(zone: str) -> None:
    rng = random.Random(zone)
    expressions = FIXED + [random_expression(rng) for _ in range(60)]
    # Starts around both DST changes of 2024 and at random instants.
    starts = [
        dt.datetime(2024, 3, 30, 23, 0, tzinfo=dt.timezone.utc).timestamp(),
        dt.datetime(2024, 10, 26, 23, 0, tzinfo=dt.timezone.utc).timestamp(),
        dt.datetime(2024, 4, 6, 12, 0, tzinfo=dt.timezone.utc).timestamp(),
        dt.datetime(2024, 11, 2, 12, 0, tzinfo=dt.timezone.utc).timestamp(),
    ] + [rng.uniform(1.6e9, 1.8e9) for _ in range(2)]
    for expression in expressions:
        fast = CronTrigger(expression, zone)
        assert fast._spec is not None, expression
        slow = croniter_trigger(expression, zone)
        for after in starts:
            assert fires(fast, after, 12) == fires(slow, after, 12), (
                expression,
                zone,
                after,
            )


@pytest.mark.parametrize(
    "expression", ["61 * * * *", "* 24 * * *", "*/0 * * * *", "0 0 32 * *", "x * * * *"]
)
def test_invalid_fields_are_still_refused(expression: str) -> None:
    with pytest.raises(TriggerError, match="invalid cron expression"):
        CronTrigger(expression)


def test_croniter_only_syntax_still_works() -> None:
    trigger = CronTrigger("0 0 L * *")  # last day of the month
    assert trigger._spec is None
    first = trigger.next_after(
        dt.datetime(2024, 2, 1, tzinfo=dt.timezone.utc).timestamp()
    )
    assert first == dt.datetime(2024, 2, 29, tzinfo=dt.timezone.utc).timestamp()


def test_lower_bound_never_passes_the_next_fire() -> None:
    rng = random.Random(7)
    for expression in FIXED + [random_expression(rng) for _ in range(200)]:
        trigger = CronTrigger(expression, "UTC")
        for _ in range(5):
            after = rng.uniform(1.6e9, 1.8e9)
            bound, nxt = trigger.lower_bound(after), trigger.next_after(after)
            assert bound is not None and nxt is not None
            assert after < bound <= nxt, (expression, after)
    assert CronTrigger("0 2 * * *", "Europe/Berlin").lower_bound(0.0) is None


def test_lazily_scheduled_entries_fire_on_time(tmp_path: object) -> None:
    from styxcache.scheduler import FakeClock, InlineExecutor, Scheduler

    clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))  # a Monday
    scheduler = Scheduler(clock=clock, executor=InlineExecutor())
    ran: list[str] = []
    scheduler.register_task("wed", "30 2 * * 3", lambda: ran.append("wed"))
    scheduler.register_task("daily", "0 3 * * *", lambda: ran.append("daily"))
    scheduler.run_pending()
    for _ in range(3 * 24 * 60):  # three days, minute by minute
        clock.advance(60)
        scheduler.run_pending()
    assert ran == ["daily", "daily", "wed", "daily"]
    scheduler.close()
