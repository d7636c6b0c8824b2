"""The run event bus: subscribers in order, the store writer's two rules."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from styxcache.scheduler.bus import RunBus, RunEvent, log_events, store_writer
from styxcache.scheduler.ledger import Ledger
from styxcache.scheduler.runs import RunOutcome
from styxcache.scheduler.runstore import RunRecord, run_key


def claimed(ledger: Ledger, name: str) -> RunRecord:
    record = RunRecord(
        key=run_key(name, 60.0), entry=name, nominal=60.0, state="running"
    )
    assert ledger.claim([record]) == [True]
    return record


def test_subscribers_see_each_batch_in_order(caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(":memory:")
    seen: list[tuple[str, list[str]]] = []
    bus = RunBus()
    bus.subscribe(store_writer(ledger))
    bus.subscribe(log_events(logging.getLogger("test.bus")))
    bus.subscribe(lambda events: seen.append(("hook", [e.kind for e in events])))
    ok, lost = claimed(ledger, "ok"), claimed(ledger, "lost")
    ok.state, ok.ended = "ok", 61.0
    lost.state, lost.reason = "interrupted", "attempt 1 lost: gone"
    with caplog.at_level(logging.INFO, logger="test.bus"):
        bus.publish([RunEvent("settled", ok, RunOutcome(ok=True))])
        bus.publish([RunEvent("retrying", lost, RunOutcome(ok=False))])
        bus.publish([])
    assert seen == [("hook", ["settled"]), ("hook", ["retrying"])]
    assert [r.state for r in ledger.history(entry="ok")] == ["ok"]
    assert [r.state for r in ledger.history(entry="lost")] == ["interrupted"]
    assert "run ok@60.000000 ok in" in caplog.text
    assert "run lost@60.000000 interrupted: attempt 1 lost: gone" in caplog.text
    ledger.close()


def test_settled_runs_that_cannot_be_stored_raise() -> None:
    ledger = Ledger(":memory:")
    record = claimed(ledger, "x")
    ledger.close()  # every write now fails
    bus = RunBus()
    bus.subscribe(store_writer(ledger))
    # Best effort while retrying or stopping...
    bus.publish([RunEvent("abandoned", record)])
    # ...but a settled run must not vanish silently.
    with pytest.raises(sqlite3.ProgrammingError):
        bus.publish([RunEvent("settled", record, RunOutcome(ok=True))])
