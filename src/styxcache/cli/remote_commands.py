"""Remote tier commands: push and pull entries to and from object storage.

Exit codes as for the other cache commands: 0 success; 1 the remote failed,
or some entries were damaged or could not be moved; 2 usage errors.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path

import click

from styxcache.inventory import EntryInfo, scan_entries
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
from ._units import DurationType, SizeType, WhenType, human_size

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


def _tool_matches(pattern: str | None, tool: str) -> bool:
    return pattern is None or tool == pattern or fnmatch.fnmatchcase(tool, pattern)


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
@click.option("--tool", help="Only entries of this tool (package/id, or a glob).")
@click.option(
    "--used-since",
    type=WhenType(),
    help="Only entries used after this time: a duration ago (2h) or an ISO date.",
)
@click.option(
    "--unused-for", type=DurationType(), help="Only entries not used for this long."
)
@click.option(
    "--used-within", type=DurationType(), help="Only entries used this recently."
)
@click.option("--larger-than", type=SizeType(), help="Only entries larger than this.")
@click.option("--smaller-than", type=SizeType(), help="Only entries smaller than this.")
@click.option("--dry-run", is_flag=True, help="Only show what would be uploaded.")
@_jobs_option
@json_option
def push(
    *,
    cache_dir: Path | None,
    remote: str | None,
    tool: str | None,
    used_since: float | None,
    unused_for: float | None,
    used_within: float | None,
    larger_than: int | None,
    smaller_than: int | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
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
    now = time.time()

    def wanted(entry: EntryInfo) -> bool:
        return (
            entry.state == "complete"
            and _tool_matches(tool, entry.tool)
            and (used_since is None or entry.last_used >= used_since)
            and (unused_for is None or entry.last_used <= now - unused_for)
            and (used_within is None or entry.last_used >= now - used_within)
            and (larger_than is None or entry.size > larger_than)
            and (smaller_than is None or entry.size < smaller_than)
        )

    chosen = [(e.key, e.size) for e in scan_entries(store) if wanted(e)]
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
@click.option("--tool", help="Only entries of this tool (package/id, or a glob).")
@click.option(
    "--used-since",
    type=WhenType(),
    help="Only entries uploaded after this time: a duration ago (2h) or an ISO date.",
)
@click.option("--larger-than", type=SizeType(), help="Only entries larger than this.")
@click.option("--smaller-than", type=SizeType(), help="Only entries smaller than this.")
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

    def accept(manifest: Manifest) -> bool:
        size = manifest.total_size
        return (
            _tool_matches(tool, manifest.tool)
            and (larger_than is None or size > larger_than)
            and (smaller_than is None or size < smaller_than)
        )

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
