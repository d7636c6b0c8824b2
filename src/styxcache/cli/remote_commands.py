"""Remote tier commands: push and pull entries to and from object storage.

Exit codes as for the other cache commands: 0 success; 1 the remote failed,
or some entries were damaged or could not be moved; 2 usage errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from styxcache.inventory import scan_entries
from styxcache.manifest import Manifest
from styxcache.remote import ENV_REMOTE, RemoteConfigError, RemoteError, RemoteTier
from styxcache.remote.sync import ENTRY_WORKERS, SyncReport, pull_entries, push_entries

from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    json_option,
    open_store,
    out_console,
)
from ._filters import (
    EntryFilter,
    last_use_options,
    size_options,
    tool_option,
    used_since_option,
)
from ._units import human_size

__all__ = ["COMMANDS"]


def _remote_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--remote",
        "remote",
        envvar=ENV_REMOTE,
        help=f"The remote cache, e.g. s3://bucket/prefix [env: {ENV_REMOTE}]. "
        "Endpoint, region and credentials come from the usual AWS_* variables.",
    )(command)


def _jobs_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--jobs",
        type=click.IntRange(min=1, max=64),
        default=ENTRY_WORKERS,
        show_default=True,
        help="Entries transferred at once.",
    )(command)


def _tier(remote: str | None) -> RemoteTier:
    if not remote:
        raise click.UsageError(
            f"no remote cache: pass --remote s3://bucket/prefix or set {ENV_REMOTE}"
        )
    try:
        return RemoteTier(remote, source="--remote")
    except RemoteConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _finish(report: SyncReport, verb: str, where: str, as_json: bool) -> None:
    if as_json:
        emit_json({"remote": where, **report.as_dict()})
    else:
        console = out_console()
        done = f"Would have {verb}" if report.dry_run else verb.capitalize()
        console.print(
            f"{done} {len(report.moved)} entries "
            f"({human_size(report.bytes)}); {len(report.present)} were already there.",
            markup=False,
        )
        for key, why in report.damaged.items():
            console.print(f"damaged {key[:12]}: {why}", markup=False)
        for key, why in report.failed.items():
            console.print(f"failed {key[:12]}: {why}", markup=False)
    if report.damaged or report.failed:
        raise SystemExit(1)


def _remote_failed(exc: RemoteError, report_moved: str) -> click.ClickException:
    return click.ClickException(f"remote cache failed: {exc} {report_moved}")


@click.command(cls=CacheCommand)
@cache_dir_option
@_remote_option
@tool_option
@used_since_option()
@last_use_options
@size_options
@click.option("--dry-run", is_flag=True, help="Only show what would be uploaded.")
@_jobs_option
@json_option
def push(
    *,
    cache_dir: Path | None,
    remote: str | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
    **filters: Any,
) -> None:
    """Upload local entries to the remote cache (those it lacks).

    Takes the filters of `ls` and `export`. Files are uploaded before the
    entry's manifest, so an interrupted push leaves no half entry behind.

    \b
    Examples:
      styxcache push --remote s3://lab-cache/styx
      START=$(date -u +%Y-%m-%dT%H:%M:%SZ); run-pipeline
      styxcache push --used-since "$START"
      styxcache push --tool 'mrtrix/*' --dry-run
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    tier = _tier(remote)
    wanted = EntryFilter(time.time(), **filters)  # the options of _filters.py
    chosen = [
        (e.key, e.size)
        for e in scan_entries(store)
        if e.state == "complete" and wanted.matches(e)
    ]
    try:
        report = push_entries(tier, store, chosen, jobs=jobs, dry_run=dry_run)
    except RemoteError as exc:
        raise _remote_failed(exc, "(entries already uploaded stay)") from None
    finally:
        tier.close()
    _finish(report, "uploaded", tier.url, as_json)


@click.command(cls=CacheCommand)
@cache_dir_option
@_remote_option
@tool_option
@used_since_option("uploaded")
@size_options
@click.option("--dry-run", is_flag=True, help="Only show what would be downloaded.")
@_jobs_option
@json_option
def pull(
    *,
    cache_dir: Path | None,
    remote: str | None,
    tool: str | None,
    used_since: float | None,
    larger_than: int | None,
    smaller_than: int | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
) -> None:
    """Download remote entries into the local cache, verifying every file.

    Each entry's key is recomputed from its manifest and every file is
    checked against its size and blake3 digest before the entry is
    committed; damaged entries are reported and left out (exit code 1).

    \b
    Examples:
      styxcache pull --remote s3://lab-cache/styx --cache-dir /scratch/styx
      styxcache pull --tool 'fsl/*' --used-since 7d
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir, allow_missing=True)
    tier = _tier(remote)

    wanted = EntryFilter(
        time.time(), tool=tool, larger_than=larger_than, smaller_than=smaller_than
    )

    def accept(manifest: Manifest) -> bool:
        return wanted.described_ok(manifest.tool, manifest.total_size)

    if not dry_run:
        store.root.mkdir(parents=True, exist_ok=True)
    try:
        report = pull_entries(
            tier,
            store,
            uploaded_since=used_since,
            accept=accept,
            jobs=jobs,
            dry_run=dry_run,
        )
    except RemoteError as exc:
        raise _remote_failed(exc, "(entries already downloaded stay)") from None
    finally:
        tier.close()
    _finish(report, "downloaded", tier.url, as_json)


COMMANDS: list[click.Command] = [push, pull]
