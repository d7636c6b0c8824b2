"""The index of last uses picks `ls` pages without an lstat per entry, and stays right."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from clihelpers import cli, cli_json, key_of, make_runner, set_last_use, write_block

from styxcache.catalog import CATALOG_DIR
from styxcache.cli import ls_command
from styxcache.last_use import page_by_last_use
from styxcache.store import CacheStore


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, list[str], Path]:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "scratch")
    keys = [
        key_of(write_block(runner, source, size=8, n=n)["out"], cache) for n in range(6)
    ]
    return cache, keys, source


def by_folder_time(cache: Path) -> list[str]:
    """Every key, most recently used first, from the folders themselves."""
    store = CacheStore(cache)
    found = [
        (os.lstat(store.entry_dir(k)).st_mtime, k)
        for k in (p.name for p in cache.glob("??/*"))
    ]
    return [k for _, k in sorted(found, reverse=True)]


def listed(cache: Path, *args: str) -> list[str]:
    return [
        e["key"] for e in cli_json("ls", "--cache-dir", str(cache), *args)["entries"]
    ]


def test_hits_reorder_the_page_without_a_scan(
    cache: tuple[Path, list[str], Path], tmp_path: Path
) -> None:
    root, keys, source = cache
    runner = make_runner(root, tmp_path / "again")
    for n in (1, 3):  # hits: each notes its use in the index
        write_block(runner, source, size=8, n=n)
    page = page_by_last_use(CacheStore(root), 2)
    assert page is not None  # picked from the index, not by a full scan
    assert {s.key for s in page.stamps} == {keys[3], keys[1]}
    assert [s.key for s in page.stamps] == by_folder_time(root)[:2]
    assert page.total == 6
    assert listed(root, "--limit", "2") == by_folder_time(root)[:2]
    assert listed(root) == by_folder_time(root)
    oldest = page_by_last_use(CacheStore(root), 2, newest_first=False)
    assert oldest is not None
    assert [s.key for s in oldest.stamps] == by_folder_time(root)[::-1][:2]


def test_a_time_set_by_hand_is_caught_and_the_index_rewritten(
    cache: tuple[Path, list[str], Path],
) -> None:
    root, _, _ = cache
    newest = by_folder_time(root)[0]
    # The index says `newest` was used last; its folder now says otherwise.
    set_last_use(root, newest, time.time() - 86400)
    assert page_by_last_use(CacheStore(root), 1) is None  # stale: scan instead
    assert listed(root, "--limit", "1") == by_folder_time(root)[:1]
    # That listing rewrote the index from the folders' times.
    page = page_by_last_use(CacheStore(root), 6)
    assert page is not None
    assert [s.key for s in page.stamps] == by_folder_time(root)
    assert page.stamps[-1].key == newest


def test_entries_unknown_to_the_index_and_removed_ones(
    cache: tuple[Path, list[str], Path],
) -> None:
    root, _, _ = cache
    shutil.rmtree(root / CATALOG_DIR)  # an old cache, or a catalog lost
    page = page_by_last_use(CacheStore(root), 3)
    assert page is not None and page.total == 6
    assert [s.key for s in page.stamps] == by_folder_time(root)[:3]
    shutil.rmtree(CacheStore(root).entry_dir(by_folder_time(root)[0]))
    assert listed(root, "--limit", "3") == by_folder_time(root)[:3]
    result = cli_json("ls", "--cache-dir", str(root), "--limit", "3")
    assert result["total"] == 5


def test_a_full_listing_starts_from_the_index_then_reads_every_folder(
    cache: tuple[Path, list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, keys, _ = cache
    monkeypatch.setattr(ls_command, "FIRST_ROWS", 2)
    assert listed(root) == by_folder_time(root)
    assert listed(root, "--reverse") == by_folder_time(root)[::-1]
    # A folder time set by hand past the first rows: still every entry, once.
    set_last_use(root, by_folder_time(root)[-1], time.time() + 3600)
    everything = listed(root)
    assert sorted(everything) == sorted(keys)


def test_a_later_time_set_by_hand_is_learned_by_the_next_full_scan(
    cache: tuple[Path, list[str], Path],
) -> None:
    root, _, _ = cache
    oldest = by_folder_time(root)[-1]
    set_last_use(root, oldest, time.time() + 3600)  # `touch`, not a hit
    assert cli("gc", "--cache-dir", str(root)).exit_code == 0  # (removes nothing)
    page = page_by_last_use(CacheStore(root), 1)
    assert page is not None and [s.key for s in page.stamps] == [oldest]
