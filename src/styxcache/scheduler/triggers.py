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

import bisect
import copy
import datetime as dt
import functools
import heapq
import math
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from styxcache.errors import TriggerError
from styxcache.scheduler.cron_fields import fast_spec, next_wall

__all__ = [
    "CronTrigger",
    "IntervalTrigger",
    "NextFireMemo",
    "Trigger",
    "TriggerError",
    "load_zone",
]

# A wall time can be ambiguous for at most the size of a DST shift; three
# hours covers every shift in the tz database.
_TRANSITION_MARGIN_S = 3 * 3600


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


class NextFireMemo:
    """Remembered next-fire answers of cron triggers.

    Keyed by expression, zone and instant. Give one memo to many triggers
    (the loader gives one to every entry of a file) and a herd of entries
    with one expression costs one computation per fire instead of one each.
    Bounded: the oldest answers go first. Thread-safe.
    """

    def __init__(self, size: int = 65536) -> None:
        """Start empty.

        Args:
            size: Most answers kept.
        """
        self._size = size
        self._answers: dict[tuple[str, str, float], float | None] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, float]) -> tuple[bool, float | None]:
        """Look an answer up.

        Args:
            key: Expression, zone name and instant.

        Returns:
            Whether it is known, and the answer.
        """
        with self._lock:
            if key in self._answers:
                return True, self._answers[key]
        return False, None

    def put(self, key: tuple[str, str, float], answer: float | None) -> None:
        """Remember an answer.

        Args:
            key: Expression, zone name and instant.
            answer: The next fire (None: never).
        """
        with self._lock:
            if len(self._answers) >= self._size:
                del self._answers[next(iter(self._answers))]  # drop the oldest
            self._answers[key] = answer

    def __len__(self) -> int:
        """Return how many answers are kept."""
        with self._lock:
            return len(self._answers)

    def __reduce__(self) -> tuple[type[NextFireMemo], tuple[int]]:
        """Pickle as an empty memo (a lock cannot travel; answers are cheap)."""
        return NextFireMemo, (self._size,)


class CronTrigger:
    """A cron expression evaluated in a time zone's wall time.

    Example:
        >>> t = CronTrigger("0 2 * * *", "Europe/Berlin")
        >>> t.describe()
        "cron '0 2 * * *' in Europe/Berlin"
    """

    def __init__(
        self,
        expression: str,
        timezone: str = "UTC",
        *,
        memo: NextFireMemo | None = None,
    ) -> None:
        """Parse and check the expression.

        Args:
            expression: Five cron fields (an optional sixth is seconds).
            timezone: IANA time zone whose wall time the fields describe.
            memo: Next-fire answers shared with other triggers (None: this
                trigger keeps its own).

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
        # The common grammar (numbers, names, ranges, steps, lists) is parsed
        # here, one cached parse per distinct field; anything else (L, W, #,
        # ?, seconds) goes to croniter.
        self._spec = fast_spec(tuple(fields)) if len(fields) == 5 else None
        self._template: croniter | None = None
        if self._spec is None:
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
        self._memo = memo if memo is not None else NextFireMemo(size=1024)

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
        if self._spec is not None and self._zone.key in _FIXED_ZONES:
            # The common case needs no walk state: one calendar search.
            wall = next_wall(self._spec, _EPOCH + dt.timedelta(seconds=after))
            return None if wall is None else (wall - _EPOCH).total_seconds()
        key = (self.expression, self.timezone, after)
        known, answer = self._memo.get(key)
        if known:
            return answer
        answer = next(iter(self.iter_after(after)), None)
        self._memo.put(key, answer)
        return answer

    def lower_bound(self, after: float) -> float | None:
        """A cheap instant no later than the next fire, or None.

        Only the time of day is searched (the day fields are ignored), so
        it costs a couple of comparisons; the scheduler computes the exact
        fire when this bound comes due.

        Args:
            after: Unix seconds.

        Returns:
            The bound, or None when there is no cheap one (time zones with
            daylight saving, croniter-only syntax).
        """
        spec = self._spec
        if spec is None or self._zone.key not in _FIXED_ZONES:
            return None
        start = math.floor(after / 60) * 60 + 60
        day = start - start % 86400
        hour, minute = divmod((start - day) // 60, 60)
        hours, minutes = spec.hours, spec.minutes
        i = bisect.bisect_left(hours, hour)
        if i < len(hours) and hours[i] == hour:
            j = bisect.bisect_left(minutes, minute)
            if j < len(minutes):
                return float(day + hour * 3600 + minutes[j] * 60)
            i += 1
        if i < len(hours):
            return float(day + hours[i] * 3600 + minutes[0] * 60)
        return float(day + 86400 + hours[0] * 3600 + minutes[0] * 60)

    def iter_after(self, after: float) -> Iterator[float]:
        """Yield fires strictly after `after`, increasing, applying DST rules.

        Args:
            after: Unix seconds.

        Yields:
            Fire instants in Unix seconds.
        """
        if self._spec is not None:
            return _cron_iter(
                self._zone,
                functools.partial(next_wall, self._spec),
                self._hour_wildcard,
                after,
            )
        assert self._template is not None
        walker = copy.copy(self._template)
        started = False

        def step(wall: dt.datetime) -> dt.datetime | None:
            nonlocal started
            if not started:
                walker.set_current(wall, force=True)
                started = True
            try:
                return walker.get_next(dt.datetime)  # type: ignore[no-any-return]
            except Exception:  # croniter gives up on expressions that never match
                return None

        return _cron_iter(self._zone, step, self._hour_wildcard, after)


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


@functools.lru_cache(maxsize=1024)
def _walker_template(expression: str) -> croniter:
    # Parsing ("expanding") an expression is croniter's costly step: each
    # trigger keeps its parsed walker and copies it for every walk.
    return croniter(expression, dt.datetime(2000, 1, 1))


def _offset(zone: ZoneInfo, ts: float) -> dt.timedelta | None:
    return dt.datetime.fromtimestamp(ts, zone).utcoffset()


_FIXED_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Universal", "Zulu"})
_EPOCH = dt.datetime(1970, 1, 1)


def _cron_iter(
    zone: ZoneInfo,
    next_wall: Callable[[dt.datetime], dt.datetime | None],
    hour_wildcard: bool,
    after: float,
) -> Iterator[float]:
    if zone.key in _FIXED_ZONES:
        # No daylight saving: wall time is the instant.
        wall: dt.datetime | None = _EPOCH + dt.timedelta(seconds=after)
        while True:
            wall = next_wall(wall)  # type: ignore[arg-type]
            if wall is None:
                return
            yield (wall - _EPOCH).total_seconds()
    start = dt.datetime.fromtimestamp(after, zone).replace(tzinfo=None)
    if _offset(zone, after - _TRANSITION_MARGIN_S) != _offset(
        zone, after + _TRANSITION_MARGIN_S
    ):
        # Near a DST change the second occurrence of an earlier wall time can
        # still lie ahead of `after`: start the wall-time walk a bit earlier.
        start -= dt.timedelta(seconds=_TRANSITION_MARGIN_S)
    # The walk is in naive wall time; this module maps wall time to instants.
    pending: list[float] = []
    last = after
    misses = 0
    current: dt.datetime | None = start
    while True:
        current = next_wall(current)  # type: ignore[arg-type]
        if current is None:
            return
        wall = current
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
