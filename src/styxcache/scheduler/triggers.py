"""Triggers: when a schedule fires, as Unix instants.

Two kinds, behind one `Trigger` protocol:

* `CronTrigger` reads a cron expression (via croniter) in the wall time of an
  IANA time zone. Daylight-saving changes follow fixed rules: a wall time that
  does not exist (spring-forward gap) fires once at the first valid instant
  after the gap; a wall time that happens twice (fall-back) fires once, at
  the first occurrence, unless the hour field is a wildcard (`*`, `*/n`), in
  which case it fires at both instants.
* `IntervalTrigger` fires at `anchor + k * interval` for whole `k`, so the
  grid never drifts however late a run starts or ends.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import heapq
import math
import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = ["CronTrigger", "IntervalTrigger", "Trigger", "TriggerError", "load_zone"]

# A wall time can be ambiguous for at most the size of a DST shift; three
# hours covers every shift in the tz database.
_TRANSITION_MARGIN_S = 3 * 3600


class TriggerError(ValueError):
    """A cron expression, interval or time zone is invalid."""


@runtime_checkable
class Trigger(Protocol):
    """Computes the nominal fire instants of a schedule."""

    def next_after(self, after: float) -> float | None:
        """Return the first fire instant strictly after `after` (Unix seconds).

        Args:
            after: Unix seconds.

        Returns:
            The next instant, or None if the trigger never fires again.
        """
        ...

    def iter_after(self, after: float) -> Iterator[float]:
        """Yield fire instants strictly after `after`, in increasing order.

        Args:
            after: Unix seconds.
        """
        ...

    @property
    def signature(self) -> str:
        """A string that changes exactly when the fire times change."""
        ...

    def describe(self) -> str:
        """Return a short human-readable description."""
        ...


@functools.lru_cache(maxsize=256)
def load_zone(name: str) -> ZoneInfo:
    """Return the `ZoneInfo` for an IANA name.

    Args:
        name: For example `"Europe/Berlin"` or `"UTC"`.

    Returns:
        The zone.

    Raises:
        TriggerError: If the name is not a known time zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TriggerError(f"unknown time zone {name!r}") from exc


class CronTrigger:
    """A cron expression evaluated in a time zone's wall time.

    Example:
        >>> t = CronTrigger("0 2 * * *", "Europe/Berlin")
        >>> t.describe()
        "cron '0 2 * * *' in Europe/Berlin"
    """

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        """Parse and check the expression.

        Args:
            expression: Five cron fields (an optional sixth is seconds).
            timezone: IANA time zone whose wall time the fields describe.

        Raises:
            TriggerError: If the expression or the zone is invalid.
        """
        if not isinstance(expression, str) or not expression.strip():
            raise TriggerError("cron expression must be a non-empty string")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise TriggerError(
                f"cron expression {expression!r} has {len(fields)} fields; "
                "expected 5 (minute hour day month weekday) or 6 (with seconds)"
            )
        try:
            self._template = _walker_template(" ".join(fields))
        except Exception as exc:  # croniter raises several unrelated types
            raise TriggerError(
                f"invalid cron expression {expression!r}: {exc}"
            ) from None
        self.expression = " ".join(fields)
        self.timezone = timezone
        self._zone = load_zone(timezone)
        # Fall-back repeats fire twice only for schedules that repeat hourly.
        self._hour_wildcard = fields[1].startswith("*")

    @property
    def signature(self) -> str:
        """`cron:<expression>@<zone>`."""
        return f"cron:{self.expression}@{self.timezone}"

    def describe(self) -> str:
        """Return e.g. `cron '0 2 * * *' in Europe/Berlin`."""
        return f"cron {self.expression!r} in {self.timezone}"

    def next_after(self, after: float) -> float | None:
        """Return the first fire strictly after `after`.

        Args:
            after: Unix seconds.

        Returns:
            The next fire instant (cron schedules never end, but an
            expression such as `0 0 30 2 *` never matches, giving None).
        """
        key = (self.expression, self.timezone, after)
        with _NEXT_LOCK:
            if key in _NEXT_CACHE:
                return _NEXT_CACHE[key]
        result = next(iter(self.iter_after(after)), None)
        with _NEXT_LOCK:
            if len(_NEXT_CACHE) >= _NEXT_CACHE_SIZE:
                del _NEXT_CACHE[next(iter(_NEXT_CACHE))]  # drop the oldest
            _NEXT_CACHE[key] = result
        return result

    def iter_after(self, after: float) -> Iterator[float]:
        """Yield fires strictly after `after`, increasing, applying DST rules.

        Args:
            after: Unix seconds.

        Yields:
            Fire instants in Unix seconds.
        """
        return _cron_iter(self._zone, self._template, self._hour_wildcard, after)


class IntervalTrigger:
    """Fires at `anchor + k * seconds`; the grid never drifts.

    Example:
        >>> IntervalTrigger(60).next_after(90.0)
        120.0
    """

    def __init__(self, seconds: float, anchor: float = 0.0) -> None:
        """Check the interval.

        Args:
            seconds: Period; must be positive and finite.
            anchor: Unix seconds of one grid point (default: the epoch, so
                every process computes the same grid without coordination).

        Raises:
            TriggerError: If `seconds` is not a positive finite number.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TriggerError(f"interval must be a number of seconds, not {seconds!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise TriggerError(f"interval must be positive, not {seconds!r}")
        self.seconds = float(seconds)
        self.anchor = float(anchor)

    @property
    def signature(self) -> str:
        """`interval:<seconds>@<anchor>`."""
        return f"interval:{self.seconds!r}@{self.anchor!r}"

    def describe(self) -> str:
        """Return e.g. `every 3600s`."""
        return f"every {self.seconds:g}s"

    def next_after(self, after: float) -> float:
        """Return the first grid point strictly after `after`.

        Args:
            after: Unix seconds.

        Returns:
            The next grid point.
        """
        k = math.floor((after - self.anchor) / self.seconds) + 1
        fire = self.anchor + k * self.seconds
        # Rounding can land on or before `after`; step once more.
        while fire <= after:
            k += 1
            fire = self.anchor + k * self.seconds
        return fire

    def iter_after(self, after: float) -> Iterator[float]:
        """Yield grid points strictly after `after`.

        Args:
            after: Unix seconds.

        Yields:
            Fire instants in Unix seconds.
        """
        fire = self.next_after(after)
        k = round((fire - self.anchor) / self.seconds)
        while True:
            yield self.anchor + k * self.seconds
            k += 1


# Next-fire answers shared by all triggers, so that thousands of entries with
# one expression (a herd) cost one computation per fire instead of one each.
_NEXT_CACHE: dict[tuple[str, str, float], float | None] = {}
_NEXT_CACHE_SIZE = 65536
_NEXT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _walker_template(expression: str) -> croniter:
    # Parsing ("expanding") an expression is croniter's costly step: each
    # trigger keeps its parsed walker and copies it for every walk.
    return croniter(expression, dt.datetime(2000, 1, 1))


def _offset(zone: ZoneInfo, ts: float) -> dt.timedelta | None:
    return dt.datetime.fromtimestamp(ts, zone).utcoffset()


def _cron_iter(
    zone: ZoneInfo, template: croniter, hour_wildcard: bool, after: float
) -> Iterator[float]:
    start = dt.datetime.fromtimestamp(after, zone).replace(tzinfo=None)
    if _offset(zone, after - _TRANSITION_MARGIN_S) != _offset(
        zone, after + _TRANSITION_MARGIN_S
    ):
        # Near a DST change the second occurrence of an earlier wall time can
        # still lie ahead of `after`: start the wall-time walk a bit earlier.
        start -= dt.timedelta(seconds=_TRANSITION_MARGIN_S)
    # croniter walks naive wall time; this module maps wall time to instants.
    walker = copy.copy(template)
    walker.set_current(start, force=True)
    pending: list[float] = []
    last = after
    misses = 0
    while True:
        try:
            wall = walker.get_next(dt.datetime)
        except Exception:  # croniter gives up on expressions that never match
            return
        first, second = _resolve(zone, wall, hour_wildcard)
        heapq.heappush(pending, first)
        if second is not None:
            heapq.heappush(pending, second)
        emitted = False
        while pending and pending[0] <= first:
            fire = heapq.heappop(pending)
            if fire > last:
                last = fire
                emitted = True
                yield fire
        misses = 0 if emitted else misses + 1
        if misses > 100_000:
            return


def _resolve(
    zone: ZoneInfo, wall: dt.datetime, hour_wildcard: bool
) -> tuple[float, float | None]:
    """Map a naive wall time to its instant(s) under the DST rules."""
    early = wall.replace(tzinfo=zone, fold=0).timestamp()
    late = wall.replace(tzinfo=zone, fold=1).timestamp()
    if early == late:
        return early, None
    lo, hi = min(early, late), max(early, late)
    round_trip = dt.datetime.fromtimestamp(early, zone).replace(tzinfo=None)
    if round_trip != wall:
        # Nonexistent wall time: fire at the first instant after the gap.
        return _transition_instant(zone, lo, hi), None
    # Repeated wall time: first occurrence, plus the second for hourly ones.
    return lo, (hi if hour_wildcard else None)


def _transition_instant(zone: ZoneInfo, lo: float, hi: float) -> float:
    """Binary-search the first second carrying the post-transition offset."""
    target = _offset(zone, hi)
    low, high = math.floor(lo), math.ceil(hi)
    while high - low > 1:
        mid = (low + high) // 2
        if _offset(zone, mid) == target:
            high = mid
        else:
            low = mid
    return float(high)
