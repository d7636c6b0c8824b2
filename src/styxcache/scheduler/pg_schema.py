"""The tables of the PostgreSQL run store, their versions and upgrades.

A store's tables live in one PostgreSQL schema with a `schema_version`
table; `migrate` brings it to `SCHEMA_VERSION` under an advisory lock, so
several schedulers starting together upgrade it once, and refuses a
database that a newer styxcache has already upgraded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "RUN_COLUMN_TYPES",
    "SCHEMA_VERSION",
    "column_arrays",
    "insert_runs",
    "migrate",
    "typed_arrays",
    "update_runs",
]

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

RUN_COLUMN_TYPES: dict[str, str] = {
    "key": "text",
    "entry": "text",
    "nominal": "float8",
    "item": "text",
    "state": "text",
    "reason": "text",
    "due": "float8",
    "started": "float8",
    "ended": "float8",
    "lateness": "float8",
    "error": "text",
    "hits": "int4",
    "misses": "int4",
    "owner": "text",
}
"""The `RunRecord` columns of `runs` and their PostgreSQL array element types."""


def typed_arrays(columns: Iterable[str]) -> sql.Composed:
    """Build `%s::type[], ...` for sending one array per run column.

    Many rows go to the server as one array per column, unpacked there by
    `unnest`: one statement whatever the number of rows.

    Args:
        columns: Names from `RUN_COLUMN_TYPES`.

    Returns:
        The placeholders, comma-separated.
    """
    return sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL(RUN_COLUMN_TYPES[c])) for c in columns
    )


def column_arrays(rows: Sequence[object], columns: Iterable[str]) -> list[list[Any]]:
    """Turn rows into one list of values per column, for `typed_arrays`.

    Args:
        rows: Objects with the columns as attributes (`RunRecord`s).
        columns: Which attributes, in order.

    Returns:
        The value lists.
    """
    return [[getattr(row, c) for row in rows] for c in columns]


def insert_runs(schema: str) -> sql.Composed:
    """The claim statement: insert runs (one array per column), skip known keys.

    Args:
        schema: The store's PostgreSQL schema.

    Returns:
        A statement returning the keys it inserted.
    """
    columns = list(RUN_COLUMN_TYPES)
    return sql.SQL(
        "INSERT INTO {s}.runs ({cols}) SELECT * FROM unnest({arrays})"
        " ON CONFLICT (key) DO NOTHING RETURNING key"
    ).format(
        s=sql.Identifier(schema),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        arrays=typed_arrays(columns),
    )


def update_runs(schema: str, columns: Sequence[str]) -> sql.Composed:
    """The fenced update: write `columns` of runs still owned by the writer.

    Its parameters are the `column_arrays` of `("key", *columns)` and then
    the owner.

    Args:
        schema: The store's PostgreSQL schema.
        columns: The columns to write (not `key`).

    Returns:
        A statement returning the keys it wrote.
    """
    names = ("key", *columns)
    return sql.SQL(
        "UPDATE {s}.runs SET {sets} FROM unnest({arrays}) AS v({names})"
        " WHERE runs.key = v.key AND runs.owner = %s RETURNING runs.key"
    ).format(
        s=sql.Identifier(schema),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = v.{c}").format(c=sql.Identifier(c)) for c in columns
        ),
        arrays=typed_arrays(names),
        names=sql.SQL(", ").join(sql.Identifier(c) for c in names),
    )


def migrate(conn: psycopg.Connection[dict[str, Any]], schema: str, where: str) -> None:
    """Create or upgrade the store's tables in `schema`.

    Args:
        conn: An autocommit connection.
        schema: The PostgreSQL schema (a plain identifier).
        where: The database, safe to log (for messages).

    Raises:
        RuntimeError: If the schema is newer than this code knows.
    """
    ident = sql.Identifier(schema)

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(s=ident)

    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            (f"styxcache-schema:{schema}",),
        )
        conn.execute(q("CREATE SCHEMA IF NOT EXISTS {s}"))
        conn.execute(
            q(
                "CREATE TABLE IF NOT EXISTS {s}.schema_version"
                " (version INTEGER NOT NULL)"
            )
        )
        row = conn.execute(
            q("SELECT max(version) AS v FROM {s}.schema_version")
        ).fetchone()
        have = int(row["v"]) if row and row["v"] is not None else 0
        if have > SCHEMA_VERSION:
            raise RuntimeError(
                f"the run store in schema {schema!r} of {where} has"
                f" schema version {have}; this styxcache knows up to"
                f" {SCHEMA_VERSION}: upgrade styxcache on this host"
            )
        for version in range(have + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(q(statement))
            conn.execute(q("INSERT INTO {s}.schema_version VALUES (%s)"), (version,))
            _log.info(
                "run store %s: schema %r upgraded to version %d",
                where,
                schema,
                version,
            )
