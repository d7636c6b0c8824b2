"""`styxcache gc` / `clear` and `gc.collect_garbage` on real caches."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from clihelpers import (
    WRITE,
    cli,
    cli_json,
    key_of,
    make_runner,
    set_last_use,
    tree_snapshot,
    write_block,
)
from styxdefs import StyxRuntimeError

from conftest import run_tool
from styxcache import lease
from styxcache.gc import (
    GcLimits,
    SweepAges,
    _remove_entry,
    collect_garbage,
    lease_is_live,
)
from styxcache.inventory import scan_entries
from styxcache.store import CacheStore

DAY = 86400.0


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[str]]:
    """A cache with four 10 KiB entries, last used 4, 3, 2 and 1 days ago."""
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch")
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    keys = []
    for n in range(4):
        out = write_block(runner, source, size=10 * 1024, n=n)
        keys.append(key_of(out["out"], cache))
    now = time.time()
    for age, key in zip((4, 3, 2, 1), keys, strict=True):
        set_last_use(cache, key, now - age * DAY)
    return cache, keys


def remaining(cache: Path) -> list[str]:
    return sorted(CacheStore(cache).iter_keys())


def test_max_size_removes_least_recently_used_first(
    filled: tuple[Path, list[str]],
) -> None:
    cache, keys = filled
    # Touching the oldest entry makes it the most recently used.
    write_block(
        make_runner(cache, cache.parent / "s2"),
        cache.parent / "in.txt",
        size=10 * 1024,
        n=0,
    )
    report = cli_json("gc", "--cache-dir", str(cache), "--max-size", "25K")
    removed = [item["key"] for item in report["removed"]]
    assert removed == [keys[1], keys[2]]
    assert remaining(cache) == sorted([keys[0], keys[3]])
    assert report["bytes_after"] <= 25 * 1024
    assert all(item["why"] == "max-size" for item in report["removed"])


def test_max_entries_and_older_than(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    result = cli("gc", "--cache-dir", str(cache), "--older-than", "2.5d")
    assert result.exit_code == 0, result.output
    assert "Removed 2 of 4 entries" in result.stdout
    assert remaining(cache) == sorted(keys[2:])
    report = cli_json("gc", "--cache-dir", str(cache), "--max-entries", "1")
    assert [r["key"] for r in report["removed"]] == [keys[2]]
    assert remaining(cache) == [keys[3]]


def test_dry_run_changes_nothing(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    before = tree_snapshot(cache)
    mtimes = {k: CacheStore(cache).entry_dir(k).stat().st_mtime for k in keys}
    result = cli("gc", "--cache-dir", str(cache), "--max-entries", "0", "--dry-run")
    assert result.exit_code == 0
    assert "Would remove 4 of 4 entries" in result.stdout
    assert tree_snapshot(cache) == before
    assert mtimes == {k: CacheStore(cache).entry_dir(k).stat().st_mtime for k in keys}


def test_entry_held_by_a_live_lease_is_kept(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    store = CacheStore(cache)
    with lease.acquire(
        cache / store.LOCKS_DIR,
        keys[0],
        lease_seconds=30,
        timeout=1,
        done=lambda: False,
    ) as held:
        assert held is not None and lease_is_live(store, keys[0])
        report = collect_garbage(store, GcLimits(max_entries=2))
    assert [s.key for s in report.skipped] == [keys[0]]
    assert report.skipped[0].reason == "held by a running execution"
    # The kept entry makes the next least recently used ones go instead.
    assert [r.entry.key for r in report.removed] == [keys[1], keys[2]]
    assert remaining(cache) == sorted([keys[0], keys[3]])


def test_lease_of_a_dead_process_does_not_protect(
    filled: tuple[Path, list[str]],
) -> None:
    cache, keys = filled
    store = CacheStore(cache)
    locks = cache / store.LOCKS_DIR
    locks.mkdir(exist_ok=True)
    pid = os.fork()
    if pid == 0:  # a child that takes the lease and dies without releasing it
        owner = lease.LeaseOwner.me()
        (locks / f"{keys[0]}.lock").write_text(json.dumps(dataclasses.asdict(owner)))
        os._exit(0)
    os.waitpid(pid, 0)
    assert not lease_is_live(store, keys[0])
    report = collect_garbage(store, GcLimits(max_entries=3))
    assert [r.entry.key for r in report.removed] == [keys[0]]


def test_recently_used_entries_are_kept(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    result = cli(
        "gc", "--cache-dir", str(cache), "--max-entries", "0", "--keep-recent", "2.5d"
    )
    assert result.exit_code == 0
    assert "Kept 2 selected entries: 2 used recently" in result.stdout
    assert remaining(cache) == sorted(keys[2:])


def test_entry_hit_after_the_scan_is_kept(
    filled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    cache, keys = filled
    store = CacheStore(cache)
    scanned = {e.key: e for e in scan_entries(store)}
    # A real hit between gc's scan and its removal of the entry.
    write_block(
        make_runner(cache, tmp_path / "s2"), tmp_path / "in.txt", size=10 * 1024, n=0
    )
    assert (
        _remove_entry(store, scanned[keys[0]], time.time()) == "used after gc started"
    )
    assert _remove_entry(store, scanned[keys[1]], time.time()) == ""
    assert remaining(cache) == sorted([keys[0], keys[2], keys[3]])


def test_keep_protects_the_current_entry(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    report = collect_garbage(CacheStore(cache), GcLimits(max_entries=0), keep={keys[0]})
    assert remaining(cache) == [keys[0]]
    assert report.skipped[0].reason == "in use by the current run"


def test_sweeps_old_staging_failed_quarantine_and_trash(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = make_runner(cache, tmp_path / "scratch", keep_failed=5)
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    out = write_block(runner, source, size=10)
    store = CacheStore(cache)
    key = key_of(out["out"], cache)
    # A failed run really kept under .failed/.
    with pytest.raises(StyxRuntimeError):
        run_tool(
            runner,
            WRITE,
            {"@type": "demo/write", "fail": 1},
            cargs=lambda p: ["sh", "-c", "exit 3"],
        )
    failed = list((cache / store.FAILED_DIR).iterdir())
    assert len(failed) == 1
    quarantined = store.quarantine(key, "test")
    assert quarantined is not None
    old = time.time() - 40 * DAY
    crashed = store.stage("a" * 64)  # a crashed run's staging: no lease
    (crashed / "partial.bin").write_bytes(b"x" * 100)
    leased_key = "b" * 64
    live = store.stage(leased_key)
    fresh = store.stage("c" * 64)
    trash = cache / store.TRASH_DIR / "leftover"
    trash.mkdir(parents=True)
    for path in (crashed, live, failed[0], quarantined):
        os.utime(path, (old, old))
    with lease.acquire(
        cache / store.LOCKS_DIR,
        leased_key,
        lease_seconds=30,
        timeout=1,
        done=lambda: False,
    ):
        report = collect_garbage(
            store,
            GcLimits(),
            ages=SweepAges(
                staging_s=DAY, failed_s=7 * DAY, quarantine_s=30 * DAY, trash_s=3600
            ),
            clock=lambda: time.time() + 40 * DAY,  # quarantine/trash age by ctime
        )
    kinds = sorted({s.kind for s in report.swept})
    assert {"staging", "failed", "quarantine", "trash"} <= set(kinds)
    assert not crashed.exists() and not failed[0].exists() and not quarantined.exists()
    assert not trash.exists()
    assert live.exists(), "a staging folder whose run holds the lease must stay"
    assert not any(s.path == str(live) for s in report.swept)
    # fresh is young only relative to the real clock; here everything is "old",
    # and it has no lease: swept like any crashed run.
    assert not fresh.exists()


def test_young_staging_is_not_swept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = CacheStore(cache)
    young = store.stage("d" * 64)
    report = collect_garbage(store, GcLimits())
    assert young.exists()
    assert report.swept == []


def test_empty_shard_folders_are_removed_when_old(
    filled: tuple[Path, list[str]],
) -> None:
    cache, keys = filled
    store = CacheStore(cache)
    collect_garbage(store, GcLimits(max_entries=0))
    shards = [cache / k[:2] for k in keys]
    assert all(s.exists() for s in shards if not list(s.iterdir())), (
        "just emptied: kept"
    )
    old = time.time() - 2 * DAY
    for shard in shards:
        if shard.exists():
            os.utime(shard, (old, old))
    report = collect_garbage(store, GcLimits())
    assert not any(s.exists() for s in shards)
    assert {s.kind for s in report.swept} >= {"shard"}


def test_served_outputs_of_kept_entries_still_verify(
    filled: tuple[Path, list[str]],
) -> None:
    cache, _keys = filled
    cli("gc", "--cache-dir", str(cache), "--max-size", "25K")
    result = cli("verify", "--full", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output


def test_bad_limits_are_usage_errors_and_remove_nothing(
    filled: tuple[Path, list[str]],
) -> None:
    cache, _keys = filled
    before = tree_snapshot(cache)
    for args in (
        ["--max-size", "lots"],
        ["--max-size", "-5G"],
        ["--older-than", "soon"],
        ["--max-entries", "-1"],
    ):
        result = cli("gc", "--cache-dir", str(cache), *args)
        assert result.exit_code == 2, args
        assert "Invalid value" in result.output
    assert tree_snapshot(cache) == before
    with pytest.raises(ValueError, match="must not be negative"):
        GcLimits(max_size=-1)


def test_clear_asks_and_keeps_everything_when_refused(
    filled: tuple[Path, list[str]],
) -> None:
    cache, keys = filled
    result = cli("clear", "--cache-dir", str(cache), input="n\n")
    assert result.exit_code == 1
    assert "Remove all 4 entries" in result.output
    assert remaining(cache) == sorted(keys)
    result = cli("clear", "--cache-dir", str(cache), input="y\n")
    assert result.exit_code == 0
    assert remaining(cache) == []


def test_clear_yes_json(filled: tuple[Path, list[str]]) -> None:
    cache, keys = filled
    report = cli_json("clear", "--cache-dir", str(cache), "--yes")
    assert sorted(r["key"] for r in report["removed"]) == sorted(keys)
    assert report["entries_after"] == 0
    assert list(scan_entries(CacheStore(cache))) == []
