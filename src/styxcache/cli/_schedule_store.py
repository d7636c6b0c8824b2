"""The schedule commands' access to a file's run store, and how its rows print.

`schedule history`, `trigger`, `pause` and `resume` read or write the store a
schedule file names (the SQLite ledger in its `state_dir`, or a PostgreSQL
store), overridable with `--state-dir` / `--store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from styxcache.scheduler import ConfigError, Ledger, load_config
from styxcache.scheduler.clock import utc_from_timestamp
from styxcache.scheduler.config import ScheduleConfig
from styxcache.scheduler.stores import (
    LEDGER_NAME,
    StoreUnavailableError,
    is_database_url,
    open_store,
)

__all__ = [
    "HISTORY_COLUMNS",
    "check_state_url",
    "history_cells",
    "load_schedule",
    "open_run_store",
    "readable_row",
]

HISTORY_COLUMNS = (
    "nominal",
    "schedule",
    "item",
    "state",
    "started",
    "took s",
    "late s",
    "hits",
    "misses",
    "note",
)
"""The columns of `schedule history`'s table (see `history_cells`)."""


def load_schedule(config: Path) -> ScheduleConfig:
    """Load a schedule file, ending the command with its errors if invalid.

    Args:
        config: The file.

    Returns:
        The configuration.

    Raises:
        click.ClickException: Listing every error of the file.
    """
    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def check_state_url(url: str | None) -> None:
    """Refuse a `--state` / `--store` value that is not a database URL.

    Args:
        url: The option's value.

    Raises:
        click.BadParameter: Saying what is expected.
    """
    if url is not None and not is_database_url(url):
        raise click.BadParameter(
            "must be a postgresql:// URL (use --state-dir for a folder)",
            param_hint="'--state'",
        )


def open_run_store(
    config: Path,
    state_dir: Path | None,
    state_url: str | None,
    *,
    create: bool = False,
) -> tuple[Any, Any]:
    """Open the run store a schedule file uses; return it and where it is.

    Args:
        config: The schedule file (read only when no override is given).
        state_dir: `--state-dir`: the folder of a SQLite ledger.
        state_url: `--store`: a `postgresql://` URL.
        create: Create a missing SQLite ledger (else it is an error).

    Returns:
        The store and its location (a path or a masked URL).

    Raises:
        click.ClickException: If the store cannot be opened or is missing.
    """
    check_state_url(state_url)
    url = state_url
    if url is None and state_dir is None:
        url = load_schedule(config).state
    if url is not None:
        try:
            store = open_store(url, heartbeat=False)
        except StoreUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        return store, store.where
    folder = state_dir if state_dir is not None else load_schedule(config).state_dir
    path = folder / LEDGER_NAME
    if not path.exists() and not create:
        raise click.ClickException(
            f"no ledger at {path} yet (has `schedule run` started?)"
        )
    return Ledger(path), path


def history_cells(row: dict[str, Any]) -> tuple[str, ...]:
    """One run as the cells of `HISTORY_COLUMNS`.

    Args:
        row: The run record as a dict.

    Returns:
        The cells.
    """
    started, ended = row["started"], row["ended"]
    return (
        utc_from_timestamp(row["nominal"]).isoformat(),
        row["entry"],
        row["item"],
        row["state"],
        utc_from_timestamp(started).isoformat() if started is not None else "",
        f"{ended - started:.3f}" if started is not None and ended is not None else "",
        f"{row['lateness']:.3f}" if row["lateness"] is not None else "",
        "" if row["hits"] is None else str(row["hits"]),
        "" if row["misses"] is None else str(row["misses"]),
        row["error"] or row["reason"],
    )


def readable_row(row: dict[str, Any]) -> dict[str, Any]:
    """Add an ISO-8601 `<key>_iso` next to each Unix time of a run, for JSON.

    Args:
        row: The run record as a dict.

    Returns:
        A copy with the ISO times.
    """
    out = dict(row)
    for key in ("nominal", "due", "started", "ended"):
        value = out.get(key)
        out[f"{key}_iso"] = (
            utc_from_timestamp(value).isoformat() if value is not None else None
        )
    return out
