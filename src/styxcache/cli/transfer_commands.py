"""`styxcache export` and `import`: move entries between caches as archives."""

from __future__ import annotations

import time
from pathlib import Path

import click

from styxcache.inventory import EntryInfo
from styxcache.transfer import TransferError, export_entries, import_entries

from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    err_console,
    json_option,
    open_store,
    out_console,
    progress,
)
from ._filters import tool_matches, tool_option, used_since_option
from ._units import human_size

__all__ = ["export_command", "import_command"]

_REDRAW_S = 0.1
"""The import's progress bar is redrawn at most this often."""


@click.command(cls=CacheCommand, name="export")
@cache_dir_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@used_since_option()
@tool_option
@json_option
def export_command(
    *,
    cache_dir: Path | None,
    out: Path,
    used_since: float | None,
    tool: str | None,
    as_json: bool,
) -> None:
    """Write entries to OUT.tar.gz: all of them, or just those a CI run used.

    \b
    Examples:
      START=$(date -u +%Y-%m-%dT%H:%M:%SZ); run-pipeline
      styxcache export --used-since "$START" used.tar.gz
      styxcache export --tool 'fsl/*' fsl.tar.gz
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)

    def select(entry: EntryInfo) -> bool:
        return tool_matches(tool, entry.tool)

    try:
        report = export_entries(
            store, out, used_since=used_since, select=select, allow_empty=False
        )
    except TransferError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json({"cache_dir": str(store.root), **report.as_dict()})
        return
    console = out_console()
    size = human_size(report.bytes)
    console.print(
        f"Exported {len(report.entries)} entries ({size}) to {out}.", markup=False
    )
    for key, why in report.skipped.items():
        console.print(f"left out {key[:12]}: {why}", markup=False)


@click.command(cls=CacheCommand, name="import")
@cache_dir_option
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def import_command(*, cache_dir: Path | None, source: Path, as_json: bool) -> None:
    """Import the entries of an export, after verifying every one of them.

    Nothing is written unless the archive is a safe styxcache export whose
    entries all match their manifests. Entries already cached are kept.

    \b
    Examples:
      styxcache import used.tar.gz
      STYXCACHE_DIR=/scratch/cache styxcache import site-a.tar.gz --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir, allow_missing=True)
    # No refresh thread: with another thread alive the import would not fork
    # its workers (a forked child could inherit a lock that thread holds).
    with progress("verifying", auto_refresh=False) as bar:
        task = bar.add_task("verify", total=None)
        shown = [0.0]

        def verified(_key: str) -> None:
            bar.advance(task)
            now = time.monotonic()
            if now - shown[0] >= _REDRAW_S:
                shown[0] = now
                bar.refresh()

        try:
            report = import_entries(store, source, on_verified=verified)
        except TransferError as exc:
            raise click.ClickException(f"import rejected: {exc}") from None
    if as_json:
        emit_json({"cache_dir": str(store.root), **report.as_dict()})
        return
    out_console().print(
        f"Imported {len(report.imported)} entries into {store.root}"
        + (f"; {len(report.present)} were already there." if report.present else "."),
        markup=False,
    )
    for key, why in report.skipped.items():
        err_console().print(f"not imported {key[:12]}: {why}", markup=False)
