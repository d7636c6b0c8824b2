"""`styxcache failed` and `styxcache logs`: what an operator looks at after a run.

`failed` lists (and with `--clean`, removes) the failed runs kept in the
cache's `.failed/` folder; `logs` prints the stdout and stderr an entry (or a
kept failed run) stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import click

from styxcache.cli._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    json_option,
    open_store,
)
from styxcache.cli._tables import print_table
from styxcache.inventory import KeyPrefixError, resolve_key
from styxcache.logs import replay
from styxcache.store import CacheStore, remove_tree
from styxcache.walk import folder_entries, housekeeping_dir

__all__ = ["COMMANDS", "failed", "logs"]

_REASON = ".styxcache.failed"


def _failed_runs(store: CacheStore) -> list[dict[str, Any]]:
    folder = housekeeping_dir(store.root, CacheStore.FAILED_DIR)
    if folder is None:
        return []
    runs: list[dict[str, Any]] = []
    for item in folder_entries(folder):
        if not item.is_dir(follow_symlinks=False):
            continue  # a planted link or a stray file: never followed
        path = Path(item.path)
        try:
            reason = (path / _REASON).read_text(encoding="utf-8").strip()
        except OSError:
            reason = ""
        size = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(root, name)).st_size
        mtime = item.stat(follow_symlinks=False).st_mtime
        runs.append(
            {
                "name": item.name,
                "path": str(path),
                "key_prefix": item.name.split("-")[1] if "-" in item.name else "",
                "failed_at": dt.datetime.fromtimestamp(
                    mtime, dt.timezone.utc
                ).isoformat(timespec="seconds"),
                "bytes": size,
                "reason": reason,
            }
        )
    runs.sort(key=lambda r: str(r["failed_at"]), reverse=True)
    return runs


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option(
    "--clean",
    is_flag=True,
    help="Remove the kept failed runs (all of them, or those --older-than).",
)
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="With --clean: only runs that failed more than DAYS days ago.",
)
@json_option
def failed(
    *, cache_dir: Path | None, clean: bool, older_than: float | None, as_json: bool
) -> None:
    """List the failed runs kept in the cache's .failed/ folder (newest first).

    A failed run's staging folder (its partial outputs and its stdout and
    stderr logs) is kept for inspection; `styxcache logs NAME` prints the
    logs. `--clean` removes them.

    \b
    Examples:
      styxcache failed --cache-dir DIR
      styxcache logs 20261129T142501-8fdb097e1234abcd-1a2b3c --cache-dir DIR
      styxcache failed --clean --older-than 7
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    if older_than is not None and not clean:
        raise click.UsageError("--older-than only applies with --clean")
    store = open_store(cache_dir)
    runs = _failed_runs(store)
    removed: list[str] = []
    if clean:
        cutoff = (
            dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=older_than)
            if older_than is not None
            else None
        )
        for run in runs:
            when = dt.datetime.fromisoformat(str(run["failed_at"]))
            if cutoff is None or when < cutoff:
                remove_tree(Path(run["path"]))
                removed.append(str(run["name"]))
        runs = [r for r in runs if r["name"] not in removed]
    if as_json:
        emit_json({"cache_dir": str(store.root), "failed": runs, "removed": removed})
        return
    if clean:
        click.echo(f"removed {len(removed)} failed run(s); {len(runs)} kept")
        return
    if not runs:
        click.echo(f"no failed runs kept in {store.root / CacheStore.FAILED_DIR}")
        return
    print_table(
        f"{len(runs)} failed run(s) in {store.root / CacheStore.FAILED_DIR}",
        ("name", "failed at", "bytes", "reason"),
        [(r["name"], r["failed_at"], str(r["bytes"]), r["reason"]) for r in runs],
    )


def _log_folder(store: CacheStore, what: str) -> tuple[Path, str]:
    """An entry folder (by key prefix) or a kept failed run (by its name)."""
    failed_dir = housekeeping_dir(store.root, CacheStore.FAILED_DIR)
    if failed_dir is not None and "/" not in what and what not in (".", ".."):
        candidate = failed_dir / what
        if candidate.is_dir() and not candidate.is_symlink():
            return candidate, what
    try:
        key = resolve_key(store, what)
    except KeyPrefixError as exc:
        raise click.UsageError(
            f"{exc} (a failed run is named as `styxcache failed` lists it)"
        ) from None
    return store.entry_dir(key), key


@click.command(cls=CacheCommand)
@cache_dir_option
@click.argument("key", metavar="KEY")
@click.option(
    "--stream",
    type=click.Choice(["both", "stdout", "stderr"]),
    default="both",
    show_default=True,
    help="Which log to print.",
)
@json_option
def logs(*, cache_dir: Path | None, key: str, stream: str, as_json: bool) -> None:
    """Print the stdout and stderr a cache entry (or a kept failed run) stored.

    KEY is a full key, a unique key prefix, or the name of a failed run as
    `styxcache failed` lists it. Text mode writes stdout lines to stdout and
    stderr lines to stderr.

    \b
    Examples:
      styxcache logs 8fdb097e --cache-dir DIR
      styxcache logs 8fdb097e --stream stderr --cache-dir DIR
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    folder, name = _log_folder(store, key)
    wanted = ("stdout", "stderr") if stream == "both" else (stream,)
    captured: dict[str, list[str] | None] = {}
    for which in wanted:
        path = folder / (
            CacheStore.STDOUT_LOG if which == "stdout" else CacheStore.STDERR_LOG
        )
        if not path.is_file() or path.is_symlink():
            captured[which] = None
            continue
        lines: list[str] = []
        replay(path, lines.append)
        captured[which] = lines
    if as_json:
        emit_json({"key": name, "path": str(folder), **captured})
        return
    if all(v is None for v in captured.values()):
        raise click.ClickException(f"{name}: no stored stdout or stderr in {folder}")
    for which, stored in captured.items():
        target = sys.stdout if which == "stdout" else sys.stderr
        for line in stored or []:
            click.echo(line, file=target)


COMMANDS: list[click.Command] = [failed, logs]
