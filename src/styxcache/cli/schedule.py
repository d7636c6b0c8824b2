"""`styxcache schedule ...`: run, list, validate and inspect schedules."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from styxcache.cli._common import emit_json
from styxcache.cli._logging import (
    configure_logging,
    log_format_option,
    log_level_option,
)
from styxcache.cli._schedule_store import (
    HISTORY_COLUMNS,
    check_state_url,
    history_cells,
    load_schedule,
    open_run_store,
    readable_row,
)
from styxcache.cli._tables import print_table
from styxcache.scheduler import (
    ConfigError,
    InlineExecutor,
    Ledger,
    Scheduler,
)
from styxcache.scheduler.config import ScheduleConfig
from styxcache.scheduler.entry import cache_label, executor_label
from styxcache.scheduler.ledger import LedgerError
from styxcache.scheduler.nats_connect import ENV_INSECURE
from styxcache.scheduler.refs import ref_name
from styxcache.scheduler.stores import (
    StoreUnavailableError,
    mask_dsn,
    open_store,
)

F = TypeVar("F", bound=Callable[..., Any])

_config_arg = click.argument(
    "config", type=click.Path(dir_okay=False, path_type=Path), metavar="CONFIG.yaml"
)

_name_arg = click.argument("name", metavar="NAME")
_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Override state_dir.",
)
_store_option = click.option(
    "--store",
    "state_url",
    metavar="URL",
    help="A postgresql:// run store (default: the file's state:, else the"
    " ledger in state_dir).",
)
_json_flag = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document to stdout."
)


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
@_state_dir_option
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
    "--insecure-no-signing",
    is_flag=True,
    help="Send and accept NATS messages without a signing key: anyone who can"
    " publish to the server can then forge results and reload this scheduler."
    " Private test servers only.",
)
@log_level_option
@log_format_option
def run(
    config: Path,
    *,
    state_dir: Path | None,
    state_url: str | None,
    lease_seconds: float,
    insecure_no_signing: bool,
    max_cycles: int | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the schedules in the foreground, one log line per run.

    SIGTERM or Ctrl-C stops claiming fires and gives running ones
    `shutdown_timeout_seconds` to finish; SIGHUP reloads CONFIG.yaml.
    """
    configure_logging(log_level, log_format)
    if insecure_no_signing:
        # Read by NatsSettings.insecure() when the NATS executor starts.
        os.environ[ENV_INSECURE] = "1"
    try:
        check_state_url(state_url)
        url = state_url or (load_schedule(config).state if state_dir is None else None)
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
    parsed = load_schedule(config)
    scheduler = Scheduler(ledger=Ledger(":memory:"), executor=InlineExecutor())
    for entry in parsed.entries:
        scheduler.add_entry(entry)
    fires = scheduler.next_fire_times(count)
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "trigger": e.trigger.describe(),
            "target": ref_name(e.target),
            "expand_from": ref_name(e.expand_from),
            "cache": e.cache.value,
            "catchup": e.catchup,
            "overlap": e.overlap,
            "enabled": e.enabled,
            "executor": executor_label(e.executor) or parsed.executor.kind,
            "retries": e.retries,
            "cache_dir": e.runner.cache_dir if e.runner is not None else None,
            "runs_through": cache_label(e),
            "next": [t.isoformat() for t in fires.get(e.name, [])],
        }
        for e in parsed.entries
    ]
    if as_json:
        emit_json({"config": str(config), "schedules": rows})
        return
    print_table(
        f"{len(rows)} schedule(s) in {config}",
        (
            "name",
            "trigger",
            "target",
            "cache",
            "mode",
            "catchup",
            "overlap",
            "executor",
            "next fires",
        ),
        [
            (
                row["name"] + ("" if row["enabled"] else " (disabled)"),
                row["trigger"],
                row["target"]
                + (f"\nfan-out: {row['expand_from']}" if row["expand_from"] else ""),
                row["runs_through"],
                row["cache"],
                row["catchup"],
                row["overlap"],
                row["executor"],
                "\n".join(row["next"]) or "-",
            )
            for row in rows
        ],
    )


@schedule.command()
@_config_arg
def validate(config: Path) -> None:
    """Check CONFIG.yaml: keys, values, time zones and that targets import."""
    parsed = load_schedule(config)
    where = (
        f"runs in PostgreSQL {mask_dsn(parsed.state)}"
        if parsed.state
        else f"ledger in {parsed.state_dir}"
    )
    click.echo(f"{config}: OK, {len(parsed.entries)} schedule(s); {where}")
    for entry in parsed.entries:
        label = cache_label(entry)
        if label == "none":
            label = (
                "no cache (runner: none)"
                if entry.executor != "nats"
                else ("the NATS worker's cache")
            )
        click.echo(f"  {entry.name}: {label}")


@schedule.command()
@_config_arg
@_state_dir_option
@_store_option
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
    ledger, path = open_run_store(config, state_dir, state_url)
    try:
        rows = [
            r.as_dict() for r in ledger.history(entry=entry, state=state, limit=limit)
        ]
    finally:
        ledger.close()
    if as_json:
        emit_json({"ledger": str(path), "runs": [readable_row(row) for row in rows]})
        return
    print_table(
        f"runs in {path}", HISTORY_COLUMNS, [history_cells(row) for row in rows]
    )


def _entry(parsed: ScheduleConfig, name: str) -> None:
    names = [e.name for e in parsed.entries]
    if name not in names:
        raise click.ClickException(
            f"no schedule {name!r} in {parsed.path}; it has: {', '.join(names) or '-'}"
        )


def _parse_item(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    if "=" in text:
        pairs = [part.split("=", 1) for part in text.split(",")]
        if all(len(pair) == 2 and pair[0] for pair in pairs):
            return {key.strip(): val.strip() for key, val in pairs}
    raise click.BadParameter(
        f'{text!r}: give a JSON object (\'{{"subject": "sub-01"}}\') or'
        " key=value pairs (subject=sub-01)",
        param_hint="'--item'",
    )


@schedule.command()
@_config_arg
@_name_arg
@click.option(
    "--item",
    "items",
    multiple=True,
    help="Run this fan-out item instead of calling expand_from: a JSON object"
    " or key=value pairs (repeatable).",
)
@_state_dir_option
@_store_option
@_json_flag
def trigger(
    config: Path,
    name: str,
    *,
    items: tuple[str, ...],
    state_dir: Path | None,
    state_url: str | None,
    as_json: bool,
) -> None:
    """Run schedule NAME now and wait for it; recorded in the ledger like any run.

    The run's nominal time is now and its reason "triggered by hand"; it
    goes through the entry's cache, cache mode and executor.
    """
    parsed = load_schedule(config)
    _entry(parsed, name)
    chosen = [_parse_item(text) for text in items] or None
    store, where = open_run_store(config, state_dir, state_url, create=True)
    scheduler = Scheduler.from_yaml(config, store=store)
    try:
        records = scheduler.trigger(name, chosen)
    finally:
        scheduler.close()
    rows = [readable_row(r.as_dict()) for r in records]
    if as_json:
        emit_json({"ledger": str(where), "runs": rows})
    else:
        for record in records:
            took = (
                f" in {record.ended - record.started:.2f}s"
                if record.started is not None and record.ended is not None
                else ""
            )
            click.echo(
                f"{record.key}: {record.state}{took}"
                + (
                    f" ({record.hits} hits, {record.misses} misses)"
                    if record.hits is not None
                    else ""
                )
                + (f": {record.error}" if record.error else "")
            )
    if any(r.state == "failed" for r in records):
        raise SystemExit(1)


def _pause(
    config: Path,
    name: str,
    state_dir: Path | None,
    state_url: str | None,
    as_json: bool,
    *,
    paused: bool,
) -> None:
    parsed = load_schedule(config)
    _entry(parsed, name)
    store, where = open_run_store(config, state_dir, state_url, create=True)
    try:
        store.set_paused(name, paused, dt.datetime.now(dt.timezone.utc).timestamp())
        now_paused = name in store.paused_entries()
    finally:
        store.close()
    if as_json:
        emit_json({"ledger": str(where), "schedule": name, "paused": now_paused})
        return
    if paused:
        click.echo(
            f"{name}: paused in {where}; running schedulers skip its fires from"
            " their next wake (`styxcache schedule resume` to undo)"
        )
    else:
        click.echo(f"{name}: resumed in {where}; it fires again from its next time")


def _one_entry(command: F) -> F:
    """Give a command about one entry its file, name, store and --json."""
    for decorate in reversed(
        (_config_arg, _name_arg, _state_dir_option, _store_option, _json_flag)
    ):
        command = decorate(command)
    return command


@schedule.command()
@_one_entry
def pause(**options: Any) -> None:
    """Pause schedule NAME: its fires are recorded skipped until resumed.

    Kept in the ledger, so running schedulers honour it without a restart
    and it survives restarts.
    """
    _pause(**options, paused=True)


@schedule.command()
@_one_entry
def resume(**options: Any) -> None:
    """Resume schedule NAME from its next fire (paused fires are not caught up)."""
    _pause(**options, paused=False)
