"""`styxcache verify`: check every entry, quarantine the damaged ones.

Sizes are checked from the catalog's copy of each manifest while the entry
folder and its manifest file are the ones the copy was made from (catalog.py);
anything else goes through the store's full lookup, which says why an entry is
damaged and quarantines it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from styxcache.catalog import (
    CatalogRow,
    append_rows,
    foldable,
    load_catalog,
    row_for,
    write_snapshot,
)
from styxcache.hashing import ContentHasher
from styxcache.inventory import EntryStamp, scan_stamps
from styxcache.manifest import Manifest, ManifestError
from styxcache.quick_verify import whole_flags
from styxcache.store import CacheStore
from styxcache.walk import real_dir

from ._common import (
    CacheCommand,
    cache_dir_option,
    emit_json,
    json_option,
    open_store,
    out_console,
    print_unsafe,
    progress,
)

__all__ = ["verify"]


FOLD_FILES = 16
"""A complete verify folds the `.chk` files into one when more than this."""


@dataclasses.dataclass
class _Tally:
    """What a verify found so far."""

    checked: int = 0
    uncommitted: int = 0
    damaged: list[dict[str, str]] = dataclasses.field(default_factory=list)
    whole: list[str] = dataclasses.field(default_factory=list)
    learned: list[CatalogRow] = dataclasses.field(default_factory=list)


@click.command(cls=CacheCommand)
@cache_dir_option
@click.option("--full", is_flag=True, help="Also compare content digests (reads all).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1, max=64),
    default=min(4, os.cpu_count() or 1),
    show_default="up to 4 cores",
    help="Processes checking sizes at once (large caches only).",
)
@json_option
def verify(*, cache_dir: Path | None, full: bool, jobs: int, as_json: bool) -> None:
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
    catalog = load_catalog(store.root, checks=not full)
    tally = _Tally()
    # No refresh thread: `whole_flags` forks only while no other thread runs
    # (a child could inherit a lock that thread holds).
    with progress("verifying", auto_refresh=False) as bar:
        task = bar.add_task("verify", total=len(stamps))

        def checked(done: int) -> None:  # every 1,024 entries
            bar.update(task, completed=done)
            bar.refresh()

        whole = (
            [False] * len(stamps)
            if full
            else whole_flags(
                store, stamps, catalog.rows, jobs=jobs, on_progress=checked
            )
        )
        for stamp, known in zip(stamps, whole, strict=True):
            if known:
                tally.whole.append(stamp.key)
                tally.checked += 1
            else:
                _check(store, stamp, full, hasher, tally)
    _print_result(str(store.root), full, tally, unsafe, as_json)
    append_rows(store.root, tally.learned)  # the next verify skips these manifests
    folds = foldable(catalog.files, checks=True)
    if len(stamps) == tally.checked and (
        folds > FOLD_FILES
        or (folds and catalog.rows.worth_folding(len(stamps), checks=True))
    ):
        rows = (catalog.rows.get(key) for key in tally.whole)
        kept = [row for row in rows if row is not None]
        write_snapshot(store.root, kept + tally.learned, catalog.files, checks=True)
    if tally.damaged or unsafe:
        raise SystemExit(1)


def _check(
    store: CacheStore,
    stamp: EntryStamp,
    full: bool,
    hasher: ContentHasher,
    tally: _Tally,
) -> None:
    """Verify one entry by the store's full lookup and count what was found."""
    problem = _verify_one(store, stamp.key, full, hasher)
    if problem is None:
        return  # gone meanwhile
    if problem == "" and not full:
        row = _row_after_lookup(store, stamp)
        if row is not None:
            tally.learned.append(row)
    tally.checked += 1
    if problem == "uncommitted":
        tally.uncommitted += 1
    elif problem:
        tally.damaged.append({"key": stamp.key, "reason": problem})


def _print_result(
    root: str, full: bool, tally: _Tally, unsafe: list[dict[str, str]], as_json: bool
) -> None:
    if as_json:
        emit_json(
            {
                "cache_dir": root,
                "mode": "full" if full else "size",
                "checked": tally.checked,
                "damaged": tally.damaged,
                "uncommitted": tally.uncommitted,
                "unsafe": unsafe,
            }
        )
        return
    console = out_console()
    print_unsafe(unsafe)
    for item in tally.damaged:
        console.print(f"damaged {item['key'][:12]}: {item['reason']}", markup=False)
    console.print(
        f"Checked {tally.checked} entries ({'content' if full else 'sizes'}): "
        f"{len(tally.damaged)} damaged and quarantined"
        + (f", {tally.uncommitted} uncommitted runs" if tally.uncommitted else "")
        + "."
    )


def _row_after_lookup(store: CacheStore, stamp: EntryStamp) -> CatalogRow | None:
    try:
        manifest = Manifest.read(Path(stamp.path) / store.MANIFEST)
    except ManifestError:
        return None
    row = row_for(stamp.key, stamp.path, manifest)
    return row if row is not None and row.inode == stamp.inode else None


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
