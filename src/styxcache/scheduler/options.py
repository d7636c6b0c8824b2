"""The scheduler's engine settings: one dataclass instead of eleven arguments.

`Scheduler(...)` still takes each setting as a keyword (typed through
`SchedulerOptions`), or all of them at once as `settings=SchedulerSettings(...)`;
the eight positional arguments of the seeds' routine loop come first, as
they always did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from styxcache.scheduler.clock import Clock
from styxcache.scheduler.executors import Executor
from styxcache.scheduler.nats_connect import NatsSettings
from styxcache.scheduler.runstore import RunRecord, RunStore

__all__ = ["SchedulerOptions", "SchedulerSettings"]


@dataclasses.dataclass
class SchedulerSettings:
    """How a scheduler runs (see `Scheduler` for each setting's meaning).

    Attributes:
        clock: Time source (`FakeClock` in tests); None: the system clock.
        executor: Where runs execute; None: 4 daemon threads.
        ledger: Run store; None: SQLite in `state_dir`, else in memory.
        state_dir: Folder for `ledger.sqlite3`.
        store: The run store (or a `postgresql://` URL), as `ledger`.
        max_sleep_seconds: Longest single wait.
        shutdown_timeout_seconds: Default grace for running work.
        jump_threshold_seconds: Wall-vs-monotonic gap that is a clock jump.
        on_run: Called with each finished run's record.
        dispatch_lead_seconds: How early a fire is claimed.
        nats: NATS settings (publishing, control requests).
        pool_size: Size of pools built for `threads` / `processes` entries.
    """

    clock: Clock | None = None
    executor: Executor | Any | None = None
    ledger: RunStore | None = None
    state_dir: str | Path | None = None
    store: RunStore | str | None = None
    max_sleep_seconds: float = 30.0
    shutdown_timeout_seconds: float = 30.0
    jump_threshold_seconds: float = 2.0
    on_run: Callable[[RunRecord], Any] | None = None
    dispatch_lead_seconds: float = 0.004
    nats: NatsSettings | None = None
    pool_size: int = 4

    def __post_init__(self) -> None:
        """Reject out-of-range values before anything is built.

        Raises:
            ValueError: If `max_sleep_seconds` is not positive.
            TypeError: If both `store` and `ledger` are given.
        """
        if self.max_sleep_seconds <= 0:
            raise ValueError(
                f"max_sleep_seconds must be positive, got {self.max_sleep_seconds}"
            )
        if self.store is not None and self.ledger is not None:
            raise TypeError("pass the run store as store= or ledger=, not both")


class SchedulerOptions(TypedDict, total=False):
    """The keyword form of `SchedulerSettings` (plus `settings` itself)."""

    settings: SchedulerSettings
    clock: Clock | None
    executor: Executor | Any | None
    ledger: RunStore | None
    state_dir: str | Path | None
    store: RunStore | str | None
    max_sleep_seconds: float
    shutdown_timeout_seconds: float
    jump_threshold_seconds: float
    on_run: Callable[[RunRecord], Any] | None
    dispatch_lead_seconds: float
    nats: NatsSettings | None
    pool_size: int


def settings_from(options: SchedulerOptions) -> SchedulerSettings:
    """Build the settings from constructor keywords.

    Args:
        options: `settings=` and/or individual settings; individual ones
            override the fields of `settings`.

    Returns:
        The settings.

    Raises:
        TypeError: For an unknown keyword.
    """
    base = options.get("settings")
    given: dict[str, Any] = {k: v for k, v in options.items() if k != "settings"}
    unknown = sorted(
        set(given) - {f.name for f in dataclasses.fields(SchedulerSettings)}
    )
    if unknown:
        raise TypeError(
            f"Scheduler() got unexpected keyword argument(s): {', '.join(unknown)}"
        )
    if base is None:
        return SchedulerSettings(**given)
    return dataclasses.replace(base, **given)
