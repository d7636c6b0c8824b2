"""What every cache command shares: the cache directory, `--json`, consoles.

Text goes to stdout through rich; progress bars go to stderr and only on a
terminal; `--json` prints one JSON document to stdout and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from styxcache.store import CacheStore

__all__ = [
    "ENV_VAR",
    "CacheCommand",
    "cache_dir_option",
    "emit_json",
    "err_console",
    "json_option",
    "open_store",
    "out_console",
]

ENV_VAR = "STYXCACHE_DIR"

F = TypeVar("F", bound=Callable[..., Any])


class CacheCommand(click.Command):
    """A command whose filesystem errors end as one clear line and exit code 1.

    Every change to a cache is a rename or a write of a new file, so a
    command stopped by an error leaves the entries as they were.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning `OSError` into a `ClickException`."""
        try:
            return super().invoke(ctx)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(
                f"{where}{exc.strerror or exc}; nothing already cached was changed"
            ) from None


def cache_dir_option(command: F) -> F:
    """Add `--cache-dir` (or `STYXCACHE_DIR`) to a command."""
    return click.option(
        "--cache-dir",
        "cache_dir",
        envvar=ENV_VAR,
        type=click.Path(path_type=Path),
        help=f"The cache directory [env: {ENV_VAR}].",
    )(command)


def json_option(command: F) -> F:
    """Add `--json` (machine-readable output on stdout) to a command."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON to stdout instead of text."
    )(command)


def open_store(cache_dir: Path | None, *, allow_missing: bool = False) -> CacheStore:
    """Return the store of the chosen cache directory, or fail with a usage error.

    Args:
        cache_dir: The `--cache-dir` value (already merged with the env var).
        allow_missing: Accept a directory that does not exist yet (`import`
            creates it once the archive has passed its checks).

    Raises:
        click.UsageError: If no directory was given, or it does not exist
            (exit code 2).
    """
    if cache_dir is None or not str(cache_dir):
        raise click.UsageError(
            f"no cache directory: pass --cache-dir DIR or set {ENV_VAR}=DIR"
        )
    root = Path(os.path.abspath(cache_dir))
    if root.exists() and not root.is_dir():
        raise click.UsageError(f"cache directory {root} is not a directory")
    if not root.exists() and not allow_missing:
        raise click.UsageError(
            f"cache directory {root} does not exist (check --cache-dir / {ENV_VAR})"
        )
    return CacheStore(root)


def emit_json(data: object) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def out_console() -> Console:
    """A console for results on stdout; wide enough for tables when piped."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120, no_color=True)
    return console


def err_console() -> Console:
    """A console for progress bars and notes on stderr."""
    return Console(stderr=True, highlight=False)
