"""`styxcache ls`: list entries, a page at once or streamed.

By last use (the default order, without filters) the page comes from the
catalog's index of last uses (last_use.py): only the entries near the page
are `lstat`-ed, and a full listing prints its first rows before the other
folders are read. Other orders and filters read every folder's time and
describe only the rows they need.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import operator
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from styxcache.inventory import EntryDescriber, EntryInfo, EntryStamp, scan_stamps
from styxcache.last_use import LastUsePage, page_by_last_use, refresh_index
from styxcache.store import CacheStore
from styxcache.walk import UnsafeHandler

from ._common import (
    CacheCommand,
    cache_dir_option,
    err_console,
    json_option,
    open_store,
    print_unsafe,
)
from ._filters import EntryFilter, last_use_options, size_options, tool_option
from ._units import human_size, human_time

__all__ = ["ls"]

FIRST_ROWS = 64
"""A full listing by last use prints this many rows before reading every folder."""

_BY_USE = operator.itemgetter(1, 0)
"""An `EntryStamp`'s (last use, key)."""
_BY_KEY = operator.itemgetter(0)

_SORT_KEYS: dict[str, Callable[[EntryInfo], tuple[object, ...]]] = {
    "last-used": lambda e: (e.last_used, e.key),
    "created": lambda e: (e.created, e.key),
    "size": lambda e: (e.size, e.key),
    "tool": lambda e: (e.tool, e.key),
    "key": lambda e: (e.key,),
}


@dataclasses.dataclass
class _Listing:
    """What `ls` prints: rows (described as they are printed) and counts."""

    rows: Iterator[EntryInfo]
    matched: int
    total: int
    finish: Callable[[], None] = lambda: None


@click.command(cls=CacheCommand, name="ls")
@cache_dir_option
@tool_option
@last_use_options
@size_options
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
    sort_by: str,
    reverse: bool,
    limit: int | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """List entries with their tool, size, creation and last use.

    \b
    Examples:
      styxcache ls --sort size --limit 10
      styxcache ls --tool 'mrtrix/*' --unused-for 30d
      styxcache ls --larger-than 1G --json
    """  # noqa: D301 - click's \b keeps the examples unwrapped
    store = open_store(cache_dir)
    wanted = EntryFilter(time.time(), **filters)  # the options of _filters.py
    unsafe: list[dict[str, str]] = []

    def note(path: str, why: str) -> None:
        unsafe.append({"path": path, "reason": why})

    listing = None
    if wanted.by_nothing and sort_by == "last-used":
        listing = _from_index(store, limit, newest_first=not reverse, on_unsafe=note)
    if listing is None:
        listing = _from_scan(store, wanted, sort_by, reverse, limit, note)
    print_unsafe(unsafe)
    try:
        if as_json:
            _stream_json(str(store.root), listing)
        else:
            _stream_text(listing, wanted.now)
    except BrokenPipeError:
        # `styxcache ls | head`: the reader has seen enough, as with `ls`.
        # Python would complain when it flushes stdout at exit: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return
    listing.finish()


def _from_index(
    store: CacheStore,
    limit: int | None,
    *,
    newest_first: bool,
    on_unsafe: UnsafeHandler,
) -> _Listing | None:
    """A listing by last use from the index; None when the index is stale."""
    started = time.time_ns()  # before any folder's time is read
    page = page_by_last_use(
        store, limit or FIRST_ROWS, newest_first=newest_first, on_unsafe=on_unsafe
    )
    if page is None:
        return None
    describer = EntryDescriber(store, page.catalog, started_ns=started)
    whole = len(page.stamps) == page.total
    if limit is not None or whole:
        return _Listing(
            map(describer.describe, page.stamps),
            page.total,
            page.total,
            lambda: describer.fold(complete=whole),
        )
    rows = _then_the_rest(store, describer, page, newest_first)
    return _Listing(rows, page.total, page.total)


def _then_the_rest(
    store: CacheStore, describer: EntryDescriber, page: LastUsePage, newest_first: bool
) -> Iterator[EntryInfo]:
    """The first rows from the index, then the others from a scan of every folder."""
    yield from map(describer.describe, page.stamps)
    shown = {stamp.key for stamp in page.stamps}
    # Links were reported by the page's own walk.
    rest = [
        s
        for s in scan_stamps(store, on_unsafe=lambda _path, _why: None)
        if s.key not in shown
    ]
    rest.sort(key=_BY_USE, reverse=newest_first)
    yield from map(describer.describe, rest)
    describer.fold(complete=True)  # rewrites the index if it had a time wrong
    if rest and page.stamps and _out_of_order(page.stamps[-1], rest[0], newest_first):
        # A folder's time was set outside styxcache after the index saw it.
        err_console().print(
            "note: the first rows were ordered by a stale index of last uses "
            "(a folder's time was set outside styxcache); it is rewritten now",
            markup=False,
        )


def _out_of_order(last: EntryStamp, following: EntryStamp, newest_first: bool) -> bool:
    before = (last.last_used, last.key)
    after = (following.last_used, following.key)
    return after > before if newest_first else after < before


def _from_scan(
    store: CacheStore,
    wanted: EntryFilter,
    sort_by: str,
    reverse: bool,
    limit: int | None,
    on_unsafe: UnsafeHandler,
) -> _Listing:
    """A listing from every folder's time; rows described only as needed."""
    describer = EntryDescriber(store)  # (notes the time the scan starts)
    stamps = list(scan_stamps(store, on_unsafe=on_unsafe))
    total = len(stamps)
    recent = [s for s in stamps if wanted.last_use_ok(s.last_used)]
    if wanted.by_last_use_only and sort_by in ("last-used", "key"):
        # Ordered by what the scan already knows: only the rows shown are
        # described, one by one as they are printed.
        newest_first = (sort_by == "last-used") != reverse
        order = _BY_USE if sort_by == "last-used" else _BY_KEY
        if limit is not None and limit < len(recent):
            # A page of 50 of 100,000: no need to sort them all.
            pick = heapq.nlargest if newest_first else heapq.nsmallest
            shown = pick(limit, recent, key=order)
        else:
            shown = sorted(recent, key=order, reverse=newest_first)
        complete = len(shown) == total

        def finish() -> None:
            if not (sort_by == "last-used" and wanted.by_nothing):
                describer.fold(complete=complete)
            elif complete:
                # The index could not pick this listing: rewrite it from the
                # times just read, so the next one can.
                describer.snapshot()
            else:
                describer.fold(complete=False)
                refresh_index(store, stamps, describer.catalog, describer.started_ns)

        return _Listing(map(describer.describe, shown), len(recent), total, finish)
    chosen = sorted(
        (e for e in map(describer.describe, recent) if wanted.matches(e)),
        key=_SORT_KEYS[sort_by],
        reverse=not reverse and sort_by not in ("tool", "key"),
    )
    if reverse and sort_by in ("tool", "key"):
        chosen.reverse()
    complete = len(recent) == total
    return _Listing(
        iter(chosen[:limit] if limit is not None else chosen),
        len(chosen),
        total,
        lambda: describer.fold(complete=complete),
    )


def _stream_json(root: str, listing: _Listing) -> None:
    """Print `ls --json` as one document, written entry by entry."""
    out = sys.stdout
    out.write("{\n" + f'  "cache_dir": {json.dumps(root)},\n  "entries": [')
    for n, entry in enumerate(listing.rows):
        text = json.dumps(entry.as_dict(), indent=2, sort_keys=True)
        out.write(("," if n else "") + "\n    " + text.replace("\n", "\n    "))
    out.write(
        f'\n  ],\n  "matched": {listing.matched},\n  "total": {listing.total}\n}}\n'
    )
    out.flush()


def _stream_text(listing: _Listing, now: float) -> None:
    """Print `ls` row by row, so a long listing starts at once."""
    out = sys.stdout
    count = size = 0
    for entry in listing.rows:
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
        if count < FIRST_ROWS or count % 256 == 0:
            out.flush()  # the first screen at once, then in blocks
    total = listing.total
    noun = "entry" if total == 1 else "entries"
    shown = f"{count} of {total} {noun}" if count != total else f"{total} {noun}"
    out.write(f"{shown}, {human_size(size)}.\n")
    out.flush()
