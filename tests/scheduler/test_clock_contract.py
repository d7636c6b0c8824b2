"""One contract for every `Clock`: the real `SystemClock` and `FakeClock`.

No test here waits for time to pass: each wait is either cut short by a
pending `wake()` or has a zero timeout.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest

from styxcache.scheduler import Clock, FakeClock, SystemClock

MakeClock = Callable[[], Clock]

SUBJECTS: dict[str, MakeClock] = {
    "system": SystemClock,
    "fake": FakeClock,
    "fake-at-an-instant": lambda: FakeClock(1_700_000_000.25),
}


@pytest.fixture(params=list(SUBJECTS))
def clock(request: pytest.FixtureRequest) -> Clock:
    return SUBJECTS[str(request.param)]()


def test_is_a_clock(clock: Clock) -> None:
    assert isinstance(clock, Clock)


def test_now_is_aware_utc_and_agrees_with_time(clock: Clock) -> None:
    before = clock.time()
    now = clock.now()
    after = clock.time()
    assert now.tzinfo is dt.timezone.utc
    # Seconds are compared at microsecond precision: datetimes keep no more.
    assert before - 1e-6 <= now.timestamp() <= after + 1e-6


def test_monotonic_never_goes_back(clock: Clock) -> None:
    readings = [clock.monotonic()]
    for _ in range(100):
        clock.wait(0)
        readings.append(clock.monotonic())
    assert readings == sorted(readings)


def test_a_pending_wake_ends_the_next_wait_at_once(clock: Clock) -> None:
    clock.wake()
    start = clock.monotonic()
    # Far longer than any test may take: it must return because of the wake.
    assert clock.wait(3600) is True
    assert clock.monotonic() - start < 3600


def test_a_wake_is_used_up_by_one_wait(clock: Clock) -> None:
    clock.wake()
    clock.wake()  # wakes do not pile up
    assert clock.wait(3600) is True
    assert clock.wait(0) is False


def test_a_zero_or_negative_wait_returns_without_a_wake(clock: Clock) -> None:
    assert clock.wait(0) is False
    assert clock.wait(-5) is False


def test_a_wake_from_another_thread_reaches_the_waiter(clock: Clock) -> None:
    woken = threading.Thread(target=clock.wake)
    woken.start()
    woken.join(timeout=30)
    assert clock.wait(3600) is True
