"""What every cache command shares: the cache directory, `--json`, consoles.

Text goes to stdout through rich; progress bars go to stderr and only on a
terminal; `--json` prints one JSON document to stdout and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from styxcache.events import EVENTS_DIR
from styxcache.store import CacheStore
from styxcache.walk import folder_entries, is_shard_name

__all__ = [
    "ENV_VAR",
    "CacheCommand",
    "cache_dir_option",
    "emit_json",
    "err_console",
    "json_option",
    "open_store",
    "out_console",
    "print_unsafe",
    "progress",
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
    if root.is_dir():
        _check_holds_a_cache(root, allow_other=allow_missing)
    return CacheStore(root)


_CACHE_MARKERS = frozenset({*CacheStore.WORK_DIRS, EVENTS_DIR})


def _check_holds_a_cache(root: Path, *, allow_other: bool) -> None:
    """Refuse a folder that holds something other than a cache; note an empty one.

    A mistyped `--cache-dir` (a home folder, a project) would otherwise be
    listed as an empty cache without a word.
    """
    names = [item.name for item in folder_entries(root)]
    if any(name in _CACHE_MARKERS or is_shard_name(name) for name in names):
        return
    if not names:
        err_console().print(
            f"note: {root} holds no cache yet (no entries, no statistics)",
            markup=False,
        )
        return
    if allow_other:
        return
    shown = ", ".join(repr(name) for name in names[:3])
    raise click.UsageError(
        f"{root} holds no styxcache cache (it has other files: {shown}"
        f"{', ...' if len(names) > 3 else ''}); check --cache-dir / {ENV_VAR}"
    )


def emit_json(data: object) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def out_console() -> Console:
    """A console for results on stdout; wide enough for tables when piped.

    Markup is off: what is printed (tool names, paths, params) is data, and a
    tool named `x[/]y` must print as it is, not crash or restyle the output.
    Style goes through `style=` and `rich.text.Text` instead.
    """
    console = Console(highlight=False, soft_wrap=False, markup=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120, no_color=True, markup=False)
    return console


def err_console() -> Console:
    """A console for progress bars and notes on stderr (markup off, as above)."""
    return Console(stderr=True, highlight=False, markup=False)


def print_unsafe(unsafe: Sequence[Mapping[str, str]]) -> None:
    """Warn on stderr about links skipped by a walk (`{"path", "reason"}` items)."""
    console = err_console()
    for item in unsafe:
        console.print(
            f"warning: skipped {item['path']}: it {item['reason']}", markup=False
        )


def progress(what: str, *, auto_refresh: bool = True) -> Progress:
    """A progress bar on stderr, shown only on a terminal.

    Args:
        what: Its label.
        auto_refresh: Redraw from a thread of rich's; False where no thread
            may run (the caller then calls `refresh()`, e.g. an import that
            forks workers).
    """
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console(),
        transient=True,
        auto_refresh=auto_refresh,
        disable=not err_console().is_terminal,
    )
