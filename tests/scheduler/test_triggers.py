"""Golden tests of cron triggers across DST changes, and of anchored intervals."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from styxcache.scheduler import CronTrigger, IntervalTrigger, TriggerError


def fires(expr: str, zone: str, start: str, n: int) -> list[str]:
    tz = ZoneInfo(zone)
    after = dt.datetime.fromisoformat(start).replace(tzinfo=tz).timestamp()
    trigger = CronTrigger(expr, zone)
    return [
        dt.datetime.fromtimestamp(t, tz).isoformat()
        for t in itertools.islice(trigger.iter_after(after), n)
    ]


GOLDEN = [
    # Europe/Berlin, spring forward 2024-03-31 02:00 -> 03:00.
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2024-03-30T12:00",
        ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"],
    ),
    (
        "30 * * * *",
        "Europe/Berlin",
        "2024-03-31T00:45",
        [
            "2024-03-31T01:30:00+01:00",
            "2024-03-31T03:00:00+02:00",
            "2024-03-31T03:30:00+02:00",
        ],
    ),
    # Europe/Berlin, fall back 2024-10-27 03:00 -> 02:00: fixed hour runs once.
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2024-10-26T12:00",
        ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"],
    ),
    # ... and an hourly schedule runs at both instants.
    (
        "30 * * * *",
        "Europe/Berlin",
        "2024-10-27T01:45",
        [
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T02:30:00+01:00",
            "2024-10-27T03:30:00+01:00",
        ],
    ),
    (
        "*/20 * * * *",
        "Europe/Berlin",
        "2024-10-27T01:50",
        [
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:20:00+02:00",
            "2024-10-27T02:40:00+02:00",
            "2024-10-27T02:00:00+01:00",
            "2024-10-27T02:20:00+01:00",
        ],
    ),
    # America/New_York: spring forward 2024-03-10 02:00 -> 03:00, fall back 2024-11-03.
    (
        "30 2 * * *",
        "America/New_York",
        "2024-03-09T12:00",
        ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"],
    ),
    (
        "30 1 * * *",
        "America/New_York",
        "2024-11-02T12:00",
        ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"],
    ),
    (
        "0 * * * *",
        "America/New_York",
        "2024-11-03T00:30",
        [
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T01:00:00-05:00",
            "2024-11-03T02:00:00-05:00",
        ],
    ),
    # Australia/Lord_Howe shifts by 30 minutes: 02:00 -> 02:30 in October ...
    (
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2024-10-05T12:00",
        ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"],
    ),
    # ... and 02:00 -> 01:30 in April.
    (
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2024-04-06T12:00",
        ["2024-04-07T01:45:00+11:00", "2024-04-08T01:45:00+10:30"],
    ),
    (
        "*/15 * * * *",
        "Australia/Lord_Howe",
        "2024-04-07T01:20",
        [
            "2024-04-07T01:30:00+11:00",
            "2024-04-07T01:45:00+11:00",
            "2024-04-07T01:30:00+10:30",
            "2024-04-07T01:45:00+10:30",
            "2024-04-07T02:00:00+10:30",
        ],
    ),
]


@pytest.mark.parametrize(("expr", "zone", "start", "expected"), GOLDEN)
def test_dst_golden(expr: str, zone: str, start: str, expected: list[str]) -> None:
    assert fires(expr, zone, start, len(expected)) == expected


def test_gap_fires_once_even_when_several_wall_times_fall_in_it() -> None:
    # 02:00, 02:15, 02:30, 02:45 and 03:00 all map to 03:00 CEST: one fire.
    got = fires("*/15 * * * *", "Europe/Berlin", "2024-03-31T01:50", 3)
    assert got == [
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:15:00+02:00",
        "2024-03-31T03:30:00+02:00",
    ]


def test_start_inside_the_repeated_hour_second_pass() -> None:
    tz = ZoneInfo("Europe/Berlin")
    # 02:10 CET (second pass, fold=1) = 01:10 UTC.
    after = dt.datetime(2024, 10, 27, 1, 10, tzinfo=dt.timezone.utc).timestamp()
    nxt = CronTrigger("*/20 * * * *", "Europe/Berlin").next_after(after)
    assert nxt is not None
    assert dt.datetime.fromtimestamp(nxt, tz).isoformat() == "2024-10-27T02:20:00+01:00"


def test_interval_is_anchored_and_never_drifts() -> None:
    trigger = IntervalTrigger(90, anchor=30)
    assert trigger.next_after(0) == 30
    assert trigger.next_after(30) == 120
    assert trigger.next_after(119.999) == 120
    # However late we ask, the answer stays on the grid.
    for late in (121.5, 1_000_003.7, 9_999_999.1):
        assert (trigger.next_after(late) - 30) % 90 == 0
    grid = list(itertools.islice(trigger.iter_after(1_000_000), 3))
    assert [(g - 30) % 90 for g in grid] == [0, 0, 0]


def test_interval_with_float_period() -> None:
    trigger = IntervalTrigger(0.1)
    fired = list(itertools.islice(trigger.iter_after(0.0), 10_000))
    assert fired[-1] == pytest.approx(1000.0)
    assert all(b > a for a, b in itertools.pairwise(fired))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "invalid cron expression"),
        ("* * *", "has 3 fields"),
        ("", "non-empty"),
        ("0 25 * * *", "invalid cron expression"),
    ],
)
def test_invalid_cron(expr: str, message: str) -> None:
    with pytest.raises(TriggerError, match=message):
        CronTrigger(expr)


def test_unknown_zone() -> None:
    with pytest.raises(TriggerError, match="unknown time zone 'Mars/Olympus'"):
        CronTrigger("0 2 * * *", "Mars/Olympus")


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "60", True])
def test_invalid_interval(bad: object) -> None:
    with pytest.raises(TriggerError):
        IntervalTrigger(bad)  # type: ignore[arg-type]


def test_never_matching_expression_returns_none() -> None:
    assert CronTrigger("0 0 30 2 *").next_after(0.0) is None
