"""Connection strings of the PostgreSQL run store, made safe to show.

Kept apart from `stores` (which opens a store by its setting) so that the
store's own modules can use it without importing the factory that imports
them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["mask_dsn"]


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
