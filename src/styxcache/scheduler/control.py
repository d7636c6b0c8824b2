"""The control RPC: answers `status` and `reload` requests from operators.

Requests arrive over NATS (`<prefix>.control.<name>`); the answer is built
from the scheduler's public surface only, described by `Controllable`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.executors import Executor

__all__ = ["Controllable", "answer"]


class Controllable(Protocol):
    """What the control RPC needs from a scheduler."""

    config_path: Any
    stopping: threading.Event

    @property
    def executor(self) -> Executor:
        """The scheduler's own executor."""
        ...

    @property
    def jobs(self) -> dict[str, ScheduleEntry]:
        """The registered entries by name."""
        ...

    @property
    def running(self) -> list[str]:
        """Keys of the runs in flight, sorted."""
        ...

    def executor_for(self, entry: ScheduleEntry) -> Executor:
        """The executor an entry's runs go to."""
        ...

    def next_fire_times(self, n: int = 1) -> dict[str, list[dt.datetime]]:
        """The next `n` fire times per entry."""
        ...

    def run_counts(self) -> dict[str, int]:
        """Runs in the store by state."""
        ...

    def reload(self) -> bool:
        """Re-read the schedule file; True if applied."""
        ...


def answer(scheduler: Controllable, command: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a control request.

    Args:
        scheduler: The scheduler asked.
        command: `{"command": "status"}` or `{"command": "reload"}`.

    Returns:
        A JSON-able reply; `ok` is False for an unknown command or a
        rejected reload.
    """
    what = command.get("command")
    if what == "status":
        return _status(scheduler)
    if what == "reload":
        if scheduler.config_path is None:
            return {"ok": False, "error": "not built from a schedule file"}
        applied = scheduler.reload()
        return {
            "ok": applied,
            "error": "" if applied else "invalid file; old schedules kept",
        }
    return {"ok": False, "error": f"unknown command {what!r}"}


def _status(scheduler: Controllable) -> dict[str, Any]:
    running = scheduler.running
    nexts = scheduler.next_fire_times(1)
    return {
        "ok": True,
        "schedules": {
            name: {
                "enabled": entry.enabled,
                "executor": scheduler.executor_for(entry).name
                if entry.executor is not None
                else scheduler.executor.name,
                "next": nexts[name][0].isoformat() if nexts[name] else None,
            }
            for name, entry in scheduler.jobs.items()
        },
        "running": running,
        "counts": scheduler.run_counts(),
        "stopping": scheduler.stopping.is_set(),
    }
