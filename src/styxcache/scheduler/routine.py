"""The seeds' routine loop: `routine(scheduler)` every `wait_ms`, session records.

Seed 000's API (`Scheduler(routine=f, wait_ms=5_000, logger=log,
max_cycles=3).run()`, `records`, `get_records_df()`) kept as a thin layer
over the job engine: `RoutineSession` holds the routine's settings and the
session ledger, and `Scheduler` mixes it in so that the attributes the seeds
read and set (`scheduler.cycle`, `scheduler.routine`, `scheduler.wait_ms`,
`scheduler.records`) stay where they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from styxcache.scheduler.clock import Clock, utc_from_timestamp
from styxcache.scheduler.runstore import RunStore
from styxcache.scheduler.stores import StoreUnavailableError

__all__ = ["ExceptionHandler", "RoutineSession"]

ExceptionHandler = Callable[[BaseException, str, Any], Any]
"""`handler(exc, where, scheduler)` for exceptions raised by the routine."""


class RoutineSession:
    """The routine, its cycle count, stop conditions and session records."""

    clock: Clock
    ledger: RunStore

    def _init_routine(
        self,
        routine: Callable[[Any], Any] | None,
        wait_ms: int,
        logger: logging.Logger | None,
        sess_stats: Callable[[Any], Mapping[str, Any]] | None,
        exception_handler: ExceptionHandler | None,
        max_cycles: int | None,
        until_ms: int | None,
        records: list[dict[str, Any]] | None,
    ) -> None:
        if wait_ms < 0:
            raise ValueError(f"wait_ms must not be negative, got {wait_ms}")
        if max_cycles is not None and max_cycles < 0:
            raise ValueError(f"max_cycles must not be negative, got {max_cycles}")
        self.routine = routine
        self.wait_ms = wait_ms
        self.logger = logger or logging.getLogger("styxcache.scheduler")
        self.sess_stats = sess_stats or (lambda _s: {})
        self.exception_handler: ExceptionHandler = (
            exception_handler or _default_exception_handler
        )
        self.max_cycles = max_cycles
        self.until_ms = until_ms
        self.records: list[dict[str, Any]] = records if records is not None else []
        self.cycle = 0
        self._session_start: float | None = None

    def _limit_reached(self) -> str | None:
        """Why the loop must stop now (`max_cycles`, `until_ms`), or None."""
        if self.max_cycles is not None and self.cycle >= self.max_cycles:
            return f"max_cycles={self.max_cycles} reached"
        if self.until_ms is not None and self.clock.time() * 1000 >= self.until_ms:
            return "until_ms reached"
        return None

    def _run_routine(self) -> None:
        assert self.routine is not None
        self.logger.info("cycle %d: starting", self.cycle)
        try:
            self.routine(self)
        except Exception as exc:
            self.exception_handler(exc, "routine", self)
        self.cycle += 1
        self.logger.info("cycle %d: finished", self.cycle - 1)

    def record_session_end(self, reason: str = "not given") -> dict[str, Any]:
        """Append this session's summary to `records` and log the history.

        Args:
            reason: Why the session ended.

        Returns:
            The new record.
        """
        now = self.clock.time()
        start = self._session_start if self._session_start is not None else now
        try:
            counts = self.ledger.count_by_state()
        except StoreUnavailableError:
            counts = {}
        record: dict[str, Any] = {
            "start": utc_from_timestamp(start).isoformat(),
            "finish": utc_from_timestamp(now).isoformat(),
            "duration_s": round(now - start, 3),
            "cycles": self.cycle,
            "termination reason": reason,
            "runs": counts,
            **dict(self.sess_stats(self)),
        }
        self.records.append(record)
        self.logger.info("session ended (%s) after %d cycle(s)", reason, self.cycle)
        for index, row in enumerate(self.records):
            self.logger.info("session %d: %s", index, json.dumps(row, default=str))
        return record

    def get_records_df(self) -> list[dict[str, Any]]:
        """Return the session records (a list of dicts, ready for a DataFrame)."""
        return [dict(r) for r in self.records]


def _default_exception_handler(
    exc: BaseException, where: str, scheduler: RoutineSession
) -> None:
    scheduler.record_session_end(reason=f"{where} raised {type(exc).__name__}: {exc}")
    scheduler.logger.exception("%s raised; stopping", where, exc_info=exc)
    raise exc
