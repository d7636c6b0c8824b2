"""Usage statistics: hits, misses and savings added up from the event files.

Zeroing never touches a file a live process may append to. It writes a zero
mark (`.events/zeroed-at`, replaced atomically); events before the mark no
longer count. Files whose writer has finished and that hold only older
events are then moved to `.events/archive/`, so the folder does not grow
without bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import operator
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

from styxcache._system import atomic_write, writer_finished
from styxcache.events import (
    _REMOTE_COUNTERS,
    EVENTS_DIR,
    CacheEvent,
    CacheStats,
    EventKind,
    _well_formed,
)

__all__ = ["UsageReport", "read_zero_mark", "summarize", "usage_report", "zero_stats"]

_log = logging.getLogger("styxcache.usage")

ZERO_MARK = "zeroed-at"
ARCHIVE_DIR = "archive"


@dataclasses.dataclass
class UsageReport:
    """Totals over a set of events, overall and per tool.

    Attributes:
        total: Totals over every tool.
        tools: Totals per `package/id`, in name order.
        since: Events before this Unix time were left out (None: none were).
        first: Time of the earliest event counted, or None.
        last: Time of the latest event counted, or None.
    """

    total: CacheStats
    tools: dict[str, CacheStats]
    since: float | None = None
    first: float | None = None
    last: float | None = None

    def as_dict(self) -> dict[str, object]:
        """Return the report as a JSON-ready dictionary."""
        return {
            "since": self.since,
            "first_event": self.first,
            "last_event": self.last,
            "total": self.total.as_dict(),
            "tools": {name: stats.as_dict() for name, stats in self.tools.items()},
        }


def summarize(
    events: Iterable[CacheEvent], *, since: float | None = None
) -> UsageReport:
    """Add events up, overall and per tool.

    Args:
        events: The events to count.
        since: Recorded in the report (the caller filtered by it).

    Returns:
        The report.
    """
    total = CacheStats()
    tools: dict[str, CacheStats] = {}
    first: float | None = None
    last: float | None = None
    for event in events:
        total.add(event)
        tools.setdefault(event.tool, CacheStats()).add(event)
        first = event.time if first is None else min(first, event.time)
        last = event.time if last is None else max(last, event.time)
    ordered = {name: tools[name] for name in sorted(tools)}
    return UsageReport(total, ordered, since, first, last)


def read_zero_mark(cache_root: Path) -> float | None:
    """Return the time statistics were last zeroed, or None.

    Args:
        cache_root: The cache directory.
    """
    try:
        return float((cache_root / EVENTS_DIR / ZERO_MARK).read_text().strip())
    except (OSError, ValueError):
        return None


def usage_report(cache_root: Path, *, since: float | None = None) -> UsageReport:
    """Add up the events of a cache directory since `since` and the zero mark.

    Events are read once: totals of blocks of `BLOCK_EVENTS` events are kept
    in `.events/rollup.json` (with each block's byte range and time range), so
    a report on 100,000 events reads only what was appended since the last
    one, plus the one block per file that straddles `since`. Totals are
    exact: a block is used whole only when all its events are at or after
    `since`. Without write access the rollup is still read, never written.

    Args:
        cache_root: The cache directory.
        since: Only events at or after this Unix time.

    Returns:
        The report; `since` is the later of the argument and the zero mark.
    """
    mark = read_zero_mark(cache_root)
    bounds = [t for t in (since, mark) if t is not None]
    start = max(bounds) if bounds else None
    folder = cache_root / EVENTS_DIR
    if os.path.islink(folder) or not folder.is_dir():
        return summarize((), since=start)
    rollup = _Rollup.load(folder)
    changed = False
    tools: dict[str, CacheStats] = {}
    span: list[float] = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        blocks = rollup.blocks_of(path.name, st.st_ino, st.st_size)
        end = blocks[-1].end if blocks else 0
        if st.st_size > end:
            fresh = _read_blocks(path, end)
            if fresh:
                blocks.extend(fresh)
                changed = True
        rollup.files[path.name] = (st.st_ino, blocks)
        for block in blocks:
            if block.count == 0 or (start is not None and block.last < start):
                continue
            if start is None or block.first >= start:
                _merge(tools, block.tools)
                span += [block.first, block.last]
            else:  # straddles `since`: count its events one by one
                for event in _events_between(path, block.start, block.end):
                    if event.time >= start:
                        tools.setdefault(event.tool, CacheStats()).add(event)
                        span.append(event.time)
    rollup.forget_missing(folder)
    if changed:
        rollup.save(folder)
    total = CacheStats()
    _merge_stats(total, tools.values())
    ordered = {name: tools[name] for name in sorted(tools)}
    first, last = (min(span), max(span)) if span else (None, None)
    return UsageReport(total, ordered, start, first, last)


ROLLUP_NAME = "rollup.json"
BLOCK_EVENTS = 4096
"""Events per rollup block: the most a report parses per file for `since`."""
_STAT_FIELDS = tuple(f.name for f in dataclasses.fields(CacheStats))


@dataclasses.dataclass
class _Block:
    start: int
    end: int
    count: int
    first: float
    last: float
    tools: dict[str, list[float]]

    def as_list(self) -> list[object]:
        return [self.start, self.end, self.count, self.first, self.last, self.tools]


class _Rollup:
    """Totals of blocks of each event file, keyed by file name and inode."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, list[_Block]]] = {}

    @classmethod
    def load(cls, folder: Path) -> _Rollup:
        rollup = cls()
        try:
            data = json.loads((folder / ROLLUP_NAME).read_text("utf-8"))
            if data.get("fields") != list(_STAT_FIELDS):
                return rollup  # CacheStats changed: count everything again
            for name, (inode, blocks) in data["files"].items():
                rollup.files[name] = (
                    int(inode),
                    [_Block(*item) for item in blocks],
                )
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls()
        return rollup

    def blocks_of(self, name: str, inode: int, size: int) -> list[_Block]:
        known = self.files.get(name)
        if known is None or known[0] != inode or (known[1] and known[1][-1].end > size):
            return []  # new, replaced or truncated: read it from the start
        return list(known[1])

    def forget_missing(self, folder: Path) -> None:
        for name in list(self.files):
            if not (folder / name).exists():
                del self.files[name]

    def save(self, folder: Path) -> None:
        data = {
            "fields": list(_STAT_FIELDS),
            "files": {
                name: [inode, [b.as_list() for b in blocks]]
                for name, (inode, blocks) in self.files.items()
            },
        }
        try:
            # A hint (rebuilt from the event files when lost): no fsync.
            atomic_write(folder / ROLLUP_NAME, json.dumps(data), fsync=False)
        except OSError as exc:  # a read-only cache: the next report reads again
            _log.debug("cannot save the statistics rollup in %s: %s", folder, exc)


def _parse(line: bytes) -> CacheEvent | None:
    try:
        data = json.loads(line.decode("utf-8", errors="replace"))
        event = CacheEvent.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None
    return event if event is not None and _well_formed(event) else None


def _events_between(path: Path, start: int, end: int) -> Iterable[CacheEvent]:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
    except OSError:
        return []
    return [e for e in map(_parse, data.split(b"\n")) if e is not None]


def _read_blocks(path: Path, offset: int) -> list[_Block]:
    """Count the whole lines of an event file from `offset` on, in blocks."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return []
    whole = data.rfind(b"\n") + 1  # a torn last line waits for its end
    blocks: list[_Block] = []
    position = 0
    lines = data[:whole].split(b"\n")[:-1] if whole else []
    for begin in range(0, len(lines), BLOCK_EVENTS):
        chunk = lines[begin : begin + BLOCK_EVENTS]
        size = sum(map(len, chunk)) + len(chunk)
        tools: dict[str, CacheStats] = {}
        scanned = _scan_block(data, position, position + size, len(chunk), tools)
        if scanned is None:
            times: list[float] = []
            _count_block(chunk, tools, times)
            scanned = len(times), min(times, default=0.0), max(times, default=0.0)
        blocks.append(
            _Block(
                offset + position,
                offset + position + size,
                *scanned,
                {
                    name: [getattr(stats, f) for f in _STAT_FIELDS]
                    for name, stats in tools.items()
                },
            )
        )
        position += size
    return blocks


_KINDS: frozenset[str] = frozenset(get_args(EventKind))
_UNSET = object()

# The exact line `CacheEvent.to_json` writes (sorted keys, ASCII): strings
# in JSON's own grammar, numbers in JSON's, `time` and `saved_s` in float
# form (so `float()` gives what `json` gives). A line in any other shape is
# not refused here: its block is decoded by `_count_block` instead.
_STR = rb'"(?:[ !#-\[\]-~]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_PLAIN = rb"[ !#-\[\]-~]*"  # a string without escapes: its bytes are its text
_INT = rb"-?(?:0|[1-9][0-9]*)"
_FLOAT = _INT + rb"(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)"
_NUM = _INT + rb"(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_LINE = re.compile(
    rb'^\{"bytes_served": (' + _INT + rb"), "
    rb'(?:"differences": \[(?:' + _STR + rb"(?:, " + _STR + rb")*)?\], )?"
    rb'"duration_s": ' + _NUM + rb', "host": ' + _STR + rb", "
    rb'"key": "' + _PLAIN + rb'", "kind": "(hit|miss|bypass|refresh)", '
    rb'(?:"nearest": ' + _STR + rb", )?"
    rb'"ok": (?:true|false), "pid": ' + _NUM + rb', "reason": ' + _STR + rb", "
    rb'"remote": "(' + _PLAIN + rb')", "saved_s": (' + _FLOAT + rb"), "
    rb'"time": (' + _FLOAT + rb'), "tool": "(' + _PLAIN + rb')"\}$',
    re.MULTILINE,
)
_COUNTS = operator.itemgetter(5, 1, 2)  # tool, kind, remote
_TIME = operator.itemgetter(4)
_KIND_FIELD = {b"hit": "hits", b"miss": "misses", b"bypass": "bypassed"}


def _scan_block(
    data: bytes,
    start: int,
    end: int,
    lines: int,
    tools: dict[str, CacheStats],
) -> tuple[int, float, float] | None:
    """Add up `data[start:end]` when every line is in the writer's exact form.

    Decoding JSON cost most of a first report on a big cache; matching the
    one shape the writer produces reads only the fields totals need, at C
    speed. Returns the number of events and their time range, or None (and
    adds nothing) when any line differs, so the caller decodes the block: an
    event counts exactly when `_parse` would accept it either way.
    """
    found = _LINE.findall(data, start, end)
    if not found or len(found) != lines:
        return None
    counts = Counter(map(_COUNTS, found))
    for (tool, kind, remote), count in counts.items():
        name = tool.decode("ascii")
        stats = tools.get(name)
        if stats is None:
            stats = tools[name] = CacheStats()
        field = _KIND_FIELD.get(kind, "refreshed")
        setattr(stats, field, getattr(stats, field) + count)
        counter = _REMOTE_COUNTERS.get(remote.decode("ascii"))
        if counter is not None:
            setattr(stats, counter, getattr(stats, counter) + count)
    has_hits = any(kind == b"hit" for _, kind, _ in counts)
    for served, kind, _, saved, _, tool in found if has_hits else ():
        if kind == b"hit":  # in file order, so float sums match `_count_block`
            stats = tools[tool.decode("ascii")]
            stats.time_saved_s += float(saved)
            stats.bytes_served += int(served)
    return (len(found), *_time_range(list(map(_TIME, found))))


_PLAIN_TIMES = re.compile(rb"(?:[1-9][0-9]{9}\.[0-9]+\n)+")


def _time_range(stamps: list[bytes]) -> tuple[float, float]:
    """The earliest and latest of `time` values in JSON's float form.

    Converting every value cost a tenth of a first report. Times written
    between 2001 and 2286 are ten digits, a point and a fraction: such
    strings sort as their values do, so only the two ends are converted.
    """
    if _PLAIN_TIMES.fullmatch(b"\n".join(stamps) + b"\n"):
        return float(min(stamps)), float(max(stamps))
    values = list(map(float, stamps))
    return min(values), max(values)


def _count_block(
    lines: list[bytes], tools: dict[str, CacheStats], times: list[float]
) -> None:
    """Add up event lines into per-tool totals and their times.

    The first report on a big cache reads every event once: the lines are
    decoded as one JSON array and counted from the decoded objects (building
    a `CacheEvent` per line cost 3/4 of the time). A block with a damaged
    line is decoded line by line, skipping what does not parse; either way
    an event counts exactly when `_parse` would accept it.
    """
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        for event in filter(None, map(_parse, lines)):
            tools.setdefault(event.tool, CacheStats()).add(event)
            times.append(event.time)
        return
    for data in records:
        quick = _quick_event(data)
        if quick is None:
            continue
        kind, tool, when, saved, served, remote = quick
        stats = tools.get(tool)
        if stats is None:
            stats = tools[tool] = CacheStats()
        if kind == "hit":
            stats.hits += 1
            stats.time_saved_s += saved
            stats.bytes_served += served
        elif kind == "miss":
            stats.misses += 1
        elif kind == "bypass":
            stats.bypassed += 1
        else:
            stats.refreshed += 1
        if remote:
            counter = _REMOTE_COUNTERS.get(remote)
            if counter is not None:
                setattr(stats, counter, getattr(stats, counter) + 1)
        times.append(when)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quick_event(
    data: object,
) -> tuple[str, str, float, float, int, str] | None:
    """What totals need of a decoded event, or None where `_parse` refuses it."""
    if not isinstance(data, dict):
        return None
    kind, tool = data.get("kind"), data.get("tool")
    if kind not in _KINDS or not isinstance(tool, str):
        return None
    if not isinstance(data.get("key"), str):
        return None
    remote = data.get("remote", "")
    duration = data.get("duration_s", 0.0)
    saved = data.get("saved_s", 0.0)
    served = data.get("bytes_served", 0)
    when = data.get("time", _UNSET)
    if when is _UNSET:
        when = time.time()  # as `CacheEvent`'s default
    if not (
        isinstance(remote, str)
        and _number(duration)
        and _number(saved)
        and _number(served)
        and _number(when)
    ):
        return None
    return kind, tool, when, saved, served, remote


def _merge(tools: dict[str, CacheStats], block: dict[str, list[float]]) -> None:
    for name, values in block.items():
        stats = tools.setdefault(name, CacheStats())
        for field, value in zip(_STAT_FIELDS, values, strict=False):
            setattr(stats, field, getattr(stats, field) + value)


def _merge_stats(total: CacheStats, parts: Iterable[CacheStats]) -> None:
    for stats in parts:
        for field in _STAT_FIELDS:
            setattr(total, field, getattr(total, field) + getattr(stats, field))


def zero_stats(cache_root: Path, *, now: float | None = None) -> float:
    """Reset the statistics of a cache directory.

    Args:
        cache_root: The cache directory.
        now: The zero time (the current time by default).

    Returns:
        The zero time written.
    """
    mark_time = time.time() if now is None else now
    folder = cache_root / EVENTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / ZERO_MARK, f"{mark_time!r}\n")
    archive = folder / ARCHIVE_DIR
    for path in sorted(folder.glob("*.jsonl")):
        try:
            old = path.stat().st_mtime < mark_time
        except FileNotFoundError:
            continue
        if old and writer_finished(path.name):
            archive.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, archive / path.name)
                _log.debug("archived event file %s", path.name)
    return mark_time
