"""`styxcache schedule ...`: run, list, validate and inspect schedules."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from styxcache.scheduler import (
    ConfigError,
    InlineExecutor,
    Ledger,
    Scheduler,
    load_config,
)
from styxcache.scheduler.clock import utc_from_timestamp
from styxcache.scheduler.config import ScheduleConfig, executor_label
from styxcache.scheduler.ledger import LedgerError
from styxcache.scheduler.stores import (
    StoreUnavailableError,
    is_database_url,
    mask_dsn,
    open_store,
)

LEDGER_NAME = "ledger.sqlite3"

_config_arg = click.argument(
    "config", type=click.Path(dir_okay=False, path_type=Path), metavar="CONFIG.yaml"
)


def _load(config: Path) -> ScheduleConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _ScheduleGroup(click.Group):
    """Ends on an unusable ledger with its message (which says how to recover)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning `LedgerError` into a `ClickException`."""
        try:
            return super().invoke(ctx)
        except LedgerError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_ScheduleGroup)
def schedule() -> None:
    """Rerun pipelines on cron and interval schedules through the cache.

    \b
    Examples:
      styxcache schedule validate jobs.yaml
      styxcache schedule list jobs.yaml -n 3
      styxcache schedule run jobs.yaml          # Ctrl-C / SIGTERM stops, SIGHUP reloads
      styxcache schedule history jobs.yaml --json
    """  # noqa: D301 - click's \b marker must be a real backspace


@schedule.command()
@_config_arg
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Override state_dir.",
)
@click.option(
    "--state",
    "state_url",
    metavar="URL",
    help="Run store shared by replicas: a postgresql:// URL (overrides the"
    " file's state:; credentials may come from PG* variables instead).",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="With a PostgreSQL store: after this long without a heartbeat, the"
    " other replicas take over this one's runs.",
)
@click.option(
    "--max-cycles", type=click.IntRange(min=1), help="Stop after this many wakes."
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def run(
    config: Path,
    *,
    state_dir: Path | None,
    state_url: str | None,
    lease_seconds: float,
    max_cycles: int | None,
    log_level: str,
) -> None:
    """Run the schedules in the foreground, one log line per run.

    SIGTERM or Ctrl-C stops claiming fires and gives running ones
    `shutdown_timeout_seconds` to finish; SIGHUP reloads CONFIG.yaml.
    """
    handler = RichHandler(
        console=Console(stderr=True), show_path=False, rich_tracebacks=False
    )
    logging.basicConfig(
        level=log_level.upper(), handlers=[handler], format="%(message)s", force=True
    )
    try:
        _check_state_url(state_url)
        url = state_url or (_load(config).state if state_dir is None else None)
        store = open_store(url, lease_seconds=lease_seconds) if url else None
        scheduler = Scheduler.from_yaml(config, state_dir=state_dir, store=store)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except StoreUnavailableError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ImportError) as exc:  # a Dask or NATS server out of reach
        raise click.ClickException(f"cannot start the executor: {exc}") from None
    try:
        scheduler.run(max_cycles=max_cycles, handle_signals=True)
    finally:
        scheduler.ledger.close()


@schedule.command(name="list")
@_config_arg
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Fire times per entry.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(config: Path, count: int, as_json: bool) -> None:
    """Show each entry and its next fire times (writes nothing)."""
    parsed = _load(config)
    scheduler = Scheduler(ledger=Ledger(":memory:"), executor=InlineExecutor())
    for entry in parsed.entries:
        scheduler.add_entry(entry)
    fires = scheduler.next_fire_times(count)
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "trigger": e.trigger.describe(),
            "target": _ref(e.target),
            "expand_from": _ref(e.expand_from),
            "cache": e.cache.value,
            "catchup": e.catchup,
            "overlap": e.overlap,
            "enabled": e.enabled,
            "executor": executor_label(e.executor) or parsed.executor.kind,
            "retries": e.retries,
            "cache_dir": e.runner.cache_dir if e.runner is not None else None,
            "next": [t.isoformat() for t in fires.get(e.name, [])],
        }
        for e in parsed.entries
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} schedule(s) in {config}")
    for column in (
        "name",
        "trigger",
        "target",
        "cache",
        "catchup",
        "overlap",
        "executor",
        "next fires",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"] + ("" if row["enabled"] else " (disabled)"),
            row["trigger"],
            row["target"]
            + (f"\nfan-out: {row['expand_from']}" if row["expand_from"] else ""),
            row["cache"],
            row["catchup"],
            row["overlap"],
            row["executor"],
            "\n".join(row["next"]) or "-",
        )
    Console(markup=False).print(table)  # names and paths are data


def _ref(ref: object) -> str:
    if ref is None:
        return ""
    if isinstance(ref, str):
        return ref
    return f"{getattr(ref, '__module__', '?')}:{getattr(ref, '__qualname__', '?')}"


@schedule.command()
@_config_arg
def validate(config: Path) -> None:
    """Check CONFIG.yaml: keys, values, time zones and that targets import."""
    parsed = _load(config)
    where = (
        f"runs in PostgreSQL {mask_dsn(parsed.state)}"
        if parsed.state
        else f"ledger in {parsed.state_dir}"
    )
    click.echo(f"{config}: OK, {len(parsed.entries)} schedule(s); {where}")


@schedule.command()
@_config_arg
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Override state_dir.",
)
@click.option(
    "--store",
    "state_url",
    metavar="URL",
    help="Read a postgresql:// run store (default: the file's state:, else"
    " the ledger in state_dir).",
)
@click.option("--entry", help="Only this schedule.")
@click.option(
    "--state", "state", help="Only runs in this state (ok, failed, skipped, ...)."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON lines instead of a table."
)
def history(
    config: Path,
    *,
    state_dir: Path | None,
    state_url: str | None,
    entry: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show recorded runs from the ledger, newest first."""
    _check_state_url(state_url)
    url = state_url
    if url is None and state_dir is None:
        url = _load(config).state
    ledger: Any
    if url is not None:
        try:
            ledger = open_store(url, heartbeat=False)
        except StoreUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
        path: Any = ledger.where
    else:
        folder = state_dir if state_dir is not None else _load(config).state_dir
        path = folder / LEDGER_NAME
        if not path.exists():
            raise click.ClickException(
                f"no ledger at {path} yet (has `schedule run` started?)"
            )
        ledger = Ledger(path)
    try:
        rows = [
            r.as_dict() for r in ledger.history(entry=entry, state=state, limit=limit)
        ]
    finally:
        ledger.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(_readable(row), sort_keys=True))
        return
    table = Table(title=f"runs in {path}")
    for column in (
        "nominal",
        "schedule",
        "item",
        "state",
        "late s",
        "hits",
        "misses",
        "note",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            utc_from_timestamp(row["nominal"]).isoformat(),
            row["entry"],
            row["item"],
            row["state"],
            f"{row['lateness']:.3f}" if row["lateness"] is not None else "",
            "" if row["hits"] is None else str(row["hits"]),
            "" if row["misses"] is None else str(row["misses"]),
            (row["error"] or row["reason"])[:80],
        )
    Console(file=sys.stdout, markup=False).print(table)


def _check_state_url(url: str | None) -> None:
    if url is not None and not is_database_url(url):
        raise click.BadParameter(
            "must be a postgresql:// URL (use --state-dir for a folder)",
            param_hint="'--state'",
        )


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("nominal", "due", "started", "ended"):
        value = out.get(key)
        out[f"{key}_iso"] = (
            dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).isoformat()
            if value is not None
            else None
        )
    return out
