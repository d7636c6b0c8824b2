"""The common cron grammar, parsed and searched without croniter.

Numbers, names, ranges, steps and lists (nearly every real schedule) are
parsed here once per distinct field, and the next matching wall time is found
with a calendar search; anything else (`L`, `W`, `#`, `?`, seconds) is left to
croniter by `triggers.CronTrigger`. The meaning of every expression is
croniter's, day-field rule included.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import re
from typing import NamedTuple

__all__ = ["CronSpec", "fast_spec", "next_wall"]

# minute, hour, day of month, month, day of week (7 is Sunday too).
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_FULL = (60, 24, 31, 12, 7)
_MONTHS = {
    m: i
    for i, m in enumerate(
        (
            "jan",
            "feb",
            "mar",
            "apr",
            "may",
            "jun",
            "jul",
            "aug",
            "sep",
            "oct",
            "nov",
            "dec",
        ),
        start=1,
    )
}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_PART = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/([0-9]+))?$")


def _value(index: int, text: str) -> int | None:
    if text.isdigit():
        return int(text)
    names = _MONTHS if index == 3 else _DAYS if index == 4 else {}
    return names.get(text)


@functools.lru_cache(maxsize=4096)
def _parse_field(index: int, text: str) -> tuple[int, ...] | None:
    """Sorted values of one cron field; None when croniter must judge it."""
    lo, hi = _RANGES[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        match = _PART.match(part)
        if match is None:
            return None
        span, step_text = match.groups()
        step = int(step_text) if step_text is not None else 1
        if step < 1:
            return None
        if span == "*":
            first, last = lo, (6 if index == 4 else hi)
        else:
            ends = span.split("-")
            parsed = [_value(index, end) for end in ends]
            if any(v is None for v in parsed):
                return None
            first = parsed[0]  # type: ignore[assignment]
            last = parsed[-1] if len(parsed) == 2 else (hi if step_text else first)  # type: ignore[assignment]
            if not lo <= first <= last <= hi:
                return None  # out of range or a wrapping range: croniter's call
        values.update(range(first, last + 1, step))
    if index == 4 and 7 in values:
        values.discard(7)
        values.add(0)
    return tuple(sorted(values))


class CronSpec(NamedTuple):
    """The values each field of a five-field expression matches."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_or: bool  # both day fields restricted: either may match (cron's rule)


@functools.lru_cache(maxsize=4096)
def _field_set(index: int, text: str) -> frozenset[int] | None:
    values = _parse_field(index, text)
    return None if values is None else frozenset(values)


@functools.lru_cache(maxsize=16384)
def fast_spec(fields: tuple[str, ...]) -> CronSpec | None:
    """Parse five cron fields; None when croniter must judge them."""
    minute_text, hour_text, dom_text, month_text, dow_text = fields
    minutes = _parse_field(0, minute_text)
    hours = _parse_field(1, hour_text)
    days = _field_set(2, dom_text)
    months = _field_set(3, month_text)
    weekdays = _field_set(4, dow_text)
    if not (minutes and hours and days and months and weekdays):
        return None  # unparsed here (croniter's call), or matching nothing
    # croniter's rule, kept so that no schedule changes meaning: a day field
    # is unrestricted when written `*`, or when it covers every value and
    # the other day field's text has a `*`; with both restricted, either
    # matching is enough.
    days_all = dom_text == "*" or (len(days) == _FULL[2] and "*" in dow_text)
    weekdays_all = dow_text == "*" or (len(weekdays) == _FULL[4] and "*" in dom_text)
    return CronSpec(
        minutes, hours, days, months, weekdays, not days_all and not weekdays_all
    )


# Long enough for "29 Feb" on a given weekday; shorter specs never match.
_MAX_DAYS = 366 * 29


def next_wall(spec: CronSpec, after: dt.datetime) -> dt.datetime | None:
    """The first naive wall time strictly after `after` that the spec matches."""
    start = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    day = start.date()
    hour, minute = start.hour, start.minute
    hours, minutes = spec.hours, spec.minutes
    one = dt.timedelta(days=1)
    for _ in range(_MAX_DAYS):
        if day.month in spec.months:
            dom = day.day in spec.days
            dow = (day.weekday() + 1) % 7 in spec.weekdays
            if (dom or dow) if spec.day_or else (dom and dow):
                i = bisect.bisect_left(hours, hour)
                if i < len(hours) and hours[i] == hour:
                    j = bisect.bisect_left(minutes, minute)
                    if j < len(minutes):
                        return dt.datetime(
                            day.year, day.month, day.day, hour, minutes[j]
                        )
                    i += 1
                if i < len(hours):
                    return dt.datetime(
                        day.year, day.month, day.day, hours[i], minutes[0]
                    )
        day += one
        hour = minute = 0
    return None
