"""A PostgreSQL run store that several schedulers, on several hosts, share.

The same contract as the SQLite `Ledger`: the primary key of `runs` is the
run key and a fire is dispatched only by the scheduler whose `INSERT ... ON
CONFLICT DO NOTHING` created the row, so each fire (and each fan-out item)
runs once across every scheduler sharing the database.

Failover works by leases. Each store has a row in `schedulers` whose
`lease_expires` a background thread pushes forward every third of the lease.
A scheduler whose lease has lapsed is taken for dead: a survivor takes over
its `running` rows (`SELECT ... FOR UPDATE SKIP LOCKED`, so two survivors
never take the same row) and restarts them while the entry's `retries`
allow, else marks them `interrupted`. Writes to a row are fenced by its
owner, so a scheduler that lost a row cannot overwrite its new owner's.

A database outage must not look like dead schedulers: a store takes over
runs only after it has itself been connected for a whole lease, which gives
every live scheduler time to renew its lease first.

Credentials come from the DSN, a service file or the `PG*` variables (libpq
reads them); only `mask_dsn` output ever reaches a log or an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from styxcache.scheduler.ledger import EntryState, RunRecord
from styxcache.scheduler.stores import StoreUnavailableError, mask_dsn

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

_log = logging.getLogger("styxcache.scheduler.pg_store")

# Each step upgrades the schema by one version; never edit a released step,
# append a new one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.runs (
        key TEXT PRIMARY KEY,
        entry TEXT NOT NULL,
        nominal DOUBLE PRECISION NOT NULL,
        item TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        due DOUBLE PRECISION,
        started DOUBLE PRECISION,
        ended DOUBLE PRECISION,
        lateness DOUBLE PRECISION,
        error TEXT NOT NULL DEFAULT '',
        hits INTEGER,
        misses INTEGER,
        owner TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX runs_by_entry ON {s}.runs (entry, nominal);
    CREATE INDEX runs_active ON {s}.runs (owner) WHERE state IN ('running', 'planned');
    CREATE TABLE {s}.entries (
        name TEXT PRIMARY KEY,
        signature TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        watermark DOUBLE PRECISION NOT NULL,
        enabled BOOLEAN NOT NULL
    );
    CREATE TABLE {s}.schedulers (
        owner TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started DOUBLE PRECISION NOT NULL,
        lease_expires DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: paused schedules survive restarts and are shared by every replica.
    """
    CREATE TABLE {s}.paused (
        name TEXT PRIMARY KEY,
        since DOUBLE PRECISION NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "text"),
    ("entry", "text"),
    ("nominal", "float8"),
    ("item", "text"),
    ("state", "text"),
    ("reason", "text"),
    ("due", "float8"),
    ("started", "float8"),
    ("ended", "float8"),
    ("lateness", "float8"),
    ("error", "text"),
    ("hits", "int4"),
    ("misses", "int4"),
    ("owner", "text"),
)
_MUTABLE = (
    "state",
    "reason",
    "started",
    "ended",
    "lateness",
    "error",
    "hits",
    "misses",
)
_TYPES = dict(_RUN_COLUMNS)
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))
# Transient conflicts between concurrent transactions are retried this often.
_CONFLICT_RETRIES = 5


class PostgresStore:
    """Run store in PostgreSQL, shared by any number of schedulers.

    Thread-safe: one connection behind a lock. Every table lives in the
    PostgreSQL schema `schema`, so one database can hold separate stores.

    Example:
        >>> store = PostgresStore("postgresql://sched@db.lab/styx")  # doctest: +SKIP
        >>> Scheduler.from_yaml("jobs.yaml", store=store)  # doctest: +SKIP
    """

    def __init__(
        self,
        dsn: str = "",
        *,
        schema: str = "styxcache",
        lease_seconds: float = 30.0,
        heartbeat: bool = True,
        clock: Callable[[], float] | None = None,
        connect_timeout: int = 5,
    ) -> None:
        """Connect, create or upgrade the schema, and register this scheduler.

        Args:
            dsn: libpq URL or `key=value` string; empty uses the `PG*`
                environment variables (and `PGSERVICE` / service files).
            schema: PostgreSQL schema holding the tables (created if absent).
            lease_seconds: How long this scheduler counts as alive after its
                last heartbeat; runs of a scheduler silent for longer are
                taken over by the others. Longer leases ride out longer
                network trouble, shorter ones fail over sooner.
            heartbeat: Renew the lease from a background thread every third
                of `lease_seconds` (tests turn it off and call
                `heartbeat()` under a fake clock).
            clock: Wall-clock source for leases (default `time.time`); it
                must agree, within a fraction of the lease, with the other
                schedulers' clocks.
            connect_timeout: Seconds to wait for a connection, unless the
                DSN or `PGCONNECT_TIMEOUT` sets it.

        Raises:
            ValueError: For a bad schema name or lease.
            StoreUnavailableError: If the database cannot be reached.
            RuntimeError: If the database schema is newer than this code.
        """
        if not schema.isidentifier():
            raise ValueError(f"schema must be a plain identifier, got {schema!r}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        try:
            options = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise ValueError(
                f"not a valid PostgreSQL connection string: {mask_dsn(dsn)}"
            ) from None
        self._dsn = dsn
        self._secret = str(options.get("password") or "")
        self._connect_options: dict[str, Any] = {"application_name": "styxcache"}
        if "connect_timeout" not in options and "PGCONNECT_TIMEOUT" not in os.environ:
            self._connect_options["connect_timeout"] = connect_timeout
        self.where = mask_dsn(dsn)
        """The database, safe to log."""
        self.schema = schema
        self.lease_seconds = float(lease_seconds)
        self._clock = clock or time.time
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._s = sql.Identifier(schema)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._connected_at = 0.0
        self._renewed_at = 0.0
        self._down_since: float | None = None
        self._pending: dict[str, RunRecord] = {}
        self._next_adopt = 0.0
        self._fenced: set[str] = set()
        self._closed = threading.Event()
        with self._lock:
            self._ensure()
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(
                target=self._beat, name="styxcache-pg-lease", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------ connection

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def _ensure(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                row_factory=dict_row,
                **self._connect_options,
            )
        except psycopg.Error as exc:
            raise self._down(exc) from None
        try:
            self._migrate(conn)
            now = self._clock()
            conn.execute(
                self._q(
                    "INSERT INTO {s}.schedulers VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (owner) DO UPDATE"
                    " SET lease_expires = EXCLUDED.lease_expires"
                ),
                (
                    self.owner,
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    now + self.lease_seconds,
                ),
            )
        except psycopg.OperationalError as exc:
            conn.close()
            raise self._down(exc) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._connected_at = self._renewed_at = self._clock()
        if self._down_since is not None:
            _log.warning(
                "PostgreSQL run store %s is reachable again after %.1fs;"
                " claiming resumes (fires due meanwhile follow the catch-up rules)",
                self.where,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return conn

    def _migrate(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        with conn.transaction():
            # Several schedulers starting together upgrade the schema once.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"styxcache-schema:{self.schema}",),
            )
            conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {s}"))
            conn.execute(
                self._q(
                    "CREATE TABLE IF NOT EXISTS {s}.schema_version"
                    " (version INTEGER NOT NULL)"
                )
            )
            row = conn.execute(
                self._q("SELECT max(version) AS v FROM {s}.schema_version")
            ).fetchone()
            have = int(row["v"]) if row and row["v"] is not None else 0
            if have > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the run store in schema {self.schema!r} of {self.where} has"
                    f" schema version {have}; this styxcache knows up to"
                    f" {SCHEMA_VERSION}: upgrade styxcache on this host"
                )
            for version in range(have + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        conn.execute(self._q(statement))
                conn.execute(
                    self._q("INSERT INTO {s}.schema_version VALUES (%s)"), (version,)
                )
                _log.info(
                    "run store %s: schema %r upgraded to version %d",
                    self.where,
                    self.schema,
                    version,
                )

    def _down(self, exc: BaseException) -> StoreUnavailableError:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                _log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if self._secret:
            detail = detail.replace(self._secret, "***")
        message = (
            f"cannot reach the PostgreSQL run store {self.where}"
            f" ({type(exc).__name__}: {detail})"
        )
        if self._down_since is None:
            self._down_since = time.monotonic()
            _log.warning(
                "%s; not claiming fires until it is back", message
            )  # one warning per outage
        return StoreUnavailableError(message)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """Hold the lock and a transaction; a lost connection becomes unavailable."""
        with self._lock:
            if self._closed.is_set():
                raise StoreUnavailableError(f"the run store {self.where} is closed")
            conn = self._ensure()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:
                    raise self._down(exc) from None
                raise

    def _retrying(
        self, work: Callable[[psycopg.Connection[dict[str, Any]]], Any]
    ) -> Any:
        self._flush()
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with self._tx() as conn:
                    return work(conn)
            except (
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
            ):
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        return None  # pragma: no cover - the loop returns or raises

    def heartbeat(self) -> bool:
        """Renew this scheduler's lease now.

        Returns:
            True if the database took it.
        """
        try:
            with self._tx() as conn:
                self._renew(conn)
        except StoreUnavailableError:
            return False
        self._flush()
        return True

    def _renew(
        self, conn: psycopg.Connection[dict[str, Any]], *, force: bool = True
    ) -> None:
        now = self._clock()
        # Claims renew in passing only when the heartbeat is overdue: one
        # statement less per wake on the hot path.
        if not force and now - self._renewed_at < self.lease_seconds / 3:
            return
        conn.execute(
            self._q("UPDATE {s}.schedulers SET lease_expires = %s WHERE owner = %s"),
            (now + self.lease_seconds, self.owner),
        )
        self._renewed_at = now

    def _beat(self) -> None:
        interval = self.lease_seconds / 3
        while not self._closed.wait(interval):
            try:
                self.heartbeat()
            except Exception:
                _log.exception("run store lease renewal failed")

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
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                try:
                    self._conn.execute(
                        self._q(
                            "UPDATE {s}.schedulers SET lease_expires = 0"
                            " WHERE owner = %s"
                        ),
                        (self.owner,),
                    )
                except psycopg.Error:
                    _log.debug("could not release the lease", exc_info=True)
                self._conn.close()
            self._conn = None
            self._closed.set()
            if self._pending:
                _log.warning(
                    "closing the run store %s with %d run result(s) it could not"
                    " write (the database is out of reach); other schedulers will"
                    " take those runs for lost and retry them by their retries",
                    self.where,
                    len(self._pending),
                )
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def available(self) -> bool:
        """Whether the last attempt to reach the database succeeded."""
        return self._down_since is None

    # --------------------------------------------------------------- entries

    def sync_entries(
        self,
        entries: Iterable[tuple[str, str, bool, float]],
        restart: Iterable[str] = (),
    ) -> dict[str, EntryState]:
        """Record schedules and return their stored state (see `Ledger`).

        Args:
            entries: `(name, signature, enabled, now)` per schedule.
            restart: Names to start from `now` even if stored.

        Returns:
            The state of each named schedule after the update.
        """
        fresh = set(restart)
        wanted = list(entries)

        def work(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, EntryState]:
            # Rare and small: serialise it rather than reason about races.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"styxcache-entries:{self.schema}",),
            )
            stored = {
                r["name"]: r
                for r in conn.execute(
                    self._q("SELECT * FROM {s}.entries WHERE name = ANY(%s)"),
                    ([w[0] for w in wanted],),
                )
            }
            result: dict[str, EntryState] = {}
            rows: list[tuple[str, str, float, float, bool]] = []
            for name, signature, enabled, now in wanted:
                row = stored.get(name)
                if row is None:
                    state = EntryState(name, signature, now, now, enabled)
                else:
                    watermark, since = float(row["watermark"]), float(row["since"])
                    again = name in fresh or (enabled and not row["enabled"])
                    if again or row["signature"] != signature:
                        watermark = max(watermark, now)
                        since = max(since, now) if again else since
                    state = EntryState(name, signature, since, watermark, enabled)
                rows.append((name, signature, state.since, state.watermark, enabled))
                result[name] = state
            with conn.cursor() as cur:
                cur.executemany(
                    self._q(
                        "INSERT INTO {s}.entries VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET"
                        " signature = EXCLUDED.signature, since = EXCLUDED.since,"
                        " watermark = EXCLUDED.watermark, enabled = EXCLUDED.enabled"
                    ),
                    rows,
                )
            return result

        result: dict[str, EntryState] = self._retrying(work)
        return result

    def entry_states(self) -> dict[str, EntryState]:
        """Return every stored schedule state."""

        def work(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, EntryState]:
            return {
                r["name"]: EntryState(
                    r["name"], r["signature"], r["since"], r["watermark"], r["enabled"]
                )
                for r in conn.execute(self._q("SELECT * FROM {s}.entries"))
            }

        result: dict[str, EntryState] = self._retrying(work)
        return result

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume a schedule for every scheduler sharing the store.

        Args:
            name: Schedule name.
            paused: True to pause, False to resume.
            now: When (kept as the start of the pause).
        """

        def work(conn: psycopg.Connection[dict[str, Any]]) -> None:
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

        def work(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, float]:
            rows = conn.execute(self._q("SELECT name, since FROM {s}.paused"))
            return {str(r["name"]): float(r["since"]) for r in rows}

        result: dict[str, float] = self._retrying(work)
        return result

    # ------------------------------------------------------------------ runs

    def claim(
        self, records: Sequence[RunRecord], watermarks: dict[str, float] | None = None
    ) -> list[bool]:
        """Insert new runs; a key that already exists is not claimed.

        Args:
            records: Rows to insert (their `owner` is set to this store's).
            watermarks: Schedules whose watermark to raise in the same
                transaction.

        Returns:
            For each record, whether this call created it (and so owns it).

        Raises:
            StoreUnavailableError: If the database cannot be reached; then
                nothing was claimed by this call.
        """
        for record in records:
            record.owner = self.owner
        # Sorted, so concurrent claims of overlapping keys lock rows in one
        # order and cannot deadlock.
        ordered = sorted(records, key=lambda r: r.key)
        columns = [c for c, _ in _RUN_COLUMNS]
        arrays = [[getattr(r, c) for r in ordered] for c in columns]
        insert = sql.SQL(
            "INSERT INTO {s}.runs ({cols}) SELECT * FROM unnest({arrays})"
            " ON CONFLICT (key) DO NOTHING RETURNING key"
        ).format(
            s=self._s,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            arrays=sql.SQL(", ").join(
                sql.SQL("%s::{}[]").format(sql.SQL(_TYPES[c])) for c in columns
            ),
        )
        marks = sorted((watermarks or {}).items())

        def work(conn: psycopg.Connection[dict[str, Any]]) -> set[str]:
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
            columns = ("key", *_MUTABLE)
            arrays = [[getattr(r, c) for r in batch] for c in columns]
            statement = sql.SQL(
                "UPDATE {s}.runs SET {sets} FROM unnest({arrays}) AS v({names})"
                " WHERE runs.key = v.key AND runs.owner = %s RETURNING runs.key"
            ).format(
                s=self._s,
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = v.{c}").format(c=sql.Identifier(c)) for c in _MUTABLE
                ),
                arrays=sql.SQL(", ").join(
                    sql.SQL("%s::{}[]").format(sql.SQL(_TYPES[c])) for c in columns
                ),
                names=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            )
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

        def work(conn: psycopg.Connection[dict[str, Any]]) -> RunRecord | None:
            row = conn.execute(
                self._q("SELECT * FROM {s}.runs WHERE key = %s"), (key,)
            ).fetchone()
            return _record(row) if row is not None else None

        result: RunRecord | None = self._retrying(work)
        return result

    def attempt(self, key: str) -> int | None:
        """Return which attempt of a run the store last started (1 = first).

        Args:
            key: Run key.

        Returns:
            The attempt, or None for an unknown key.
        """

        def work(conn: psycopg.Connection[dict[str, Any]]) -> int | None:
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
        """Return runs, newest nominal time first.

        Args:
            entry: Only this schedule.
            state: Only this state.
            limit: At most this many rows (None for all).

        Returns:
            The records.
        """
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if entry is not None:
            clauses.append(sql.SQL("entry = %s"))
            params.append(entry)
        if state is not None:
            clauses.append(sql.SQL("state = %s"))
            params.append(state)
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

        def work(conn: psycopg.Connection[dict[str, Any]]) -> list[RunRecord]:
            return [_record(r) for r in conn.execute(statement, params)]

        result: list[RunRecord] = self._retrying(work)
        return result

    def count_by_state(self, entry: str | None = None) -> dict[str, int]:
        """Return how many runs are in each state.

        Args:
            entry: Only this schedule.

        Returns:
            State to count (states with no rows are left out).
        """

        def work(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, int]:
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
        names = list(retries) if retries is not None else None

        def work(
            conn: psycopg.Connection[dict[str, Any]],
        ) -> tuple[list[tuple[RunRecord, int]], int]:
            self._renew(conn)
            rows = conn.execute(
                self._q(
                    "SELECT r.* FROM {s}.runs r"
                    " LEFT JOIN {s}.schedulers o ON o.owner = r.owner"
                    " WHERE r.state IN ('running', 'planned') AND r.owner <> %s"
                    " AND (%s::text[] IS NULL OR r.entry = ANY(%s::text[]))"
                    " AND (o.owner IS NULL OR o.lease_expires < %s)"
                    " ORDER BY r.nominal, r.key LIMIT 1000"
                    " FOR UPDATE OF r SKIP LOCKED"
                ),
                (self.owner, names, names, now),
            ).fetchall()
            adopted: list[tuple[RunRecord, int]] = []
            marked = 0
            for row in rows:
                record = _record(row)
                attempt = int(row["attempt"])
                dead = record.owner
                if record.state == "planned" and retries is not None:
                    record.reason = (
                        f"queued by {dead}, which stopped renewing its lease"
                    )
                elif retries is not None and attempt <= retries.get(record.entry, 0):
                    allowed = retries.get(record.entry, 0)
                    record.reason = (
                        f"attempt {attempt} lost: scheduler {dead} stopped renewing"
                        f" its lease; retry {attempt} of {allowed} follows"
                    )
                    attempt += 1
                else:
                    allowed = retries.get(record.entry, 0) if retries else 0
                    record.state, record.ended = "interrupted", now
                    record.reason = (
                        f"the scheduler that ran it ({dead}) stopped renewing its lease"
                    ) + (f" (no retries left of {allowed})" if allowed else "")
                    conn.execute(
                        self._q(
                            "UPDATE {s}.runs SET state = %s, ended = %s, reason = %s"
                            " WHERE key = %s"
                        ),
                        (record.state, record.ended, record.reason, record.key),
                    )
                    marked += 1
                    continue
                record.state, record.owner = "running", self.owner
                record.started, record.ended, record.error = now, None, ""
                due = record.due if record.due is not None else record.nominal
                record.lateness = max(now - due, 0.0)
                conn.execute(
                    self._q(
                        "UPDATE {s}.runs SET state = 'running', owner = %s,"
                        " started = %s, ended = NULL, error = '', lateness = %s,"
                        " reason = %s, attempt = %s WHERE key = %s"
                    ),
                    (
                        self.owner,
                        now,
                        record.lateness,
                        record.reason,
                        attempt,
                        record.key,
                    ),
                )
                adopted.append((record, attempt))
            # Rows of schedulers gone for a day with nothing left to take over.
            conn.execute(
                self._q(
                    "DELETE FROM {s}.schedulers o WHERE o.lease_expires < %s"
                    " AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.owner = o.owner"
                    " AND r.state IN ('running', 'planned'))"
                ),
                (now - 86400.0,),
            )
            return adopted, marked

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


def _record(row: Mapping[str, Any]) -> RunRecord:
    return RunRecord(**{f: row[f] for f in _RECORD_FIELDS})
