"""Fire planning: which fires of a schedule run, wait, or are recorded unrun.

Pure functions over plain values (an entry, its watermark, how many of its
runs are going or queued, two instants): no clock, no run store, no logging,
so every decision (jitter, catch-up, overlap, outage summaries, pauses) can
be tested by calling `plan()` directly. The registry feeds it jobs and the
dispatcher claims what it returns, the way APScheduler 4 keeps the schedule
calculation apart from its data stores and executors.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from styxcache.scheduler.clock import utc_from_timestamp
from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.runs import RunOutcome
from styxcache.scheduler.runstore import RunRecord, run_key

__all__ = [
    "MAX_ENUMERATED",
    "Fire",
    "FireAction",
    "Job",
    "Late",
    "Plan",
    "fanout_items",
    "item_key",
    "jitter",
    "plan",
    "sync_rows",
]

# Fires listed one by one per wake and entry; older ones are summarised.
MAX_ENUMERATED = 10_000
# Item keys longer than this are replaced by a digest of the item.
_MAX_ITEM_KEY = 80

FireAction = Literal["start", "queue"]
"""`start`: hand to the executor now; `queue`: wait for the running one."""


@dataclasses.dataclass(slots=True)
class Fire:
    """One claimed run on its way to (or back from) the executor."""

    record: RunRecord
    entry: ScheduleEntry
    item: dict[str, Any] = dataclasses.field(default_factory=dict)
    expand: bool = False
    future: cf.Future[RunOutcome] | None = None
    action: FireAction = "start"
    attempt: int = 1
    settled: bool = False


@dataclasses.dataclass(slots=True)
class Job:
    """Runtime state of one registered entry."""

    entry: ScheduleEntry
    learned: float
    watermark: float = 0.0
    synced: bool = False
    fresh: bool = True
    version: int = 0
    # The heap holds a cheap lower bound, not the next fire: computed on pop.
    lazy: bool = False
    running: int = 0
    queued: deque[Fire] = dataclasses.field(default_factory=deque)


@dataclasses.dataclass(frozen=True, slots=True)
class Late:
    """Fires of one plan that were due longer ago than the grace window."""

    count: int
    newest_due: float


@dataclasses.dataclass(slots=True)
class Plan:
    """What `plan()` decided for one job.

    Attributes:
        records: Rows to claim: the fires that run or queue (`planned` /
            `running`) and those recorded as skipped, coalesced or missed.
        fires: The fires to start or queue, in due order; each shares its
            record with `records`.
        watermark: The job's new watermark (its newest enumerated fire).
        late: Set when some fires were late (the caller logs it).
    """

    records: list[RunRecord] = dataclasses.field(default_factory=list)
    fires: list[Fire] = dataclasses.field(default_factory=list)
    watermark: float = 0.0
    late: Late | None = None


def jitter(entry: ScheduleEntry, nominal: float) -> float:
    """Return the deterministic delay of one fire (0 without `jitter_seconds`).

    Args:
        entry: The entry.
        nominal: The fire's nominal instant.

    Returns:
        A delay in `[0, min(jitter_seconds, period))`, the same for the same
        entry name and instant on every scheduler.
    """
    if entry.jitter_seconds <= 0:
        return 0.0
    nxt = entry.trigger.next_after(nominal)
    period = (nxt - nominal) if nxt is not None else entry.jitter_seconds
    digest = hashlib.blake2b(
        f"{entry.name}|{nominal!r}".encode(), digest_size=8
    ).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    # fraction < 1, so the delay stays strictly below the period.
    return fraction * min(entry.jitter_seconds, period)


def record(
    entry: ScheduleEntry,
    fire: tuple[float, float],
    state: str,
    reason: str,
    ended: float | None,
) -> RunRecord:
    """Build the row of one fire, given as `(nominal, due)`."""
    nominal, due = fire
    return RunRecord(
        key=run_key(entry.name, nominal),
        entry=entry.name,
        nominal=nominal,
        state=state,
        reason=reason,
        due=due,
        ended=ended,
    )


def enumerate_due(
    entry: ScheduleEntry, watermark: float, now: float, horizon: float
) -> tuple[list[tuple[float, float]], RunRecord | None]:
    """List the `(nominal, due)` fires after `watermark` due by `horizon`.

    Returns:
        The fires, and a summary row when an outage left more than
        `MAX_ENUMERATED` of them (only the newest are listed then).
    """
    due_fires: list[tuple[float, float]] = []
    cursor = watermark
    skipped_from: float | None = None
    skipped = 0
    while True:
        # next_after is memoised per trigger and instant, so a herd of
        # entries sharing one expression costs one computation.
        nominal = entry.trigger.next_after(cursor)
        if nominal is None:
            break
        cursor = nominal
        due = nominal + jitter(entry, nominal)
        if due > horizon:
            break
        due_fires.append((nominal, due))
        if len(due_fires) >= MAX_ENUMERATED:
            # A very long outage: keep one summary row, then resume an
            # hour before the grace window so the newest fires are exact.
            if skipped_from is None:
                skipped_from = due_fires[0][0]
            skipped += len(due_fires)
            cursor = max(due_fires[-1][0], now - entry.grace_seconds - 3600)
            due_fires.clear()
    if skipped_from is None:
        return due_fires, None
    summary = RunRecord(
        key=run_key(entry.name, skipped_from, "older"),
        entry=entry.name,
        nominal=skipped_from,
        item="older",
        state="missed" if entry.catchup == "none" else "coalesced",
        reason=f"{skipped}+ fires from an outage, summarised in one row",
        ended=now,
    )
    return due_fires, summary


def plan(
    job: Job, now: float, horizon: float, *, paused_since: float | None = None
) -> Plan:
    """Decide the fate of a job's fires due by `horizon`.

    Reads the job (entry, watermark, running and queued counts) and never
    changes it: the caller applies `Plan.watermark` and claims the records.

    Args:
        job: The job.
        now: The current instant (decides what is late).
        horizon: Fires due by then are planned (now plus the claim lead).
        paused_since: When an operator paused the entry; its fires are
            then recorded `skipped`.

    Returns:
        The plan.
    """
    entry = job.entry
    due_fires, summary = enumerate_due(entry, job.watermark, now, horizon)
    result = Plan(watermark=job.watermark)
    if summary is not None:
        result.records.append(summary)
    if not due_fires:
        return result
    result.watermark = due_fires[-1][0]
    if paused_since is not None:
        reason = (
            "paused by an operator since"
            f" {utc_from_timestamp(paused_since).isoformat(timespec='seconds')}"
            " (styxcache schedule resume)"
        )
        result.records.extend(
            record(entry, fire, "skipped", reason, now) for fire in due_fires
        )
        return result
    late = [f for f in due_fires if now - f[1] > entry.grace_seconds]
    if late:
        result.late = Late(len(late), late[-1][1])
    to_run = _catch_up(entry, due_fires, late, now, result.records)
    _overlap(job, to_run, now, result)
    return result


def _catch_up(
    entry: ScheduleEntry,
    due_fires: list[tuple[float, float]],
    late: list[tuple[float, float]],
    now: float,
    records: list[RunRecord],
) -> list[tuple[float, float]]:
    """Apply `catchup`: return the fires to run, record the others."""
    if entry.catchup == "latest":
        newest = utc_from_timestamp(due_fires[-1][0]).isoformat()
        records.extend(
            record(entry, fire, "coalesced", f"coalesced into {newest}", now)
            for fire in due_fires[:-1]
        )
        return due_fires[-1:]
    if entry.catchup == "all":
        # The newest max_catchup fires run oldest first; older ones are missed.
        reason = f"beyond max_catchup={entry.max_catchup}"
        records.extend(
            record(entry, fire, "missed", reason, now)
            for fire in due_fires[: -entry.max_catchup]
        )
        return due_fires[-entry.max_catchup :]
    on_time = [f for f in due_fires if now - f[1] <= entry.grace_seconds]
    records.extend(
        record(entry, fire, "missed", "late and catchup=none", now) for fire in late
    )
    records.extend(
        record(entry, fire, "coalesced", "a newer on-time fire ran", now)
        for fire in on_time[:-1]
    )
    return on_time[-1:]


def _overlap(
    job: Job, to_run: list[tuple[float, float]], now: float, result: Plan
) -> None:
    """Apply `overlap`: start, queue or skip each fire that is to run."""
    entry = job.entry
    prior_busy = job.running > 0 or bool(job.queued)
    busy = prior_busy
    capacity = max(entry.max_catchup, 1)
    queue_room = capacity - len(job.queued)
    for fire in to_run:
        action: FireAction = "start"
        if entry.overlap == "forbid" and prior_busy:
            reason = "previous run still running"
            result.records.append(record(entry, fire, "skipped", reason, now))
            continue
        if entry.overlap != "allow" and busy:
            if queue_room <= 0:
                reason = f"overlap queue full ({capacity} waiting)"
                result.records.append(record(entry, fire, "skipped", reason, now))
                continue
            queue_room -= 1
            action = "queue"
        # Later fires of the same batch wait for this one (catch-up in order).
        busy = busy or entry.overlap != "allow"
        row = record(entry, fire, "planned", "", None)
        if action == "start":
            # A fire claimed ahead of time starts at its due instant.
            due = fire[1]
            row.state, row.started, row.lateness = (
                "running",
                max(now, due),
                max(now - due, 0.0),
            )
        expand = entry.expand_from is not None
        if expand:
            row.key = run_key(entry.name, fire[0], "*")
            row.item = "*"
        result.records.append(row)
        result.fires.append(Fire(record=row, entry=entry, expand=expand, action=action))


def sync_rows(jobs: Iterable[Job]) -> list[tuple[str, str, bool, float]]:
    """Return the rows a run store's `sync_entries` needs for these jobs."""
    return [
        (j.entry.name, j.entry.trigger.signature, j.entry.enabled, j.learned)
        for j in jobs
    ]


def item_key(item: Mapping[str, Any]) -> str:
    """Return a fan-out item's stable key.

    Args:
        item: The context dict; an explicit `key` entry wins.

    Returns:
        The key: `key`, or canonical JSON of the item, or a digest of it
        when long.
    """
    if "key" in item:
        return str(item["key"])
    text = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) <= _MAX_ITEM_KEY:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def fanout_items(
    entry: ScheduleEntry, items: Any
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Check what `expand_from` returned and key each item.

    Args:
        entry: The entry (its `max_fanout`).
        items: The returned value.

    Returns:
        `(key, item)` pairs in order, and the keys of dropped duplicates.

    Raises:
        TypeError: If `items` is not a list of dicts.
        ValueError: If there are more than `max_fanout` items.
    """
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise TypeError(
            f"expand_from must return a list of dicts, got {type(items).__name__}"
        )
    if len(items) > entry.max_fanout:
        raise ValueError(
            f"expand_from returned {len(items)} items; max_fanout is {entry.max_fanout}"
        )
    seen: set[str] = set()
    result: list[tuple[str, dict[str, Any]]] = []
    dropped: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise TypeError(f"expand_from returned a {type(item).__name__}, not a dict")
        key = item_key(item)
        if key in seen:
            dropped.append(key)
            continue
        seen.add(key)
        result.append((key, dict(item)))
    return result, dropped
