"""The root `styxcache` command group; subcommands live in sibling modules."""

from __future__ import annotations

import importlib

import click

from styxcache.cli import cache_commands

_LATER = ("demo", "schedule", "worker", "remote_commands", "operator")
"""Modules imported only when one of their commands is asked for: the
scheduler's imports cost 0.1 s, which `styxcache ls` or `stats` need not pay."""


class _Group(click.Group):
    """The root group: the cache commands at once, the others on first use."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for name in _LATER:
            module = importlib.import_module(f"styxcache.cli.{name}")
            for command in getattr(module, "COMMANDS", ()) or (getattr(module, name),):
                self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:
            self._load()
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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


for command in cache_commands.COMMANDS:
    main.add_command(command)
