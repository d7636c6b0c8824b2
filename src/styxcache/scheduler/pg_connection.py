"""The connection of the PostgreSQL run store: leases, outages, retries.

`LeasedConnection` holds one connection behind a lock and the scheduler's
row in `schedulers`, whose `lease_expires` a background thread pushes
forward every third of the lease. A lost connection turns into
`StoreUnavailableError` with one warning per outage (the store claims
nothing until the database answers again); transient conflicts between
concurrent transactions are retried. `PostgresStore` builds the run store
on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from styxcache._system import HOST, owner_label
from styxcache.errors import StoreUnavailableError
from styxcache.scheduler.dsn import mask_dsn
from styxcache.scheduler.pg_schema import migrate

__all__ = ["LeasedConnection"]

# Log as the store: operators know that logger name from the docs.
_log = logging.getLogger("styxcache.scheduler.pg_store")

# Transient conflicts between concurrent transactions are retried this often.
_CONFLICT_RETRIES = 5


class LeasedConnection:
    """A scheduler's connection to the run store database, with its lease.

    Thread-safe: one connection behind a lock. Subclasses run their
    statements through `_retrying` (or `_tx`) and may keep writes made
    during an outage, sent by `_flush` once the database is back.
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
        self.owner = owner_label()
        self._s = sql.Identifier(schema)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._connected_at = 0.0
        self._renewed_at = 0.0
        self._down_since: float | None = None
        self._closed = threading.Event()
        self._prepare()
        with self._lock:
            self._ensure()
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(
                target=self._beat, name="styxcache-pg-lease", daemon=True
            )
            self._thread.start()

    def _prepare(self) -> None:
        """Set up subclass state; runs before the heartbeat thread starts."""

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
            migrate(conn, self.schema, self.where)
            now = self._clock()
            conn.execute(
                self._q(
                    "INSERT INTO {s}.schedulers VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (owner) DO UPDATE"
                    " SET lease_expires = EXCLUDED.lease_expires"
                ),
                (
                    self.owner,
                    HOST,
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

    def _flush(self) -> None:
        """Send writes kept while the database was out of reach (none here)."""

    def _release(self) -> None:
        """Give up the lease, disconnect and stop the heartbeat."""
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
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def available(self) -> bool:
        """Whether the last attempt to reach the database succeeded."""
        return self._down_since is None
