"""`stats` reads each event once (a rollup of blocks), with totals unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from clihelpers import make_runner, write_block

from styxcache import usage
from styxcache.events import CacheEvent, CacheStats, read_events
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


def _writer_lines(early: float = 1e9) -> list[str]:
    """Event lines as `CacheEvent.to_json` writes them, in every shape it has."""
    lines = []
    for n in range(40):
        event = CacheEvent(
            kind=("hit", "miss", "bypass", "refresh")[n % 4],
            tool=f"pkg{n % 3}/tool {n % 5}",
            key=f"{n:064x}",
            duration_s=n / 7,
            saved_s=n * 0.1 if n % 4 == 0 else 0.0,
            bytes_served=n * 1000 if n % 4 == 0 else 0,
            reason='input "a\\b" changed \u2192 t\u00e9st\n' if n % 2 else "",
            time=1_700_000_000.0 + n / 3 if n != 5 else early,
            host="h\u00f4te" if n % 3 else "vm",
            pid=1000 + n,
            ok=bool(n % 5),
            remote=("", "hit", "uploaded", "damaged", "error", "offline", "miss")[
                n % 7
            ],
            nearest=f"{n + 1:064x}" if n % 6 == 1 else "",
            differences=("param x: 1 -> 2", 'env "Y"') if n % 6 == 1 else (),
        )
        lines.append(event.to_json())
    return lines


@pytest.mark.parametrize("early", [1e9, 999_999_999.5, 5.0, 1.5e10, 2e-3])
def test_writer_lines_take_the_fast_scan_with_equal_totals(
    tmp_path: Path, early: float
) -> None:
    # Lines in the writer's exact form are counted without decoding JSON;
    # the totals and time range equal the block decoder's and a full read's
    # (times of other lengths than ten digits take the slower range).
    lines = _writer_lines(early)
    data = ("\n".join(lines) + "\n").encode()
    scanned: dict[str, CacheStats] = {}
    found = usage._scan_block(data, 0, len(data), len(lines), scanned)
    decoded: dict[str, CacheStats] = {}
    times: list[float] = []
    usage._count_block([line.encode() for line in lines], decoded, times)
    assert scanned == decoded
    assert found == (len(times), min(times), max(times))
    cache = tmp_path / "cache"
    (cache / ".events").mkdir(parents=True)
    (cache / ".events" / "vm-1-abcdef01.jsonl").write_bytes(data)
    assert dataclasses.asdict(usage_report(cache)) == _plain(cache, None)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"time": 1700000000.0', '"time": 1700000000'),  # an int time
        ('"duration_s": 0.0', '"duration_s": NaN'),  # JSON's extension
        ('"tool": "pkg0/tool 0"', '"tool": "pkg0/t\\u00f6ol"'),  # an escape
        ('"saved_s": 0.0', '"saved_s": "0"'),  # refused by both
        ('"bytes_served": 0', '"bytes_served": 1.0'),  # a float size
        ('"ok": false', '"ok": 0'),
        ('"kind": "hit"', '"kind": "hit", "extra": 1'),
    ],
)
def test_lines_off_the_writer_form_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    # One line in another shape sends its block (only) to the JSON decoder.
    monkeypatch.setattr(usage, "BLOCK_EVENTS", 8)
    lines = _writer_lines()
    assert old in lines[0]
    lines[0] = lines[0].replace(old, new, 1)
    data = ("\n".join(lines) + "\n").encode()
    assert usage._scan_block(data, 0, len(data), len(lines), {}) is None
    cache = tmp_path / "cache"
    (cache / ".events").mkdir(parents=True)
    (cache / ".events" / "vm-1-abcdef01.jsonl").write_bytes(data)
    assert dataclasses.asdict(usage_report(cache)) == _plain(cache, None)
