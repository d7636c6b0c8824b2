"""Choosing a run store from a setting, and what every shared store may raise.

`open_store("postgresql://...")` gives a `PostgresStore` (several schedulers
on several hosts); a folder gives the SQLite `Ledger` in it (one host only:
SQLite's locking is not reliable on a network filesystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from styxcache.errors import StoreUnavailableError
from styxcache.scheduler.dsn import mask_dsn

__all__ = [
    "LEDGER_NAME",
    "StoreUnavailableError",
    "is_database_url",
    "mask_dsn",
    "open_store",
]

LEDGER_NAME = "ledger.sqlite3"
_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(spec: object) -> bool:
    """Tell whether a `state` setting names a PostgreSQL database.

    Args:
        spec: The setting.

    Returns:
        True for a `postgresql://` or `postgres://` string.
    """
    return isinstance(spec, str) and spec.startswith(_SCHEMES)


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
