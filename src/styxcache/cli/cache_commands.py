"""Cache commands: stats, ls, show, explain, verify, gc, clear, export, import.

Exit codes: 0 success; 1 the command worked but found or hit a problem
(damaged entries, a rejected archive); 2 usage errors (a bad option value,
no cache directory, an unknown key prefix).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import heapq
import json
import operator
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from styxcache.catalog import (
    CatalogRow,
    CatalogRows,
    append_rows,
    foldable,
    load_catalog,
    manifest_stamp,
    row_for,
    write_snapshot,
)
from styxcache.gc import GcLimits, SweepAges, collect_garbage
from styxcache.hashing import ContentHasher
from styxcache.inventory import (
    EntryDescriber,
    EntryInfo,
    EntryStamp,
    KeyPrefixError,
    describe_entry,
    resolve_key,
    scan_entries,
    scan_stamps,
)
from styxcache.manifest import Manifest, ManifestError
from styxcache.misses import explain_misses
from styxcache.store import CacheStore
from styxcache.store import _check_outputs as check_outputs
from styxcache.transfer import TransferError, export_entries, import_entries
from styxcache.usage import usage_report, zero_stats
from styxcache.walk import real_dir

from . import _report
from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    err_console,
    json_option,
    open_store,
    out_console,
)
from ._units import DurationType, SizeType, WhenType, human_size, human_time

__all__ = ["COMMANDS"]

_STAMP_KEY = operator.itemgetter(0)
"""An `EntryStamp`'s key (its first field)."""

_SORT_KEYS = {
    "last-used": lambda e: (e.last_used, e.key),
    "created": lambda e: (e.created, e.key),
    "size": lambda e: (e.size, e.key),
    "tool": lambda e: (e.tool, e.key),
    "key": lambda e: (e.key,),
}


def _progress(what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console(),
        transient=True,
        disable=not err_console().is_terminal,
    )


# stats -----------------------------------------------------------------------


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option(
    "--since",
    type=WhenType(),
    help="Only events after this time: a duration ago (24h, 7d) or an ISO date.",
)
@click.option(
    "--zero",
    is_flag=True,
    help="Reset the statistics (running pipelines keep recording).",
)
@json_option
def stats(
    *, cache_dir: Path | None, since: float | None, zero: bool, as_json: bool
) -> None:
    """Show hits, misses, hit rate, time saved and bytes served, per tool.

    \b
    Examples:
      styxcache stats --cache-dir ~/.cache/styx
      styxcache stats --since 24h
      styxcache stats --json | jq .total.hit_rate
      styxcache stats --zero
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    if zero:
        mark = zero_stats(store.root)
        if as_json:
            emit_json({"zeroed_at": mark})
        else:
            out_console().print(f"Statistics of {store.root} zeroed.")
        return
    report = usage_report(store.root, since=since)
    if as_json:
        emit_json({"cache_dir": str(store.root), **report.as_dict()})
    else:
        _report.print_usage(out_console(), str(store.root), report)


# ls --------------------------------------------------------------------------


@click.command(cls=CacheCommand, name="ls")
@cache_dir_option
@click.option("--tool", help="Only entries of this tool (package/id, or a glob).")
@click.option(
    "--unused-for", type=DurationType(), help="Only entries not used for this long."
)
@click.option(
    "--used-within", type=DurationType(), help="Only entries used this recently."
)
@click.option("--larger-than", type=SizeType(), help="Only entries larger than this.")
@click.option("--smaller-than", type=SizeType(), help="Only entries smaller than this.")
@click.option(
    "--sort",
    "sort_by",
    type=click.Choice(sorted(_SORT_KEYS)),
    default="last-used",
    show_default=True,
    help="Order of the listing (largest or newest first).",
)
@click.option("--reverse", is_flag=True, help="Smallest or oldest first.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@json_option
def ls(
    *,
    cache_dir: Path | None,
    tool: str | None,
    unused_for: float | None,
    used_within: float | None,
    larger_than: int | None,
    smaller_than: int | None,
    sort_by: str,
    reverse: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """List entries with their tool, size, creation and last use.

    \b
    Examples:
      styxcache ls --sort size --limit 10
      styxcache ls --tool 'mrtrix/*' --unused-for 30d
      styxcache ls --larger-than 1G --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    now = time.time()
    unsafe: list[dict[str, str]] = []
    stamps = list(
        scan_stamps(
            store,
            on_unsafe=lambda path, why: unsafe.append({"path": path, "reason": why}),
        )
    )
    _print_unsafe(unsafe)
    total = len(stamps)
    recent = [
        s
        for s in stamps
        if (unused_for is None or s.last_used <= now - unused_for)
        and (used_within is None or s.last_used >= now - used_within)
    ]
    describer = EntryDescriber(store)
    rows: Iterator[EntryInfo]
    if (
        tool is None
        and larger_than is None
        and smaller_than is None
        and sort_by in ("last-used", "key")
    ):
        # Ordered by what the scan already knows: only the rows shown are
        # described, one by one as they are printed.
        newest_first = (sort_by == "last-used") != reverse
        order = operator.itemgetter(1, 0) if sort_by == "last-used" else _STAMP_KEY
        matched = len(recent)
        if limit is not None and limit < matched:
            # A page of 50 of 100,000: no need to sort them all.
            pick = heapq.nlargest if newest_first else heapq.nsmallest
            shown = pick(limit, recent, key=order)
        else:
            shown = sorted(recent, key=order, reverse=newest_first)
        rows = (describer.describe(s) for s in shown)
        complete = len(shown) == total
    else:

        def wanted(entry: EntryInfo) -> bool:
            return (
                (
                    tool is None
                    or entry.tool == tool
                    or fnmatch.fnmatchcase(entry.tool, tool)
                )
                and (larger_than is None or entry.size > larger_than)
                and (smaller_than is None or entry.size < smaller_than)
            )

        chosen = sorted(
            (e for e in map(describer.describe, recent) if wanted(e)),
            key=_SORT_KEYS[sort_by],
            reverse=not reverse and sort_by not in ("tool", "key"),
        )
        if reverse and sort_by in ("tool", "key"):
            chosen.reverse()
        matched = len(chosen)
        rows = iter(chosen[:limit] if limit is not None else chosen)
        complete = len(recent) == total
    try:
        if as_json:
            _stream_json_entries(str(store.root), rows, matched, total)
        else:
            _stream_entries(rows, total, now)
    except BrokenPipeError:
        # `styxcache ls | head`: the reader has seen enough, as with `ls`.
        # Python would complain when it flushes stdout at exit: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return
    describer.fold(complete=complete)


def _stream_json_entries(
    root: str, rows: Iterator[EntryInfo], matched: int, total: int
) -> None:
    """Print `ls --json` as one document, written entry by entry."""
    out = sys.stdout
    out.write("{\n" + f'  "cache_dir": {json.dumps(root)},\n  "entries": [')
    for n, entry in enumerate(rows):
        text = json.dumps(entry.as_dict(), indent=2, sort_keys=True)
        out.write(("," if n else "") + "\n    " + text.replace("\n", "\n    "))
    out.write(f'\n  ],\n  "matched": {matched},\n  "total": {total}\n}}\n')
    out.flush()


def _stream_entries(rows: Iterator[EntryInfo], total: int, now: float) -> None:
    """Print `ls` row by row, so a long listing starts at once."""
    out = sys.stdout
    count = size = 0
    for entry in rows:
        if count == 0:
            out.write(
                f"{'Key':<12}  {'Size':>9}  {'Created':<30}  {'Last used':<30}  Tool\n"
            )
        state = "" if entry.state == "complete" else f"  ({entry.state})"
        out.write(
            f"{entry.key[:12]:<12}  {human_size(entry.size):>9}  "
            f"{human_time(entry.created, now=now):<30}  "
            f"{human_time(entry.last_used, now=now):<30}  "
            f"{entry.tool or '?'}{state}\n"
        )
        count += 1
        size += entry.size
        if count < 64 or count % 256 == 0:
            out.flush()  # the first screen at once, then in blocks
    noun = "entry" if total == 1 else "entries"
    shown = f"{count} of {total} {noun}" if count != total else f"{total} {noun}"
    out.write(f"{shown}, {human_size(size)}.\n")
    out.flush()


# show ------------------------------------------------------------------------


@click.command(cls=CacheCommand)
@cache_dir_option
@click.argument("key")
@json_option
def show(*, cache_dir: Path | None, key: str, as_json: bool) -> None:
    """Show one entry: its manifest, key payload and outputs.

    KEY is a full key or a unique prefix (at least 2 characters).

    \b
    Examples:
      styxcache show 8fdb097e
      styxcache show 8fdb097e --json | jq .payload.params
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    try:
        full = resolve_key(store, key)
    except KeyPrefixError as exc:
        raise click.UsageError(str(exc)) from None
    entry = str(store.entry_dir(full))
    info = describe_entry(store, full)
    if info is None:
        raise click.ClickException(f"entry {full[:12]} was removed meanwhile")
    try:
        manifest = Manifest.read(store.entry_dir(full) / store.MANIFEST)
    except ManifestError as exc:
        problem = _uncommitted_reason(store, full) or str(exc)
        if as_json:
            emit_json(
                {"key": full, "path": entry, "state": info.state, "error": problem}
            )
        else:
            out_console().print(
                f"Entry {full} is {info.state} and never served: {problem}",
                markup=False,
            )
        raise SystemExit(1) from None
    if as_json:
        emit_json(
            {
                **json.loads(manifest.to_json()),
                "path": entry,
                "state": info.state,
                "size": info.size,
                "last_used": info.last_used,
            }
        )
        return
    payload = json.dumps(manifest.payload, indent=2, sort_keys=True)
    _report.print_manifest(out_console(), manifest, info, entry, payload)


def _uncommitted_reason(store: CacheStore, key: str) -> str:
    try:
        return (store.entry_dir(key) / store.UNCOMMITTED).read_text().strip()
    except OSError:
        return ""


# explain ---------------------------------------------------------------------


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many of the latest misses to explain.",
)
@click.option("--tool", help="Only misses of this tool (package/id, or a glob).")
@click.option("--since", type=WhenType(), help="Only misses after this time.")
@json_option
def explain(
    *,
    cache_dir: Path | None,
    last: int,
    tool: str | None,
    since: float | None,
    as_json: bool,
) -> None:
    """Say why tools ran again: which key fields differed from the nearest entry.

    For each recent miss, the nearest earlier entry of the same tool is found
    and the differing parameters, input contents, environment variables and
    image digests are listed.

    \b
    Examples:
      styxcache explain
      styxcache explain --tool mrtrix/mrconvert --last 3
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    items = explain_misses(store, last=last, tool=tool, since=since)
    if as_json:
        emit_json(
            {"cache_dir": str(store.root), "misses": [i.as_dict() for i in items]}
        )
    else:
        _report.print_explanations(out_console(), items)


# verify ----------------------------------------------------------------------


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--full", is_flag=True, help="Also compare content digests (reads all).")
@json_option
def verify(*, cache_dir: Path | None, full: bool, as_json: bool) -> None:
    """Check every entry; quarantine damaged ones. Exit code 1 if any were found.

    Checks that each output is present with its recorded size, or with
    --full its recorded blake3 digest. Damaged entries are moved to
    <cache>/.quarantine/ with a note saying why, and recomputed on next use.

    \b
    Examples:
      styxcache verify
      styxcache verify --full --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    hasher = ContentHasher()
    unsafe: list[dict[str, str]] = []
    stamps = list(
        scan_stamps(
            store,
            on_unsafe=lambda path, why: unsafe.append({"path": path, "reason": why}),
        )
    )
    catalog = load_catalog(store.root, checks=True)
    learned: list[CatalogRow] = []
    whole: list[CatalogRow] = []
    damaged: list[dict[str, str]] = []
    uncommitted = 0
    checked = 0
    with _progress("verifying") as progress:
        task = progress.add_task("verify", total=len(stamps))
        for n, stamp in enumerate(stamps):
            if n % 256 == 0:
                progress.update(task, completed=n)
            key = stamp.key
            known = None if full else _unchanged_and_whole(store, stamp, catalog.rows)
            if known is not None:
                whole.append(known)
                checked += 1
                continue
            problem = _verify_one(store, key, full, hasher)
            if problem is None:
                continue  # gone meanwhile
            if problem == "" and not full:
                row = _row_after_lookup(store, stamp)
                if row is not None:
                    learned.append(row)
            checked += 1
            if problem == "uncommitted":
                uncommitted += 1
            elif problem:
                damaged.append({"key": key, "reason": problem})
    if as_json:
        emit_json(
            {
                "cache_dir": str(store.root),
                "mode": "full" if full else "size",
                "checked": checked,
                "damaged": damaged,
                "uncommitted": uncommitted,
                "unsafe": unsafe,
            }
        )
    else:
        console = out_console()
        _print_unsafe(unsafe)
        for item in damaged:
            console.print(f"damaged {item['key'][:12]}: {item['reason']}", markup=False)
        console.print(
            f"Checked {checked} entries ({'content' if full else 'sizes'}): "
            f"{len(damaged)} damaged and quarantined"
            + (f", {uncommitted} uncommitted runs" if uncommitted else "")
            + "."
        )
    append_rows(store.root, learned)  # the next verify skips these manifests
    if len(stamps) == checked and foldable(catalog.files, checks=True) > 16:
        write_snapshot(store.root, whole + learned, catalog.files, checks=True)
    if damaged or unsafe:
        raise SystemExit(1)


def _unchanged_and_whole(
    store: CacheStore, stamp: EntryStamp, rows: CatalogRows
) -> CatalogRow | None:
    """Check an entry's sizes against its catalog row, without its manifest.

    Valid only while the entry folder and its manifest file are the ones
    the row was written for (same inodes, and the manifest's size, mtime
    and ctime unchanged): then the row's copy of the manifest (all but the
    key payload) is the manifest. The checks are the store's own. Anything
    else, or any problem found, goes through the full lookup, which says
    why and quarantines.
    """
    row = rows.get(stamp.key)
    if row is None or row.inode != stamp.inode or "-" in (row.stamp, row.checks):
        return None
    entry = stamp.path
    if manifest_stamp(os.path.join(entry, store.MANIFEST)) != row.stamp:
        return None
    if not os.path.exists(os.path.join(entry, store.DONE_MARKER)):
        return None
    try:
        manifest = Manifest.from_json(row.checks)
    except ManifestError:
        return None
    if manifest.key != stamp.key:
        return None
    return row if check_outputs(Path(entry), manifest, "size", None) == "" else None


def _row_after_lookup(store: CacheStore, stamp: EntryStamp) -> CatalogRow | None:
    try:
        manifest = Manifest.read(Path(stamp.path) / store.MANIFEST)
    except ManifestError:
        return None
    row = row_for(stamp.key, stamp.path, manifest)
    return row if row is not None and row.inode == stamp.inode else None


def _print_unsafe(unsafe: list[dict[str, str]]) -> None:
    console = err_console()
    for item in unsafe:
        console.print(
            f"warning: skipped {item['path']}: it {item['reason']}", markup=False
        )


def _verify_one(
    store: CacheStore, key: str, full: bool, hasher: ContentHasher
) -> str | None:
    """Return "" for a good entry, "uncommitted", a damage reason, or None if gone."""
    mode = "full" if full else "size"
    try:
        first = store.lookup(
            key, verify=mode, hash_file=hasher.hash_file, quarantine=False
        )
        if first.manifest is not None:
            return ""
        if not first.damaged:
            return "uncommitted" if real_dir(store.entry_dir(key)) else None
        # Look again before moving it: gc or a refresh may have been mid-move.
        second = store.lookup(
            key, verify=mode, hash_file=hasher.hash_file, quarantine=False
        )
    except OSError:
        # A file vanished while it was read: gc or a refresh took the entry.
        return None if not real_dir(store.entry_dir(key)) else ""
    if second.manifest is None and not second.damaged:
        return None if not real_dir(store.entry_dir(key)) else "uncommitted"
    if second.manifest is not None:
        return ""
    if store.quarantine(key, second.reason) is None:
        return None
    return second.reason.removeprefix("entry was damaged (").removesuffix(")")


# gc and clear ----------------------------------------------------------------


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--max-size", type=SizeType(), help="Trim to at most this size (50G).")
@click.option(
    "--max-entries", type=click.IntRange(min=0), help="Keep at most this many entries."
)
@click.option(
    "--older-than", type=DurationType(), help="Remove entries not used for this long."
)
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option(
    "--keep-recent",
    type=DurationType(),
    default="10m",
    show_default=True,
    help="Never remove entries used this recently (a pipeline may be reading them).",
)
@click.option(
    "--staging-age",
    type=DurationType(),
    default="1d",
    show_default=True,
    help="Sweep unleased staging folders older than this.",
)
@click.option(
    "--failed-age",
    type=DurationType(),
    default="7d",
    show_default=True,
    help="Sweep kept failed runs older than this.",
)
@click.option(
    "--quarantine-age",
    type=DurationType(),
    default="30d",
    show_default=True,
    help="Sweep quarantined entries older than this.",
)
@json_option
def gc(
    *,
    cache_dir: Path | None,
    max_size: int | None,
    max_entries: int | None,
    older_than: float | None,
    dry_run: bool,
    keep_recent: float,
    staging_age: float,
    failed_age: float,
    quarantine_age: float,
    as_json: bool,
) -> None:
    """Trim the cache, least recently used first; sweep leftovers.

    Last use is recorded by the cache on every hit (not atime). Safe to run
    from cron while pipelines run: entries held by running executions, used
    in the last --keep-recent, or used while gc runs are kept. Without a
    limit, only leftovers are swept (crashed staging, old failed runs, old
    quarantine).

    \b
    Examples:
      styxcache gc --max-size 50G
      styxcache gc --older-than 30d --dry-run
      styxcache gc --max-entries 1000 --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    limits = GcLimits(
        max_size=max_size, max_entries=max_entries, older_than_s=older_than
    )
    ages = SweepAges(
        staging_s=staging_age, failed_s=failed_age, quarantine_s=quarantine_age
    )
    started = time.time()
    report = collect_garbage(
        store,
        limits,
        dry_run=dry_run,
        ages=ages,
        keep_used_after=started - keep_recent,
        clock=lambda: started,
    )
    if as_json:
        emit_json({"cache_dir": str(store.root), **report.as_dict()})
    else:
        _print_unsafe([dataclasses.asdict(u) for u in report.unsafe])
        _report.print_gc(out_console(), report)
    if report.unsafe:
        raise SystemExit(1)


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def clear(*, cache_dir: Path | None, yes: bool, as_json: bool) -> None:
    """Remove every entry (asks first), keeping those in use right now.

    Statistics are kept; use `styxcache stats --zero` to reset them.

    \b
    Examples:
      styxcache clear
      styxcache clear --yes
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    if not yes:
        entries = list(scan_entries(store))
        size = human_size(sum(e.size for e in entries))
        click.confirm(
            f"Remove all {len(entries)} entries ({size}) from {store.root}?",
            abort=True,
            err=True,
        )
    ages = SweepAges(failed_s=0.0, quarantine_s=0.0)
    report = collect_garbage(store, GcLimits(max_entries=0), ages=ages)
    report.removed = [dataclasses.replace(r, why="clear") for r in report.removed]
    if as_json:
        emit_json({"cache_dir": str(store.root), **report.as_dict()})
    else:
        _print_unsafe([dataclasses.asdict(u) for u in report.unsafe])
        _report.print_gc(out_console(), report)
    if report.unsafe:
        raise SystemExit(1)


# export and import -------------------------------------------------------------


@click.command(cls=CacheCommand, name="export")
@cache_dir_option
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--used-since",
    type=WhenType(),
    help="Only entries used after this time: a duration ago (2h) or an ISO date.",
)
@click.option("--tool", help="Only entries of this tool (package/id, or a glob).")
@json_option
def export_command(
    *,
    cache_dir: Path | None,
    out: Path,
    used_since: float | None,
    tool: str | None,
    as_json: bool,
) -> None:
    """Write entries to OUT.tar.gz, e.g. just those a CI run used.

    \b
    Examples:
      START=$(date -u +%Y-%m-%dT%H:%M:%SZ); run-pipeline
      styxcache export --used-since "$START" used.tar.gz
      styxcache export --tool 'fsl/*' fsl.tar.gz
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)

    def select(entry: EntryInfo) -> bool:
        return (
            tool is None or entry.tool == tool or fnmatch.fnmatchcase(entry.tool, tool)
        )

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
    with _progress("verifying") as progress:
        task = progress.add_task("verify", total=None)
        try:
            report = import_entries(
                store, source, on_verified=lambda _key: progress.advance(task)
            )
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


COMMANDS: list[click.Command] = [
    stats,
    ls,
    show,
    explain,
    verify,
    gc,
    clear,
    export_command,
    import_command,
]
