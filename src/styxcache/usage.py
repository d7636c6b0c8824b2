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
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from styxcache.events import EVENTS_DIR, CacheEvent, CacheStats, read_events

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

    Args:
        cache_root: The cache directory.
        since: Only events at or after this Unix time.

    Returns:
        The report; `since` is the later of the argument and the zero mark.
    """
    mark = read_zero_mark(cache_root)
    bounds = [t for t in (since, mark) if t is not None]
    start = max(bounds) if bounds else None
    return summarize(read_events(cache_root, since=start), since=start)


def _writer_finished(name: str) -> bool:
    """Tell from an event file's name that its writer has exited.

    Names are `<host>-<pid>-<random>.jsonl` (see `events.EventLog`).
    """
    parts = name.removesuffix(".jsonl").rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False  # another host's process: only that host can tell
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False  # alive, or its pid was reused: keep the file


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
    temp = folder / f".{ZERO_MARK}.{uuid.uuid4().hex[:8]}"
    temp.write_text(f"{mark_time!r}\n")
    os.replace(temp, folder / ZERO_MARK)
    archive = folder / ARCHIVE_DIR
    for path in sorted(folder.glob("*.jsonl")):
        try:
            old = path.stat().st_mtime < mark_time
        except FileNotFoundError:
            continue
        if old and _writer_finished(path.name):
            archive.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, archive / path.name)
                _log.debug("archived event file %s", path.name)
    return mark_time
