"""The root `styxcache` command group; subcommands live in sibling modules."""

from __future__ import annotations

import importlib

import click

_LATER = ("demo", "schedule", "worker", "remote_commands", "operator")
"""Modules imported only when one of their commands is asked for: the
scheduler's imports cost 0.1 s, which `styxcache ls` or `stats` need not pay."""

_CACHE_COMMANDS = {
    "stats": "report_commands",
    "show": "report_commands",
    "explain": "report_commands",
    "ls": "ls_command",
    "verify": "verify_command",
    "gc": "gc_commands",
    "clear": "gc_commands",
    "export": "transfer_commands",
    "import": "transfer_commands",
}
"""The module of each cache command: `styxcache ls` imports neither gc's
reports nor the archive code (tens of milliseconds of every listing)."""
_COMMAND_OBJECTS = {"export": "export_command", "import": "import_command"}
"""Commands whose function is not named like the command."""


class _Group(click.Group):
    """The root group: each command's module is imported on first use."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for name in ("cache_commands", *_LATER):
            self._load_module(name)

    def _load_module(self, name: str) -> None:
        module = importlib.import_module(f"styxcache.cli.{name}")
        for command in getattr(module, "COMMANDS", ()) or (getattr(module, name),):
            self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in _CACHE_COMMANDS:
            module = importlib.import_module(
                f"styxcache.cli.{_CACHE_COMMANDS[cmd_name]}"
            )
            self.add_command(getattr(module, _COMMAND_OBJECTS.get(cmd_name, cmd_name)))
            found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in _LATER:
            # A command named like its module needs only that module: a NATS
            # worker does not import the scheduler loop or its YAML loader.
            self._load_module(cmd_name)
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
