"""Clocks: where the scheduler reads the time and how it waits.

The scheduler never calls `time.time()` or `time.sleep()` itself; it asks a
`Clock`. `SystemClock` is the real one. `FakeClock` lets tests (ours and
users') move time by hand: waiting on it advances time instantly, and
`jump()` moves wall time without moving monotonic time, the way a suspended
laptop or an NTP step does.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "utc_from_timestamp"]

UTC = dt.timezone.utc


def utc_from_timestamp(ts: float) -> dt.datetime:
    """Return an aware UTC datetime for a Unix timestamp.

    Args:
        ts: Seconds since the Unix epoch.

    Returns:
        The instant as an aware datetime in UTC.
    """
    return dt.datetime.fromtimestamp(ts, tz=UTC)


@runtime_checkable
class Clock(Protocol):
    """Time source and waiting primitive used by the scheduler."""

    def time(self) -> float:
        """Return wall time as Unix seconds."""
        ...

    def now(self) -> dt.datetime:
        """Return wall time as an aware UTC datetime."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds (only differences matter)."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block for up to `timeout` seconds or until `wake()` is called.

        Args:
            timeout: Longest wait in seconds.

        Returns:
            True if woken early by `wake()`, False if the timeout elapsed.
        """
        ...

    def wake(self) -> None:
        """Cut the current (or next) `wait()` short."""
        ...


class SystemClock:
    """The real clock: `time.time()`, `time.monotonic()` and an event wait."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def time(self) -> float:
        """Return `time.time()`."""
        return time.time()

    def now(self) -> dt.datetime:
        """Return the current instant in UTC."""
        return dt.datetime.now(tz=UTC)

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Wait on an internal event for up to `timeout` seconds.

        Args:
            timeout: Longest wait in seconds (negative counts as zero).

        Returns:
            True if `wake()` ended the wait.
        """
        woken = self._event.wait(max(0.0, timeout))
        self._event.clear()
        return woken

    def wake(self) -> None:
        """Wake a waiter."""
        if not self._event.is_set():  # cheap check: completions wake often
            self._event.set()


class FakeClock:
    """A hand-driven clock for tests.

    `wait(t)` returns at once after moving both wall and monotonic time by
    `t` (unless a `wake()` is pending, which returns at once without moving
    time). `advance(t)` moves both; `jump(t)` moves only wall time, which is
    what a suspend/resume or an NTP step looks like to a process.

    Example:
        >>> clock = FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
        >>> clock.advance(90)
        >>> clock.now().minute
        1
    """

    def __init__(self, start: dt.datetime | float | None = None) -> None:
        """Create the clock.

        Args:
            start: Initial wall time (aware datetime or Unix seconds);
                defaults to 2024-01-01T00:00:00Z.

        Raises:
            ValueError: If `start` is a naive datetime.
        """
        if start is None:
            start = dt.datetime(2024, 1, 1, tzinfo=UTC)
        if isinstance(start, dt.datetime):
            if start.tzinfo is None:
                raise ValueError("FakeClock start must be timezone-aware")
            start = start.timestamp()
        self._wall = float(start)
        self._mono = 1000.0
        self._lock = threading.Lock()
        self._woken = False
        self.waits: deque[float] = deque(maxlen=1000)
        """The latest timeouts passed to `wait()`, for assertions on sleep caps."""

    def time(self) -> float:
        """Return the fake wall time in Unix seconds."""
        with self._lock:
            return self._wall

    def now(self) -> dt.datetime:
        """Return the fake wall time as an aware UTC datetime."""
        return utc_from_timestamp(self.time())

    def monotonic(self) -> float:
        """Return the fake monotonic reading."""
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move wall and monotonic time forward.

        Args:
            seconds: How far; must not be negative.

        Raises:
            ValueError: If `seconds` is negative.
        """
        if seconds < 0:
            raise ValueError("FakeClock.advance needs a non-negative duration")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def jump(self, seconds: float) -> None:
        """Move only wall time (forward or back), like a suspend or NTP step.

        Args:
            seconds: Signed jump in seconds.
        """
        with self._lock:
            self._wall += seconds

    def set(self, when: dt.datetime) -> None:
        """Move wall and monotonic time forward to an instant.

        Args:
            when: Target instant (aware); must not be in the past.

        Raises:
            ValueError: If `when` is naive or earlier than now.
        """
        if when.tzinfo is None:
            raise ValueError("FakeClock.set needs a timezone-aware datetime")
        self.advance(when.timestamp() - self.time())

    def wait(self, timeout: float) -> bool:
        """Advance time by `timeout` at once, unless a wake is pending.

        Args:
            timeout: Seconds to move forward.

        Returns:
            True if a pending `wake()` was consumed instead.
        """
        with self._lock:
            self.waits.append(timeout)
            if self._woken:
                self._woken = False
                return True
            step = max(0.0, timeout)
            self._wall += step
            self._mono += step
        return False

    def wake(self) -> None:
        """Make the next `wait()` return at once."""
        with self._lock:
            self._woken = True
