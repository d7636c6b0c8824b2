"""Failover of the PostgreSQL run store: taking over runs of silent schedulers.

A scheduler whose lease lapsed is taken for dead. Its `running` and
`planned` rows are locked with `FOR UPDATE SKIP LOCKED` (two survivors never
take the same row) and each is either restarted by the survivor, while the
entry's `retries` allow, or marked `interrupted`. `judge_orphan` is the rule,
`take_over` applies it inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from styxcache.scheduler.runstore import RunRecord, record_from_row

__all__ = ["judge_orphan", "take_over"]

# Scheduler rows gone this long, with no runs left to take over, are deleted.
_FORGET_AFTER = 86400.0


def judge_orphan(
    record: RunRecord,
    attempt: int,
    retries: Mapping[str, int] | None,
    now: float,
    owner: str,
) -> int | None:
    """Decide what becomes of a run whose scheduler stopped renewing its lease.

    The record is updated in place: to `running` under `owner` when it is
    taken over, else to `interrupted`. A `planned` run never started and is
    started as it is; a `running` one is restarted while its attempt is
    within the entry's retries.

    Args:
        record: The orphaned run (its `owner` is the dead scheduler).
        attempt: Which attempt the dead scheduler was running (1 = first).
        retries: Schedule name to its `retries`; None only marks runs
            interrupted, never takes them over.
        now: Current Unix time.
        owner: The survivor taking over.

    Returns:
        The attempt the survivor starts, or None if the run was interrupted.
    """
    dead = record.owner
    allowed = retries.get(record.entry, 0) if retries is not None else 0
    if retries is not None and record.state == "planned":
        record.reason = f"queued by {dead}, which stopped renewing its lease"
    elif retries is not None and attempt <= allowed:
        record.reason = (
            f"attempt {attempt} lost: scheduler {dead} stopped renewing"
            f" its lease; retry {attempt} of {allowed} follows"
        )
        attempt += 1
    else:
        record.state, record.ended = "interrupted", now
        record.reason = (
            f"the scheduler that ran it ({dead}) stopped renewing its lease"
        ) + (f" (no retries left of {allowed})" if allowed else "")
        return None
    record.state, record.owner = "running", owner
    record.started, record.ended, record.error = now, None, ""
    due = record.due if record.due is not None else record.nominal
    record.lateness = max(now - due, 0.0)
    return attempt


def take_over(
    conn: psycopg.Connection[dict[str, Any]],
    schema: str,
    owner: str,
    now: float,
    retries: Mapping[str, int] | None,
) -> tuple[list[tuple[RunRecord, int]], int]:
    """Take over or interrupt the runs of schedulers whose lease lapsed.

    Args:
        conn: A connection inside the caller's transaction.
        schema: The store's PostgreSQL schema.
        owner: The survivor (this store's owner).
        now: Current Unix time (the scheduler's clock).
        retries: Schedule name to its `retries`: only runs of these
            schedules are touched. None: every schedule, interrupt only.

    Returns:
        `(record, attempt)` of each run now owned by `owner` and to be
        started, and how many runs were marked interrupted.
    """
    ident = sql.Identifier(schema)

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(s=ident)

    names = list(retries) if retries is not None else None
    rows = conn.execute(
        q(
            "SELECT r.* FROM {s}.runs r"
            " LEFT JOIN {s}.schedulers o ON o.owner = r.owner"
            " WHERE r.state IN ('running', 'planned') AND r.owner <> %s"
            " AND (%s::text[] IS NULL OR r.entry = ANY(%s::text[]))"
            " AND (o.owner IS NULL OR o.lease_expires < %s)"
            # At most 1000 per pass; the next pass takes the rest.
            " ORDER BY r.nominal, r.key LIMIT 1000"
            " FOR UPDATE OF r SKIP LOCKED"
        ),
        (owner, names, names, now),
    ).fetchall()
    adopted: list[tuple[RunRecord, int]] = []
    marked = 0
    for row in rows:
        record = record_from_row(row)
        attempt = judge_orphan(record, int(row["attempt"]), retries, now, owner)
        if attempt is None:
            conn.execute(
                q(
                    "UPDATE {s}.runs SET state = %s, ended = %s, reason = %s"
                    " WHERE key = %s"
                ),
                (record.state, record.ended, record.reason, record.key),
            )
            marked += 1
            continue
        conn.execute(
            q(
                "UPDATE {s}.runs SET state = 'running', owner = %s,"
                " started = %s, ended = NULL, error = '', lateness = %s,"
                " reason = %s, attempt = %s WHERE key = %s"
            ),
            (owner, now, record.lateness, record.reason, attempt, record.key),
        )
        adopted.append((record, attempt))
    conn.execute(
        q(
            "DELETE FROM {s}.schedulers o WHERE o.lease_expires < %s"
            " AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.owner = o.owner"
            " AND r.state IN ('running', 'planned'))"
        ),
        (now - _FORGET_AFTER,),
    )
    return adopted, marked
