"""Cache events: what happened to each execution, for callbacks, stats and files.

Every execution that passes through a `CachingRunner` produces exactly one
`CacheEvent` (hit, miss, bypass or refresh). Events go to three places:

* the runner's `on_event` callback and its in-memory `CacheStats`;
* every `collect_events()` block active in the calling context (the scheduler
  uses this to count the hits and misses of one scheduled run);
* an append-only JSON-lines file per process under `<cache_dir>/.events/`, so a
  command-line tool can add up statistics without a shared lock.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from styxcache._system import HOST, writer_file_name

__all__ = [
    "EVENTS_DIR",
    "CacheEvent",
    "CacheStats",
    "EventKind",
    "EventLog",
    "EventSink",
    "collect_events",
    "publish",
    "read_events",
]

_log = logging.getLogger("styxcache.events")
_runner_log = logging.getLogger("styxcache")

EVENTS_DIR = ".events"
"""Folder of the cache directory that holds the per-process event files."""

EventKind = Literal["hit", "miss", "bypass", "refresh"]


@dataclasses.dataclass(frozen=True)
class CacheEvent:
    """One execution's outcome as seen by the cache.

    Attributes:
        kind: `"hit"`, `"miss"`, `"bypass"` or `"refresh"`.
        tool: `package/id` of the tool.
        key: The cache key, or `""` for a bypassed execution.
        duration_s: Wall time this execution took here (the replay, for a hit).
        saved_s: For a hit, the stored duration of the run it replaced.
        bytes_served: For a hit, the total size of the outputs served.
        reason: Why it was a miss or a refresh, in one sentence.
        time: Unix time when the event was produced.
        host: Host name of the producing process.
        pid: Process id of the producing process.
        ok: False when the tool ran and failed.
        remote: What the remote tier did (`remote.RemoteOutcome`): `"hit"`,
            `"miss"`, `"uploaded"`, `"present"`, `"damaged"`, `"error"`,
            `"offline"`, or `""` without a remote tier.
        nearest: For a miss, the key of the nearest earlier entry of the
            tool when it was compared ("" for none); `reason` says it too.
        differences: The key fields that differed from `nearest`, as short
            sentences (what `styxcache explain` shows without re-reading).
    """

    kind: EventKind
    tool: str
    key: str
    duration_s: float = 0.0
    saved_s: float = 0.0
    bytes_served: int = 0
    reason: str = ""
    time: float = dataclasses.field(default_factory=time.time)
    host: str = HOST
    pid: int = dataclasses.field(default_factory=os.getpid)
    ok: bool = True
    remote: str = ""
    nearest: str = ""
    differences: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Return the event as one line of JSON (the comparison only if made)."""
        data = dict(vars(self))
        if not self.nearest and not self.differences:
            del data["nearest"], data["differences"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheEvent:
        """Build an event from a decoded JSON object, ignoring unknown fields.

        Args:
            data: A decoded event line.

        Returns:
            The event.
        """
        fields = {k: v for k, v in data.items() if k in _EVENT_FIELDS}
        differences = fields.get("differences")
        if isinstance(differences, list):
            fields["differences"] = tuple(str(item) for item in differences)
        return cls(**fields)


_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(CacheEvent))
_EVENT_KINDS = frozenset(get_args(EventKind))


@dataclasses.dataclass
class CacheStats:
    """Running totals of cache events.

    Attributes:
        hits: Executions served from the cache.
        misses: Executions that ran and were stored.
        bypassed: Executions that went straight to the base runner.
        refreshed: Executions rerun on purpose by `refresh()` or `max_age`.
        time_saved_s: Sum of the stored durations of the runs that hits replaced.
        bytes_served: Sum of the output sizes served by hits.
        remote_hits: Hits downloaded from the remote tier.
        remote_uploads: Entries uploaded to the remote tier.
        remote_damaged: Remote entries refused because they failed verification.
        remote_errors: Remote operations that failed (network, credentials...).
        remote_offline: Executions that skipped the remote after a failure.
    """

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    refreshed: int = 0
    time_saved_s: float = 0.0
    bytes_served: int = 0
    remote_hits: int = 0
    remote_uploads: int = 0
    remote_damaged: int = 0
    remote_errors: int = 0
    remote_offline: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over hits plus misses plus refreshes (0.0 when nothing ran)."""
        total = self.hits + self.misses + self.refreshed
        return self.hits / total if total else 0.0

    def add(self, event: CacheEvent) -> None:
        """Fold one event into the totals.

        Args:
            event: The event to count.
        """
        if event.kind == "hit":
            self.hits += 1
            self.time_saved_s += event.saved_s
            self.bytes_served += event.bytes_served
        elif event.kind == "miss":
            self.misses += 1
        elif event.kind == "bypass":
            self.bypassed += 1
        else:
            self.refreshed += 1
        if event.remote:
            counter = _REMOTE_COUNTERS.get(event.remote)
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)

    def as_dict(self) -> dict[str, float | int]:
        """Return the totals and the hit rate as a plain dictionary."""
        return {**dataclasses.asdict(self), "hit_rate": self.hit_rate}


_REMOTE_COUNTERS = {
    "hit": "remote_hits",
    "uploaded": "remote_uploads",
    "damaged": "remote_damaged",
    "error": "remote_errors",
    "offline": "remote_offline",
}


_COLLECTORS: contextvars.ContextVar[tuple[list[CacheEvent], ...]] = (
    contextvars.ContextVar("styxcache_event_collectors", default=())
)


@contextlib.contextmanager
def collect_events() -> Iterator[list[CacheEvent]]:
    """Collect the events of executions started in this context.

    Blocks nest: an event reaches every enclosing block of the context that
    started the execution. Threads and asyncio tasks started inside the block
    only report here if they run in a copy of this context.

    Yields:
        The list the events are appended to, in order.
    """
    sink: list[CacheEvent] = []
    token = _COLLECTORS.set((*_COLLECTORS.get(), sink))
    try:
        yield sink
    finally:
        _COLLECTORS.reset(token)


def publish(event: CacheEvent) -> None:
    """Hand an event to every `collect_events()` block of the calling context.

    Args:
        event: The event.
    """
    for sink in _COLLECTORS.get():
        sink.append(event)


class EventSink:
    """Where a runner's events go: its totals, the log, collectors, file, callback.

    Args:
        log_file: This process's event file in the cache, or None (a
            read-only cache).
        on_event: Called with every event, in the thread that produced it.
    """

    def __init__(
        self,
        log_file: EventLog | None,
        on_event: Callable[[CacheEvent], None] | None,
    ) -> None:
        self.stats = CacheStats()
        self.on_event = on_event
        self._log_file = log_file
        self._lock = threading.Lock()

    def emit(self, event: CacheEvent) -> None:
        """Count an event and hand it to the log, collectors, file and callback.

        Args:
            event: The event.
        """
        with self._lock:
            self.stats.add(event)
        _log_event(event)
        publish(event)
        if self._log_file is not None:
            self._log_file.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                _runner_log.exception("on_event callback failed for %s", event.tool)


def _log_event(event: CacheEvent) -> None:
    if event.kind == "hit":
        _runner_log.info(
            "styxcache hit %s (%s): saved %.2fs%s",
            event.tool,
            event.key[:12],
            event.saved_s,
            f", {event.reason}" if event.reason else "",
        )
    elif event.kind in ("miss", "refresh"):
        _runner_log.info(
            "styxcache %s %s (%s): %s",
            event.kind,
            event.tool,
            event.key[:12],
            event.reason or "not cached yet",
        )
    else:
        _runner_log.debug("styxcache bypass %s: %s", event.tool, event.reason)


class EventLog:
    """Appends events to this process's JSON-lines file in a cache directory.

    Each process writes only its own file (named after host, pid and a random
    suffix), so no lock is needed and a reader simply concatenates the files.
    Failures to write are logged once and never break a pipeline.
    """

    def __init__(self, cache_root: Path) -> None:
        """Create the log; the file itself is created on the first event.

        Args:
            cache_root: The cache directory.
        """
        self._dir = cache_root / EVENTS_DIR
        self._lock = threading.Lock()
        self._handle: TextIO | None = None
        self._pid = -1
        self._broken = False

    def _file_for_this_process(self) -> TextIO:
        # A forked child must not share its parent's file (nor its handle).
        if self._handle is None or self._pid != os.getpid():
            self._pid = os.getpid()
            name = writer_file_name(".jsonl")
            self._dir.mkdir(exist_ok=True)
            self._handle = (self._dir / name).open("a", encoding="utf-8")
        return self._handle

    def append(self, event: CacheEvent) -> None:
        """Append one event.

        Args:
            event: The event.
        """
        if self._broken:
            return
        line = event.to_json() + "\n"
        with self._lock:
            try:
                handle = self._file_for_this_process()
                handle.write(line)
                handle.flush()  # one write(2) per event: readers see whole lines
            except OSError as exc:
                self._broken = True
                _log.warning("cannot write cache events to %s: %s", self._dir, exc)


def read_events(
    cache_root: Path, *, since: float | None = None
) -> Iterator[CacheEvent]:
    """Read every event recorded in a cache directory.

    Args:
        cache_root: The cache directory.
        since: Only events at or after this Unix time.

    Yields:
        Events, file by file; a torn last line of a live file is skipped.
    """
    folder = cache_root / EVENTS_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        try:
            # A damaged byte spoils one line, not the whole file.
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                data = json.loads(line)
                event = CacheEvent.from_dict(data) if isinstance(data, dict) else None
            except (ValueError, TypeError):
                continue
            if event is None or not _well_formed(event):
                continue
            if since is None or event.time >= since:
                yield event


def _well_formed(event: CacheEvent) -> bool:
    """Return True when a decoded event has the field types totals rely on."""
    numbers = (event.duration_s, event.saved_s, event.bytes_served, event.time)
    return (
        event.kind in _EVENT_KINDS
        and isinstance(event.nearest, str)
        and isinstance(event.differences, tuple)
        and isinstance(event.tool, str)
        and isinstance(event.key, str)
        and isinstance(event.remote, str)
        and all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
        )
    )
