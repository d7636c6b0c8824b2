"""Seed 000's `stackops.utils.scheduler`, backed by styxcache.scheduler.

The example waits 5 s between cycles; the test's stand-in gives the scheduler
a fake clock so that it finishes at once (the only difference).
"""

from __future__ import annotations

from typing import Any

from styxcache.scheduler import Cache, CacheMemory, FakeClock
from styxcache.scheduler import Scheduler as _Scheduler

__all__ = ["Cache", "CacheMemory", "Scheduler"]

LAST: list[_Scheduler] = []


class Scheduler(_Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("clock", FakeClock())
        super().__init__(*args, **kwargs)
        LAST.append(self)
