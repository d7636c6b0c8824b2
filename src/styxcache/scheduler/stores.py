"""Choosing a run store from a setting, and what every shared store may raise.

`open_store("postgresql://...")` gives a `PostgresStore` (several schedulers
on several hosts); a folder gives the SQLite `Ledger` in it (one host only:
SQLite's locking is not reliable on a network filesystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "LEDGER_NAME",
    "StoreUnavailableError",
    "is_database_url",
    "mask_dsn",
    "open_store",
]

LEDGER_NAME = "ledger.sqlite3"
_SCHEMES = ("postgresql://", "postgres://")


class StoreUnavailableError(RuntimeError):
    """The run store's database cannot be reached right now.

    A scheduler that gets it claims nothing until the store answers again;
    fires that came due meanwhile are then handled by the catch-up rules.
    """


def is_database_url(spec: object) -> bool:
    """Tell whether a `state` setting names a PostgreSQL database.

    Args:
        spec: The setting.

    Returns:
        True for a `postgresql://` or `postgres://` string.
    """
    return isinstance(spec, str) and spec.startswith(_SCHEMES)


def mask_dsn(dsn: str) -> str:
    """Return a connection string that is safe to log (no password).

    Args:
        dsn: A libpq URL or `key=value` connection string.

    Returns:
        `host=... port=... dbname=... user=...` with every secret left out;
        the parts libpq would take from `PG*` variables or a service file
        are not shown.
    """
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts: dict[str, Any] = conninfo_to_dict(dsn)
    except Exception:
        # Unparseable: show only the scheme, never the text (it may hold a
        # password).
        return dsn.split("://", 1)[0] + "://<unparseable>" if "://" in dsn else "?"
    shown = ("host", "hostaddr", "port", "dbname", "user", "service")
    text = " ".join(f"{k}={parts[k]}" for k in shown if parts.get(k))
    return text or "(from PG* environment variables)"


def open_store(spec: str | Path, **options: Any) -> Any:
    """Open the run store a `state` setting names.

    Args:
        spec: A `postgresql://` URL, or a folder for the SQLite ledger.
        **options: Passed to `PostgresStore` (ignored for a folder).

    Returns:
        A `RunStore`.
    """
    if is_database_url(spec):
        from styxcache.scheduler.pg_store import PostgresStore

        return PostgresStore(str(spec), **options)
    from styxcache.scheduler.ledger import Ledger

    return Ledger(Path(spec) / LEDGER_NAME)
