"""`styxcache schedule ...`: run, list, validate and inspect schedules."""

from __future__ import annotations

import click


@click.group()
def schedule() -> None:
    """Rerun pipelines on cron and interval schedules through the cache."""
