"""Text rendering of cache reports: rich tables and one-line summaries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from ._units import human_duration, human_size, human_time

if TYPE_CHECKING:  # annotations only: `stats` need not import gc or inventory
    from rich.console import Console

    from styxcache.events import CacheStats
    from styxcache.gc import GcReport
    from styxcache.inventory import EntryInfo
    from styxcache.manifest import Manifest
    from styxcache.misses import MissExplanation
    from styxcache.usage import UsageReport

__all__ = [
    "print_entries",
    "print_explanations",
    "print_gc",
    "print_manifest",
    "print_usage",
]

_MAX_ROWS = 50
"""Rows shown by the summary tables of gc; the rest are counted."""


_SWEPT_LABELS = {
    "staging": "staging folders",
    "failed": "failed runs",
    "quarantine": "quarantined items",
    "trash": "trash leftovers",
    "index": "index records",
    "shard": "empty shard folders",
}


def _stats_row(name: str, stats: CacheStats) -> list[str]:
    return [
        name,
        str(stats.hits),
        str(stats.misses),
        str(stats.refreshed),
        str(stats.bypassed),
        f"{100 * stats.hit_rate:.1f} %",
        human_duration(stats.time_saved_s),
        human_size(stats.bytes_served),
    ]


def print_usage(console: Console, root: str, report: UsageReport) -> None:
    """Print `styxcache stats`."""
    since = f" since {human_time(report.since)}" if report.since is not None else ""
    console.print(f"Cache {root}{since}")
    if not report.tools:
        console.print("No cache events recorded yet.")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for title in ("Tool", "Hits", "Misses", "Refreshed", "Bypassed"):
        table.add_column(title, justify="left" if title == "Tool" else "right")
    for title in ("Hit rate", "Time saved", "Served"):
        table.add_column(title, justify="right")
    for name, stats in report.tools.items():
        table.add_row(*_stats_row(name, stats))
    table.add_section()
    table.add_row(*_stats_row("Total", report.total), style="bold")
    console.print(table)
    total = report.total
    if any(v for k, v in total.as_dict().items() if k.startswith("remote_")):
        console.print(
            f"Remote tier: {total.remote_hits} hits served from it, "
            f"{total.remote_uploads} entries uploaded, {total.remote_damaged} "
            f"damaged entries refused, {total.remote_errors} failures "
            f"({total.remote_offline} steps skipped it while unreachable)."
        )
    console.print(
        f"Events from {human_time(report.first)} to {human_time(report.last)}."
    )


def print_entries(console: Console, entries: Sequence[EntryInfo], total: int) -> None:
    """Print `styxcache ls`."""
    now = time.time()
    if entries:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("Key")
        table.add_column("Tool")
        table.add_column("Size", justify="right")
        table.add_column("Created")
        table.add_column("Last used")
        show_state = any(e.state != "complete" for e in entries)
        if show_state:
            table.add_column("State")
        for entry in entries:
            row = [
                entry.key[:12],
                entry.tool or "?",
                human_size(entry.size),
                human_time(entry.created, now=now),
                human_time(entry.last_used, now=now),
            ]
            table.add_row(*row, *([entry.state] if show_state else []))
        console.print(table)
    shown = sum(e.size for e in entries)
    console.print(
        f"{len(entries)} of {_count(total, 'entry', 'entries')}, {human_size(shown)}."
        if len(entries) != total
        else f"{_count(total, 'entry', 'entries')}, {human_size(shown)}."
    )


def print_manifest(
    console: Console, manifest: Manifest, entry: EntryInfo, path: str, payload: str
) -> None:
    """Print `styxcache show`."""
    now = time.time()
    fields = [
        ("Key", manifest.key),
        ("Tool", manifest.tool),
        ("Folder", path),
        ("State", entry.state),
        ("Created", human_time(manifest.created, now=now)),
        ("Last used", human_time(entry.last_used, now=now)),
        ("Tool ran for", human_duration(manifest.duration_s)),
        ("Size", f"{human_size(entry.size)} in {_files(len(manifest.outputs))}"),
        (
            "Log lines",
            f"{manifest.stdout_lines} stdout, {manifest.stderr_lines} stderr",
        ),
        ("Written by", f"styxcache {manifest.version or '?'}"),
        ("Fingerprint", manifest.fingerprint[:16]),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        console.print(f"{name + ':':<{width + 1}} {value}")
    console.print("\nKey payload:")
    console.print(payload, markup=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("Output")
    table.add_column("Size", justify="right")
    table.add_column("blake3")
    for record in manifest.outputs:
        target = f" -> {record.link}" if record.link is not None else ""
        table.add_row(record.path + target, human_size(record.size), record.digest[:16])
    console.print("\nOutputs:")
    console.print(table)
    if manifest.absent:
        # A hit serves these absent too, as the run left them.
        console.print("\nDeclared, not written by the tool:")
        for name in manifest.absent:
            console.print(f"  {name}", markup=False)
    if manifest.outside:
        console.print("\nOutside the cache (checked unchanged on every hit):")
        for item in manifest.outside:
            state = (
                f"{human_size(item.size)}, {item.digest[:16]}"
                if item.present
                else "absent"
            )
            console.print(f"  {item.path} ({state})", markup=False)


def _files(count: int) -> str:
    return _count(count, "file", "files")


def _count(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def print_explanations(console: Console, items: Sequence[MissExplanation]) -> None:
    """Print `styxcache explain`."""
    if not items:
        console.print("No misses recorded.")
        return
    now = time.time()
    for item in items:
        console.print(
            Text.assemble(
                f"{human_time(item.time, now=now)}  {item.kind} ",
                (item.tool, "bold"),
                f"  key {item.key[:12]}",
            )
        )
        if item.nearest:
            console.print(f"  nearest earlier entry {item.nearest[:12]}:")
            for line in item.differences or ("identical key",):
                console.print(f"    - {line}", markup=False)
        else:
            text = item.recorded or "no earlier entry of this tool"
            console.print(f"  {text}", markup=False)
        recorded = item.recorded
        if item.nearest and recorded and not recorded.startswith("nearest entry"):
            console.print(f"  recorded reason: {recorded}", markup=False)
        if item.absent:
            console.print(
                f"  declared, not written by the tool: {', '.join(item.absent)}",
                markup=False,
            )


def print_gc(console: Console, report: GcReport) -> None:
    """Print `styxcache gc` and `styxcache clear`."""
    verb = "Would remove" if report.dry_run else "Removed"
    if report.removed:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for title in ("Key", "Tool", "Size", "Last used", "Why"):
            table.add_column(title, justify="right" if title == "Size" else "left")
        for removal in report.removed[:_MAX_ROWS]:
            entry = removal.entry
            table.add_row(
                entry.key[:12],
                entry.tool or "?",
                human_size(entry.size),
                human_time(entry.last_used),
                removal.why,
            )
        console.print(table)
        if len(report.removed) > _MAX_ROWS:
            console.print(f"... and {len(report.removed) - _MAX_ROWS} more.")
    console.print(
        f"{verb} {len(report.removed)} of "
        f"{_count(report.entries_before, 'entry', 'entries')} "
        f"({human_size(report.bytes_freed)}); "
        f"{_count(report.entries_after, 'entry', 'entries')}, "
        f"{human_size(report.bytes_after)} left."
    )
    if report.skipped:
        reasons: dict[str, int] = {}
        for skip in report.skipped:
            reasons[skip.reason] = reasons.get(skip.reason, 0) + 1
        kept = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        console.print(f"Kept {len(report.skipped)} selected entries: {kept}.")
    if report.swept:
        kinds: dict[str, tuple[int, int]] = {}
        for item in report.swept:
            count, size = kinds.get(item.kind, (0, 0))
            kinds[item.kind] = (count + 1, size + item.size)
        swept = ", ".join(
            f"{count} {_SWEPT_LABELS.get(kind, kind)} ({human_size(size)})"
            for kind, (count, size) in sorted(kinds.items())
        )
        console.print(f"{'Would sweep' if report.dry_run else 'Swept'} {swept}.")
