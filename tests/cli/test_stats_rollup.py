"""`stats` reads each event once (a rollup of blocks), with totals unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from clihelpers import make_runner, write_block

from styxcache import usage
from styxcache.events import read_events
from styxcache.usage import summarize, usage_report


def _plain(cache: Path, since: float | None) -> dict[str, object]:
    report = summarize(read_events(cache, since=since), since=since)
    return dataclasses.asdict(report)


def test_rollup_totals_equal_a_full_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "BLOCK_EVENTS", 3)  # many blocks, some straddling
    cache = tmp_path / "cache"
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    runner = make_runner(cache, tmp_path / "scratch")
    for n in range(7):
        write_block(runner, source, size=10, n=n)  # miss
        write_block(runner, source, size=10, n=n)  # hit
    events = list(read_events(cache))
    middle = sorted(e.time for e in events)[len(events) // 2]
    for since in (None, middle, middle + 1e-6, events[-1].time + 1):
        assert dataclasses.asdict(usage_report(cache, since=since)) == _plain(
            cache, since
        )
    assert (cache / ".events" / usage.ROLLUP_NAME).exists()
    # New events are appended to the same file: only they are read.
    for n in range(3):
        write_block(runner, source, size=10, n=100 + n)
    for since in (None, middle):
        assert dataclasses.asdict(usage_report(cache, since=since)) == _plain(
            cache, since
        )
    # A damaged rollup is ignored and rebuilt.
    (cache / ".events" / usage.ROLLUP_NAME).write_text("{not json")
    assert dataclasses.asdict(usage_report(cache)) == _plain(cache, None)


def test_odd_event_lines_count_as_a_full_read_counts_them(tmp_path: Path) -> None:
    # The rollup decodes a block of lines at once and counts the decoded
    # objects: lines of the wrong shape must be refused exactly as
    # `read_events` refuses them, with and without a line that is not JSON.
    good = {"kind": "hit", "tool": "a/b", "key": "k", "saved_s": 1.5, "time": 5.0}
    odd = [
        good,
        {**good, "remote": "hit", "bytes_served": 7},
        {"kind": "miss", "tool": "a/b", "key": "k", "time": 6},
        {"kind": "refresh", "tool": "c/d", "key": "k", "time": 7.5, "remote": "error"},
        {"kind": "bogus", "tool": "a/b", "key": "k", "time": 1.0},
        {"kind": "hit", "tool": 3, "key": "k", "time": 1.0},
        {"kind": "hit", "tool": "a/b", "key": "k", "time": None},
        {"kind": "hit", "tool": "a/b", "key": "k", "time": True},
        {"kind": "hit", "tool": "a/b", "key": "k", "time": 1.0, "remote": None},
        {"kind": "bypass", "tool": "a/b", "key": "k", "time": 1.0, "saved_s": "1"},
        {"kind": "miss", "tool": "a/b", "time": 1.0},
        [1, 2],
        "text",
    ]
    for torn in (False, True):
        cache = tmp_path / f"cache-{torn}"
        events = cache / ".events"
        events.mkdir(parents=True)
        lines = [json.dumps(item) for item in odd]
        if torn:
            lines.insert(3, '{"kind": "hit", ')
        (events / "vm-1-abcdef01.jsonl").write_text("\n".join(lines) + "\n")
        got = dataclasses.asdict(usage_report(cache))
        assert got == _plain(cache, None)
        assert got["total"]["hits"] == 2 and got["total"]["remote_errors"] == 1
