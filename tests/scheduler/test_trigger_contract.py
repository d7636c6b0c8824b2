"""The `Trigger` contract, run against every trigger the package ships.

Each implementation is built in the ways the scheduler meets it: a cron
expression on the fast calendar path (UTC), in zones with daylight saving
(Lord Howe's shift is half an hour), one only croniter understands, and an
interval grid.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import pytest

from styxcache.scheduler import CronTrigger, IntervalTrigger, Trigger
from styxcache.scheduler.triggers import NextFireMemo

START = dt.datetime(2024, 3, 29, 22, 30, tzinfo=dt.timezone.utc).timestamp()

MAKERS: dict[str, Callable[[], Trigger]] = {
    "cron-utc": lambda: CronTrigger("*/20 1-3 * * *"),
    "cron-dst": lambda: CronTrigger("30 2 * * *", "Europe/Berlin"),
    "cron-half-hour-dst": lambda: CronTrigger("*/7 * * * *", "Australia/Lord_Howe"),
    "cron-dst-shared-memo": lambda: CronTrigger(
        "30 2 * * *", "Europe/Berlin", memo=NextFireMemo()
    ),
    "cron-croniter": lambda: CronTrigger("0 12 L * *", "America/New_York"),
    "cron-seconds": lambda: CronTrigger("*/30 * * * * *"),
    "interval": lambda: IntervalTrigger(90.0, anchor=7.0),
}


@pytest.fixture(params=sorted(MAKERS))
def make(request: pytest.FixtureRequest) -> Callable[[], Trigger]:
    return MAKERS[request.param]


def test_is_a_trigger(make: Callable[[], Trigger]) -> None:
    assert isinstance(make(), Trigger)


def test_next_after_is_strictly_later(make: Callable[[], Trigger]) -> None:
    trigger = make()
    for after in (START, START + 0.5, START + 3600, START + 86_400 * 40):
        fire = trigger.next_after(after)
        assert fire is not None and fire > after


def test_repeated_next_after_walks_strictly_forward(
    make: Callable[[], Trigger],
) -> None:
    # Across Lord Howe's half-hour fall-back (2024-04-07 02:00 local).
    previous = dt.datetime(2024, 4, 6, 13, 0, tzinfo=dt.timezone.utc).timestamp()
    trigger = make()
    for _ in range(200):
        fire = trigger.next_after(previous)
        assert fire is not None and fire > previous
        previous = fire


def test_iter_after_increases_and_agrees_with_next_after(
    make: Callable[[], Trigger],
) -> None:
    trigger = make()
    fires = list(itertools.islice(trigger.iter_after(START), 8))
    assert fires == sorted(set(fires))
    assert fires[0] == trigger.next_after(START)
    # Asking again from each fire gives the one after it.
    for earlier, later in itertools.pairwise(fires):
        assert trigger.next_after(earlier) == later


def test_a_fire_instant_is_not_its_own_next(make: Callable[[], Trigger]) -> None:
    trigger = make()
    fire = trigger.next_after(START)
    assert fire is not None
    assert trigger.next_after(fire) != fire


def test_signature_names_the_fire_times(make: Callable[[], Trigger]) -> None:
    first, second = make(), make()
    assert isinstance(first.signature, str) and first.signature
    assert first.signature == second.signature
    signatures = {maker().signature for maker in MAKERS.values()}
    # Two makers build the same schedule (one with a shared memo): the memo is
    # not part of when it fires.
    assert len(signatures) == len(MAKERS) - 1


def test_describe_is_a_short_text(make: Callable[[], Trigger]) -> None:
    text = make().describe()
    assert isinstance(text, str) and 0 < len(text) < 100
