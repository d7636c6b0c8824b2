"""A PostgreSQL run store that several schedulers, on several hosts, share.

The same contract as the SQLite `Ledger` (`RunStore`): the primary key of
`runs` is the run key and a fire is dispatched only by the scheduler whose
`INSERT ... ON CONFLICT DO NOTHING` created the row, so each fire (and each
fan-out item) runs once across every scheduler sharing the database.

Failover works by leases (`pg_connection`): a scheduler whose lease has
lapsed is taken for dead and a survivor takes over its runs
(`pg_takeover`). Writes to a row are fenced by its owner, so a scheduler
that lost a row cannot overwrite its new owner's. Results of runs that end
while the database is out of reach are kept and written once it is back.

A database outage must not look like dead schedulers: a store takes over
runs only after it has itself been connected for a whole lease, which gives
every live scheduler time to renew its lease first.

Credentials come from the DSN, a service file or the `PG*` variables (libpq
reads them); only `mask_dsn` output ever reaches a log or an error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import psycopg
from psycopg import sql

from styxcache.errors import StoreUnavailableError
from styxcache.scheduler.pg_connection import LeasedConnection
from styxcache.scheduler.pg_schema import (
    RUN_COLUMN_TYPES,
    SCHEMA_VERSION,
    column_arrays,
    insert_runs,
    update_runs,
)
from styxcache.scheduler.pg_takeover import take_over
from styxcache.scheduler.runstore import (
    MUTABLE_FIELDS,
    EntryState,
    RunRecord,
    history_filters,
    next_entry_state,
    record_from_row,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

_log = logging.getLogger("styxcache.scheduler.pg_store")

_Conn: TypeAlias = "psycopg.Connection[dict[str, Any]]"


class PostgresStore(LeasedConnection):
    """Run store in PostgreSQL, shared by any number of schedulers.

    Thread-safe: one connection behind a lock. Every table lives in the
    PostgreSQL schema `schema`, so one database can hold separate stores.
    The constructor's arguments are those of `LeasedConnection`.

    Example:
        >>> store = PostgresStore("postgresql://sched@db.lab/styx")  # doctest: +SKIP
        >>> Scheduler.from_yaml("jobs.yaml", store=store)  # doctest: +SKIP
    """

    def _prepare(self) -> None:
        self._insert = insert_runs(self.schema)
        self._update = update_runs(self.schema, MUTABLE_FIELDS)
        self._pending: dict[str, RunRecord] = {}
        self._next_adopt = 0.0
        self._fenced: set[str] = set()

    def close(self, flush_timeout: float | None = None) -> None:
        """Write what is pending, give up the lease and disconnect.

        Results of runs that ended while the database was out of reach are
        retried for up to `flush_timeout` seconds (default: one lease): left
        unwritten, those runs would look lost to the other schedulers, which
        would run them again.

        Args:
            flush_timeout: Longest wait for the database, in seconds.
        """
        if self._closed.is_set():
            return
        limit = self.lease_seconds if flush_timeout is None else flush_timeout
        deadline = time.monotonic() + limit
        self._flush()
        while self._pending and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            self._flush()
        self._release()
        if self._pending:
            _log.warning(
                "closing the run store %s with %d run result(s) it could not"
                " write (the database is out of reach); other schedulers will"
                " take those runs for lost and retry them by their retries",
                self.where,
                len(self._pending),
            )

    # --------------------------------------------------------------- entries

    def sync_entries(
        self,
        entries: Iterable[tuple[str, str, bool, float]],
        restart: Iterable[str] = (),
    ) -> dict[str, EntryState]:
        """Record schedules; return their stored state (see `RunStore.sync_entries`)."""
        fresh = set(restart)
        wanted = list(entries)

        def work(conn: _Conn) -> dict[str, EntryState]:
            # Rare and small: serialise it rather than reason about races.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"styxcache-entries:{self.schema}",),
            )
            stored = {
                r["name"]: EntryState(
                    r["name"], r["signature"], r["since"], r["watermark"], r["enabled"]
                )
                for r in conn.execute(
                    self._q("SELECT * FROM {s}.entries WHERE name = ANY(%s)"),
                    ([w[0] for w in wanted],),
                )
            }
            result = {
                w[0]: next_entry_state(w, stored.get(w[0]), w[0] in fresh)
                for w in wanted
            }
            with conn.cursor() as cur:
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.entries VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET"
                        " signature = EXCLUDED.signature, since = EXCLUDED.since,"
                        " watermark = EXCLUDED.watermark, enabled = EXCLUDED.enabled"
                    ),
                    [dataclasses.astuple(state) for state in result.values()],
                )
            return result

        result: dict[str, EntryState] = self._retrying(work)
        return result

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume a schedule for every scheduler sharing the store.

        Args:
            name: Schedule name.
            paused: True to pause, False to resume.
            now: When (kept as the start of the pause).
        """

        def work(conn: _Conn) -> None:
            if paused:
                conn.execute(
                    self._q(
                        "INSERT INTO {s}.paused VALUES (%s, %s)"
                        " ON CONFLICT (name) DO NOTHING"
                    ),
                    (name, now),
                )
            else:
                conn.execute(self._q("DELETE FROM {s}.paused WHERE name = %s"), (name,))

        self._retrying(work)

    def paused_entries(self) -> dict[str, float]:
        """Return the paused schedules and since when.

        Returns:
            Schedule name to the Unix time it was paused.
        """

        def work(conn: _Conn) -> dict[str, float]:
            rows = conn.execute(self._q("SELECT name, since FROM {s}.paused"))
            return {str(r["name"]): float(r["since"]) for r in rows}

        result: dict[str, float] = self._retrying(work)
        return result

    # ------------------------------------------------------------------ runs

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Insert new runs; True for each key this call created (see `RunStore`).

        Raises:
            StoreUnavailableError: If the database cannot be reached; then
                nothing was claimed by this call.
        """
        for record in records:
            record.owner = self.owner
        # Sorted, so concurrent claims of overlapping keys lock rows in one
        # order and cannot deadlock.
        ordered = sorted(records, key=lambda r: r.key)
        arrays = column_arrays(ordered, RUN_COLUMN_TYPES)
        insert = self._insert
        marks = sorted((watermarks or {}).items())

        def work(conn: _Conn) -> set[str]:
            self._renew(conn, force=False)
            won: set[str] = set()
            if ordered:
                won = {r["key"] for r in conn.execute(insert, arrays)}
            rest = [r.key for r in ordered if r.key not in won]
            if rest:
                # A commit whose answer was lost leaves our own rows behind:
                # they are still ours.
                won |= {
                    r["key"]
                    for r in conn.execute(
                        self._q(
                            "SELECT key FROM {s}.runs WHERE key = ANY(%s)"
                            " AND owner = %s"
                        ),
                        (rest, self.owner),
                    )
                }
            if marks:
                conn.execute(
                    self._q(
                        "UPDATE {s}.entries SET watermark = GREATEST(watermark, v.w)"
                        " FROM unnest(%s::text[], %s::float8[]) AS v(n, w)"
                        " WHERE name = v.n"
                    ),
                    ([n for n, _ in marks], [w for _, w in marks]),
                )
            return won

        won: set[str] = self._retrying(work)
        return [r.key in won for r in records]

    def update(self, records: Sequence[RunRecord]) -> None:
        """Write the mutable fields of runs this scheduler owns.

        While the database is out of reach the writes are kept and sent
        when it is back (each is the run's latest state, so order within a
        key is all that matters). Rows another scheduler took over are left
        alone, with a warning.

        Args:
            records: Rows to update, matched by key.
        """
        if not records:
            return
        with self._lock:
            for record in records:
                self._pending[record.key] = dataclasses.replace(record)
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            if not self._pending or self._closed.is_set():
                return
            batch = list(self._pending.values())
            arrays = column_arrays(batch, ("key", *MUTABLE_FIELDS))
            statement = self._update
            try:
                with self._tx() as conn:
                    written = {
                        r["key"] for r in conn.execute(statement, [*arrays, self.owner])
                    }
            except StoreUnavailableError:
                return  # kept in _pending; the outage was reported once
            for record in batch:
                if self._pending.get(record.key) is record:
                    del self._pending[record.key]
            lost = [r.key for r in batch if r.key not in written]
            fresh = [k for k in lost if k not in self._fenced]
            self._fenced.update(lost)
        if fresh:
            _log.warning(
                "%d run(s) were taken over by another scheduler while this one"
                " could not renew its lease; their results here are not recorded"
                " (first: %s)",
                len(fresh),
                fresh[0],
            )

    def get(self, key: str) -> RunRecord | None:
        """Return one run by key.

        Args:
            key: Run key.

        Returns:
            The record, or None.
        """

        def work(conn: _Conn) -> RunRecord | None:
            row = conn.execute(
                self._q("SELECT * FROM {s}.runs WHERE key = %s"), (key,)
            ).fetchone()
            return record_from_row(row) if row is not None else None

        result: RunRecord | None = self._retrying(work)
        return result

    def attempt(self, key: str) -> int | None:
        """Return which attempt of a run the store last started (1 = first).

        Args:
            key: Run key.

        Returns:
            The attempt, or None for an unknown key.
        """

        def work(conn: _Conn) -> int | None:
            row = conn.execute(
                self._q("SELECT attempt FROM {s}.runs WHERE key = %s"), (key,)
            ).fetchone()
            return int(row["attempt"]) if row is not None else None

        result: int | None = self._retrying(work)
        return result

    def history(
        self,
        *,
        entry: str | None = None,
        state: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Return runs, newest nominal time first (see `RunStore.history`)."""
        columns, params = history_filters(entry, state)
        clauses = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns]
        where = (
            sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses)
            if clauses
            else sql.SQL("")
        )
        # Byte order for the tie-break, as SQLite compares text.
        statement = sql.SQL(
            'SELECT * FROM {s}.runs {where} ORDER BY nominal DESC, key COLLATE "C" DESC'
        ).format(s=self._s, where=where)
        if limit is not None:
            statement += sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))

        def work(conn: _Conn) -> list[RunRecord]:
            return [record_from_row(r) for r in conn.execute(statement, params)]

        result: list[RunRecord] = self._retrying(work)
        return result

    def count_by_state(self, entry: str | None = None) -> dict[str, int]:
        """Return how many runs are in each state.

        Args:
            entry: Only this schedule.

        Returns:
            State to count (states with no rows are left out).
        """

        def work(conn: _Conn) -> dict[str, int]:
            if entry is None:
                rows = conn.execute(
                    self._q("SELECT state, count(*) AS n FROM {s}.runs GROUP BY state")
                )
            else:
                rows = conn.execute(
                    self._q(
                        "SELECT state, count(*) AS n FROM {s}.runs"
                        " WHERE entry = %s GROUP BY state"
                    ),
                    (entry,),
                )
            return {r["state"]: int(r["n"]) for r in rows}

        result: dict[str, int] = self._retrying(work)
        return result

    # -------------------------------------------------------------- failover

    def recover_orphans(self, now: float) -> int:
        """Mark running/planned runs of schedulers whose lease lapsed interrupted.

        Schedulers that restart lost runs use `adopt_orphans` instead.

        Args:
            now: Current Unix time.

        Returns:
            How many runs were marked.
        """
        return self._take_over(now, None)[1]

    def adopt_orphans(
        self, now: float, retries: Mapping[str, int]
    ) -> list[tuple[RunRecord, int]]:
        """Take over runs of schedulers whose lease lapsed.

        Checks at most every third of a lease, and only once this store has
        been connected for a whole lease (after an outage every live
        scheduler first gets the chance to renew). Only runs of the named
        schedules are touched. A `running` row is restarted here while its
        attempt is within the schedule's `retries`, else marked
        `interrupted`; a `planned` (queued) row never started and is started
        here as it is.

        Args:
            now: Current Unix time (the scheduler's clock).
            retries: Schedule name to its `retries`.

        Returns:
            `(record, attempt)` of each run now owned here and to be started.
        """
        with self._lock:
            if now < self._next_adopt or not retries:
                return []
            if self._conn is None or now - self._connected_at < self.lease_seconds:
                return []
            self._next_adopt = now + self.lease_seconds / 3
        return self._take_over(now, retries)[0]

    def _take_over(
        self, now: float, retries: Mapping[str, int] | None
    ) -> tuple[list[tuple[RunRecord, int]], int]:
        def work(conn: _Conn) -> tuple[list[tuple[RunRecord, int]], int]:
            self._renew(conn)
            return take_over(conn, self.schema, self.owner, now, retries)

        adopted, marked = self._retrying(work)
        if marked:
            _log.warning(
                "marked %d run(s) of schedulers whose lease lapsed as interrupted",
                marked,
            )
        if adopted:
            _log.warning(
                "took over %d run(s) of schedulers whose lease lapsed (first: %s)",
                len(adopted),
                adopted[0][0].key,
            )
        return adopted, marked
