"""Commands that report what a cache holds: stats, show, explain.

Exit codes as for every cache command: 0 success; 1 the command worked but
found a problem; 2 usage errors (a bad option value, no cache directory,
an unknown key prefix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from styxcache.errors import KeyPrefixError
from styxcache.usage import usage_report, zero_stats

from . import _report
from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    json_option,
    open_store,
    out_console,
)
from ._units import WhenType

if TYPE_CHECKING:
    from styxcache.store import CacheStore

__all__ = ["explain", "show", "stats"]


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
    # Imported here: `stats` on a big cache should not pay for them.
    from styxcache.inventory import describe_entry, resolve_key
    from styxcache.manifest import Manifest, ManifestError

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
    from styxcache.misses import explain_misses  # see `show`

    store = open_store(cache_dir)
    items = explain_misses(store, last=last, tool=tool, since=since)
    if as_json:
        emit_json(
            {"cache_dir": str(store.root), "misses": [i.as_dict() for i in items]}
        )
    else:
        _report.print_explanations(out_console(), items)
