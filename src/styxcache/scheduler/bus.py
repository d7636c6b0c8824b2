"""A small event bus for finished runs: the ledger, the log and `on_run` listen.

The dispatcher publishes what happened to runs (settled, lost and retried,
given up at shutdown) as a batch; each subscriber sees the whole batch in
subscription order. A subscriber's exception propagates to the publisher,
so a run store that cannot record a run is not silently skipped; user hooks
guard themselves (see `Engine._announce`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from styxcache.scheduler.runs import RunOutcome
from styxcache.scheduler.runstore import RunRecord, RunStore

__all__ = ["RunBus", "RunEvent", "RunEventKind", "log_events", "store_writer"]

RunEventKind = Literal["settled", "retrying", "abandoned"]
"""`settled`: the run ended (ok or failed, or lost for good); `retrying`: it
was lost and starts again; `abandoned`: shutdown gave up on it."""

Subscriber = Callable[[Sequence["RunEvent"]], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class RunEvent:
    """What happened to one run (the record is as it is to be stored)."""

    kind: RunEventKind
    record: RunRecord
    outcome: RunOutcome | None = None


class RunBus:
    """Delivers batches of run events to subscribers, in subscription order."""

    def __init__(self) -> None:
        """Create a bus without subscribers."""
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a subscriber, called with each published batch."""
        self._subscribers.append(subscriber)

    def publish(self, events: Sequence[RunEvent]) -> None:
        """Deliver a batch (nothing happens for an empty one)."""
        if not events:
            return
        for subscriber in self._subscribers:
            subscriber(events)


def store_writer(store: RunStore) -> Subscriber:
    """Return a subscriber that writes the events' records to `store`.

    Settled runs must reach the store (its errors propagate); the others are
    written on a best-effort basis, as the scheduler is retrying or stopping.
    """

    def write(events: Sequence[RunEvent]) -> None:
        settled = [e.record for e in events if e.kind == "settled"]
        other = [e.record for e in events if e.kind != "settled"]
        if other:
            with contextlib.suppress(Exception):
                store.update(other)
        if settled:
            store.update(settled)

    return write


def log_events(logger: logging.Logger) -> Subscriber:
    """Return a subscriber that logs one line per event."""

    def log(events: Sequence[RunEvent]) -> None:
        for event in events:
            record = event.record
            if event.kind == "retrying":
                logger.warning("run %s interrupted: %s", record.key, record.reason)
            elif event.kind == "abandoned" or event.outcome is None:
                logger.warning("run %s %s: %s", record.key, record.state, record.reason)
            else:
                _log_outcome(logger, record, event.outcome)

    return log


def _log_outcome(
    logger: logging.Logger, record: RunRecord, outcome: RunOutcome
) -> None:
    took = (record.ended or 0.0) - (record.started or record.ended or 0.0)
    if outcome.ok:
        logger.info(
            "run %s ok in %.2fs (late %.3fs): %d cache hits, %d misses",
            record.key,
            took,
            record.lateness or 0.0,
            outcome.hits,
            outcome.misses,
        )
    else:
        logger.error(
            "run %s failed in %.2fs: %s (%d cache hits, %d misses)\n%s",
            record.key,
            took,
            outcome.error,
            outcome.hits,
            outcome.misses,
            outcome.traceback.rstrip(),
        )
