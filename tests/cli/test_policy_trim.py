"""`CachePolicy(max_size=...)`: trimming after each commit, with hysteresis."""

from __future__ import annotations

import time
from pathlib import Path

from clihelpers import key_of, make_runner, set_last_use, write_block

from styxcache.cache_size import CacheSizeEstimate
from styxcache.gc_trim import RESCAN_S, trim_after_commit
from styxcache.inventory import scan_entries
from styxcache.store import CacheStore

KIB = 1024


def sizes(cache: Path) -> dict[str, int]:
    return {e.key: e.size for e in scan_entries(CacheStore(cache))}


def test_commit_over_the_cap_trims_to_ninety_percent(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    plain = make_runner(cache, tmp_path / "s1")
    keys = [
        key_of(write_block(plain, source, size=8 * KIB, n=n)["out"], cache)
        for n in range(5)
    ]
    old = time.time() - 86400
    for age, key in enumerate(keys):
        set_last_use(cache, key, old + age)  # keys[0] least recently used
    one = sizes(cache)[keys[0]]
    cap = 5 * one + one // 2  # five entries fit, six do not
    capped = make_runner(cache, tmp_path / "s2", max_size=cap)
    new = key_of(write_block(capped, source, size=8 * KIB, n=99)["out"], cache)
    left = sizes(cache)
    assert new in left, "the entry just committed is never trimmed"
    assert sum(left.values()) <= 0.9 * cap
    # Least recently used went first: keys[0] and keys[1] (hysteresis: two, not one).
    assert keys[0] not in left and keys[1] not in left
    assert {keys[2], keys[3], keys[4]} <= set(left)
    # Under the cap, a hit or a commit trims nothing.
    write_block(capped, source, size=8 * KIB, n=4)
    assert sizes(cache) == left


def test_recent_entries_and_the_new_one_survive_a_tiny_cap(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "s", max_size="1K")
    first = key_of(write_block(runner, source, size=4 * KIB, n=1)["out"], cache)
    second = key_of(write_block(runner, source, size=4 * KIB, n=2)["out"], cache)
    # Both are over the cap alone, but used within the last minutes by this run.
    assert set(sizes(cache)) == {first, second}
    report = trim_after_commit(
        CacheStore(cache),
        1024,
        keep=second,
        estimate=CacheSizeEstimate(),
        keep_used_after=time.time() + 1,
    )
    assert report is not None and report.removed[0].entry.key == first
    assert set(sizes(cache)) == {second}


def test_between_scans_commits_are_added_up(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    store = CacheStore(cache)
    # The running total of one runner, kept between its commits.
    estimate = CacheSizeEstimate()
    # Another process (a runner without a cap) fills the cache meanwhile.
    other = make_runner(cache, tmp_path / "other")
    first = key_of(write_block(other, source, size=8 * KIB, n=0)["out"], cache)
    one = sizes(cache)[first]
    cap = 3 * one
    old = time.time() - 86400
    set_last_use(cache, first, old)
    t0 = time.time()
    assert (
        trim_after_commit(store, cap, keep=first, estimate=estimate, clock=lambda: t0)
        is None
    )  # scanned
    for n in (1, 2, 3):
        key = key_of(write_block(other, source, size=8 * KIB, n=n)["out"], cache)
        set_last_use(cache, key, old + n)
    mine = key_of(write_block(other, source, size=8 * KIB, n=9)["out"], cache)
    # Within RESCAN_S the estimate (first + mine) is under the cap: no scan.
    assert (
        trim_after_commit(
            store, cap, keep=mine, estimate=estimate, clock=lambda: t0 + 1
        )
        is None
    )
    assert len(sizes(cache)) == 5
    # Later, the rescan sees the other process's entries and trims.
    report = trim_after_commit(
        store, cap, keep=mine, estimate=estimate, clock=lambda: t0 + RESCAN_S + 1
    )
    assert report is not None
    assert report.removed[0].entry.key == first
    assert sum(sizes(cache).values()) <= 0.9 * cap
