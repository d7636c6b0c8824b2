"""`styxcache worker --nats URL`: run scheduled work published to NATS."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from styxcache.scheduler.nats_worker import WorkerSettings, serve


@click.command()
@click.option(
    "--nats",
    "url",
    required=True,
    metavar="URL",
    help="NATS server, e.g. nats://127.0.0.1:4222.",
)
@click.option(
    "--schedule",
    "schedules",
    multiple=True,
    metavar="NAME",
    help="Only take runs of this schedule (repeatable; default: all).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder put on sys.path so 'module:function' targets import (repeatable).",
)
@click.option("--subject-prefix", default="styxcache", show_default=True)
@click.option("--queue", default="styxcache-workers", show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--heartbeat",
    "heartbeat_seconds",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="Seconds between heartbeats; keep below the scheduler's lost_after_seconds.",
)
@click.option(
    "--max-runs", type=click.IntRange(min=1), help="Exit after this many runs."
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the server at startup.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def worker(  # noqa: PLR0917 - one parameter per click option
    url: str,
    schedules: tuple[str, ...],
    paths: tuple[Path, ...],
    subject_prefix: str,
    queue: str,
    concurrency: int,
    heartbeat_seconds: float,
    max_runs: int | None,
    connect_timeout: float,
    log_level: str,
) -> None:
    """Take scheduled runs from NATS and run them through the cache.

    Workers share a queue group, so each run goes to one of them. SIGTERM or
    Ctrl-C stops taking runs and finishes the ones in hand.

    \b
    Examples:
      styxcache worker --nats nats://10.0.0.5:4222 --path ./pipelines
      styxcache worker --nats nats://10.0.0.5:4222 --schedule nightly --concurrency 4
    """  # noqa: D301 - click's \b marker must be a real backspace
    handler = RichHandler(
        console=Console(stderr=True), show_path=False, rich_tracebacks=False
    )
    logging.basicConfig(
        level=log_level.upper(), handlers=[handler], format="%(message)s", force=True
    )
    for folder in reversed(paths):
        sys.path.insert(0, str(folder.resolve()))
    settings = WorkerSettings(
        url=url,
        schedules=schedules,
        subject_prefix=subject_prefix,
        queue=queue,
        concurrency=concurrency,
        heartbeat_seconds=heartbeat_seconds,
        max_runs=max_runs,
        connect_timeout_seconds=connect_timeout,
    )
    try:
        asyncio.run(_main(settings))
    except OSError as exc:
        raise click.ClickException(f"NATS at {url}: {exc}") from None


async def _main(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)
