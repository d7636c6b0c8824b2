"""The root `styxcache` command group; subcommands live in sibling modules."""

from __future__ import annotations

import click

from styxcache.cli import (
    cache_commands,
    demo,
    operator,
    remote_commands,
    schedule,
    worker,
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="styxcache")
def main() -> None:
    """Content-addressed caching and scheduling for Styx pipelines.

    \b
    Examples:
      styxcache demo                     run a small pipeline twice, see the hits
      styxcache stats --cache-dir DIR    what the cache saved
      styxcache gc --max-size 50G        trim least recently used entries
      styxcache schedule run jobs.yaml   rerun pipelines on a schedule
    """  # noqa: D301 - click's \b marker must be a real backspace, not a raw string


for command in (*cache_commands.COMMANDS, demo.demo, schedule.schedule, worker.worker):
    main.add_command(command)
for command in remote_commands.COMMANDS:
    main.add_command(command)
for command in operator.COMMANDS:
    main.add_command(command)
