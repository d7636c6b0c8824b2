"""`styxcache gc` and `clear`: trim a cache, sweep leftovers, or empty it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from styxcache.gc import GcLimits, GcReport, SweepAges, collect_garbage
from styxcache.inventory import scan_entries

from . import _report
from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    json_option,
    open_store,
    out_console,
    print_unsafe,
)
from ._units import DurationType, SizeType, human_size

__all__ = ["clear", "gc"]

F = TypeVar("F", bound=Callable[..., Any])


def _age_option(name: str, default: str, text: str) -> Callable[[F], F]:
    """A duration option with a default shown in the help."""
    return click.option(
        name, type=DurationType(), default=default, show_default=True, help=text
    )


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--max-size", type=SizeType(), help="Trim to at most this size (50G).")
@click.option(
    "--max-entries", type=click.IntRange(min=0), help="Keep at most this many entries."
)
@click.option(
    "--older-than", type=DurationType(), help="Remove entries not used for this long."
)
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@_age_option(
    "--keep-recent",
    "10m",
    "Never remove entries used this recently (a pipeline may be reading them).",
)
@_age_option("--staging-age", "1d", "Sweep unleased staging folders older than this.")
@_age_option("--failed-age", "7d", "Sweep kept failed runs older than this.")
@_age_option("--quarantine-age", "30d", "Sweep quarantined entries older than this.")
@json_option
def gc(
    *,
    cache_dir: Path | None,
    max_size: int | None,
    max_entries: int | None,
    older_than: float | None,
    dry_run: bool,
    keep_recent: float,
    staging_age: float,
    failed_age: float,
    quarantine_age: float,
    as_json: bool,
) -> None:
    """Trim the cache, least recently used first; sweep leftovers.

    Last use is recorded by the cache on every hit (not atime). Safe to run
    from cron while pipelines run: entries held by running executions, used
    in the last --keep-recent, or used while gc runs are kept. Without a
    limit, only leftovers are swept (crashed staging, old failed runs, old
    quarantine).

    \b
    Examples:
      styxcache gc --max-size 50G
      styxcache gc --older-than 30d --dry-run
      styxcache gc --max-entries 1000 --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    limits = GcLimits(
        max_size=max_size, max_entries=max_entries, older_than_s=older_than
    )
    ages = SweepAges(
        staging_s=staging_age, failed_s=failed_age, quarantine_s=quarantine_age
    )
    started = time.time()
    report = collect_garbage(
        store,
        limits,
        dry_run=dry_run,
        ages=ages,
        keep_used_after=started - keep_recent,
        clock=lambda: started,
    )
    _finish(str(store.root), report, as_json)


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def clear(*, cache_dir: Path | None, yes: bool, as_json: bool) -> None:
    """Remove every entry (asks first), keeping those in use right now.

    Statistics are kept; use `styxcache stats --zero` to reset them.

    \b
    Examples:
      styxcache clear
      styxcache clear --yes
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    if not yes:
        entries = list(scan_entries(store))
        size = human_size(sum(e.size for e in entries))
        click.confirm(
            f"Remove all {len(entries)} entries ({size}) from {store.root}?",
            abort=True,
            err=True,
        )
    ages = SweepAges(failed_s=0.0, quarantine_s=0.0)
    report = collect_garbage(store, GcLimits(max_entries=0), ages=ages)
    report.removed = [dataclasses.replace(r, why="clear") for r in report.removed]
    _finish(str(store.root), report, as_json)


def _finish(root: str, report: GcReport, as_json: bool) -> None:
    """Print a collection's report; exit code 1 when links were found."""
    if as_json:
        emit_json({"cache_dir": root, **report.as_dict()})
    else:
        print_unsafe([dataclasses.asdict(u) for u in report.unsafe])
        _report.print_gc(out_console(), report)
    if report.unsafe:
        raise SystemExit(1)
