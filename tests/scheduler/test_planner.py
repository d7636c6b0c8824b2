"""The pure planner: `plan(job, now, horizon)` called with plain values.

No clock, no run store, no executor: each catch-up, overlap, pause and
outage rule is checked on what `plan()` returns for a hand-made job.
"""

from __future__ import annotations

from typing import Any

import pytest

from styxcache.scheduler.config import build_entry
from styxcache.scheduler.planner import (
    MAX_ENUMERATED,
    Fire,
    Job,
    fanout_items,
    item_key,
    jitter,
    plan,
    sync_rows,
)
from styxcache.scheduler.runstore import RunRecord, run_key

MINUTE = 60.0
T0 = 100 * MINUTE  # a fire instant of every per-minute interval


def job(watermark: float = T0, **options: Any) -> Job:
    raw = {"name": "e", "target": lambda: None, "interval_seconds": MINUTE, **options}
    return Job(
        entry=build_entry(raw, pass_context=False), learned=0.0, watermark=watermark
    )


def states(records: list[RunRecord]) -> list[tuple[float, str]]:
    return [(r.nominal - T0, r.state) for r in records]


def test_nothing_due_changes_nothing() -> None:
    j = job()
    result = plan(j, T0 + 30, T0 + 30)
    assert (result.records, result.fires, result.watermark) == ([], [], T0)
    assert result.late is None


def test_one_on_time_fire_starts_at_its_due_instant() -> None:
    j = job()
    result = plan(j, T0 + 59.9, T0 + 60.5)  # claimed 0.1 s ahead
    (fire,) = result.fires
    assert fire.action == "start"
    assert fire.record is result.records[0]
    assert (fire.record.key, fire.record.state) == (run_key("e", T0 + 60), "running")
    assert fire.record.started == T0 + 60 and fire.record.lateness == 0.0
    assert result.watermark == T0 + 60
    assert j.watermark == T0  # plan() reads the job, the caller applies it


def test_catchup_latest_coalesces_all_but_the_newest() -> None:
    result = plan(job(), T0 + 5 * MINUTE + 1, T0 + 5 * MINUTE + 1)
    assert states(result.records) == [
        (60.0, "coalesced"),
        (120.0, "coalesced"),
        (180.0, "coalesced"),
        (240.0, "coalesced"),
        (300.0, "running"),
    ]
    assert result.records[0].reason.startswith("coalesced into ")
    assert result.late is not None and result.late.count == 4  # older than grace
    assert result.late.newest_due == T0 + 4 * MINUTE


def test_catchup_all_runs_the_newest_max_catchup_in_order() -> None:
    result = plan(job(catchup="all", max_catchup=2), T0 + 300, T0 + 300)
    assert states(result.records) == [
        (60.0, "missed"),
        (120.0, "missed"),
        (180.0, "missed"),
        (240.0, "running"),
        (300.0, "planned"),
    ]
    # overlap=forbid: the second waits for the first (catch-up in order).
    assert [f.action for f in result.fires] == ["start", "queue"]


def test_catchup_none_misses_late_fires_and_runs_the_newest_on_time() -> None:
    result = plan(job(catchup="none", grace_seconds=90), T0 + 300, T0 + 300)
    assert states(result.records) == [
        (60.0, "missed"),
        (120.0, "missed"),
        (180.0, "missed"),
        (240.0, "coalesced"),
        (300.0, "running"),
    ]
    assert result.records[0].reason == "late and catchup=none"


def test_overlap_forbid_skips_while_a_run_is_going() -> None:
    j = job()
    j.running = 1
    result = plan(j, T0 + 60, T0 + 60)
    assert result.fires == []
    assert [(r.state, r.reason) for r in result.records] == [
        ("skipped", "previous run still running")
    ]


def test_overlap_queue_waits_then_skips_when_full() -> None:
    j = job(overlap="queue", max_catchup=1)
    j.running = 1
    (fire,) = plan(j, T0 + 60, T0 + 60).fires
    assert (fire.action, fire.record.state) == ("queue", "planned")
    j.queued.append(fire)
    j.watermark = T0 + 60
    result = plan(j, T0 + 120, T0 + 120)
    assert [(r.state, r.reason) for r in result.records] == [
        ("skipped", "overlap queue full (1 waiting)")
    ]


def test_overlap_allow_starts_every_fire() -> None:
    j = job(overlap="allow", catchup="all")
    j.running = 3
    result = plan(j, T0 + 180, T0 + 180)
    assert [f.action for f in result.fires] == ["start"] * 3


def test_paused_entry_records_every_fire_skipped() -> None:
    result = plan(job(), T0 + 120, T0 + 120, paused_since=T0)
    assert result.fires == []
    assert states(result.records) == [(60.0, "skipped"), (120.0, "skipped")]
    assert "paused by an operator since" in result.records[0].reason
    assert result.watermark == T0 + 120


def test_fan_out_fire_is_keyed_with_a_star() -> None:
    j = job(expand_from="sched_jobs:list_subjects")
    (fire,) = plan(j, T0 + 60, T0 + 60).fires
    assert fire.expand and fire.record.item == "*"
    assert fire.record.key == run_key("e", T0 + 60, "*")


def test_a_long_outage_is_summarised_in_one_row() -> None:
    fires = MAX_ENUMERATED + 500
    now = T0 + fires * MINUTE
    result = plan(job(), now, now)
    older = [r for r in result.records if r.item == "older"]
    assert len(older) == 1 and older[0].state == "coalesced"
    assert older[0].reason.endswith("fires from an outage, summarised in one row")
    assert len(result.records) < MAX_ENUMERATED
    assert result.watermark == now
    assert isinstance(result.fires[0], Fire)


def test_jitter_is_deterministic_below_the_period_and_delays_the_due_time() -> None:
    j = job(jitter_seconds=3600)
    delays = [jitter(j.entry, T0 + MINUTE * k) for k in range(500)]
    assert delays == [jitter(j.entry, T0 + MINUTE * k) for k in range(500)]
    assert all(0 <= d < MINUTE for d in delays) and len(set(delays)) > 400
    assert jitter(job().entry, T0) == 0.0
    due = T0 + MINUTE + delays[1]
    assert plan(j, due - 0.01, due - 0.01).fires == []
    (fire,) = plan(j, due, due).fires
    assert fire.record.due == due


def test_sync_rows_are_what_the_store_needs() -> None:
    j = job()
    assert sync_rows([j]) == [("e", j.entry.trigger.signature, True, 0.0)]


def test_fanout_items_keys_and_drops_duplicates() -> None:
    entry = job(max_fanout=3).entry
    items, dropped = fanout_items(entry, [{"a": 1}, {"key": "k"}, {"a": 1}])
    assert items == [(item_key({"a": 1}), {"a": 1}), ("k", {"key": "k"})]
    assert dropped == [item_key({"a": 1})]
    with pytest.raises(ValueError, match="max_fanout is 3"):
        fanout_items(entry, [{"n": n} for n in range(4)])
    with pytest.raises(TypeError, match="list of dicts"):
        fanout_items(entry, "abc")
    with pytest.raises(TypeError, match="not a dict"):
        fanout_items(entry, [1])
