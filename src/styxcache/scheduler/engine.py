"""The scheduler's engine: its services wired together, driven on demand.

`Engine` builds the registry, the executor routes, the run bus and the
dispatcher from a `SchedulerSettings`, and offers what a program needs
between waits: register and inspect schedules, pause, trigger, reload, and
`run_pending()` (seed 001's "call it from your own loop"). `Scheduler` adds
the loop that waits for the clock, signals and shutdown.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from styxcache.errors import ConfigError
from styxcache.scheduler.bus import RunBus, RunEvent, log_events, store_writer
from styxcache.scheduler.clock import SystemClock
from styxcache.scheduler.config import ScheduleConfig, load_config
from styxcache.scheduler.control import answer
from styxcache.scheduler.dispatch import Dispatch
from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.entry_build import build_entry
from styxcache.scheduler.executors import Executor, ThreadExecutor, as_executor
from styxcache.scheduler.ledger import Ledger
from styxcache.scheduler.nats_connect import NatsSettings
from styxcache.scheduler.options import SchedulerSettings
from styxcache.scheduler.refs import Target
from styxcache.scheduler.registry import Registry
from styxcache.scheduler.routing import ExecutorRoutes, Routed
from styxcache.scheduler.runstore import RunRecord, RunStore
from styxcache.scheduler.settle import Settler
from styxcache.scheduler.stores import open_store

__all__ = ["Engine"]


class Engine:
    """Schedules, run stores and executors, without a loop of its own."""

    def __init__(self, settings: SchedulerSettings, logger: logging.Logger) -> None:
        """Wire the services (see `Scheduler` for the settings).

        Args:
            settings: The engine settings.
            logger: Where lifecycle and run lines go.
        """
        self.logger = logger
        self.clock = settings.clock or SystemClock()
        self.ledger = _open_store(settings)
        self.max_sleep_seconds = settings.max_sleep_seconds
        self.shutdown_timeout_seconds = settings.shutdown_timeout_seconds
        self.jump_threshold_seconds = settings.jump_threshold_seconds
        self.on_run = settings.on_run
        self.dispatch_lead_seconds = max(0.0, settings.dispatch_lead_seconds)
        self.config_path: Path | None = None
        self._config: ScheduleConfig | None = None
        self.stopping = threading.Event()
        """Set once shutdown has begun (no new fires are claimed after it)."""
        self._registry = Registry(self.clock, self.logger)
        executor = settings.executor
        self._routes = ExecutorRoutes(
            as_executor(executor) if executor is not None else ThreadExecutor(4),
            nats=settings.nats,
            pool_size=settings.pool_size,
            control=self.control,
            logger=self.logger,
        )
        bus = RunBus()
        bus.subscribe(store_writer(self.ledger))
        bus.subscribe(log_events(self.logger))
        bus.subscribe(self._announce)
        settler = Settler(
            self._registry, bus, stopping=self.stopping, max_wait=self.max_sleep_seconds
        )
        self._dispatch = Dispatch(self.ledger, self._routes, settler)
        if settings.nats is not None:
            self._routes.named("nats")

    # ------------------------------------------------------ executors, state

    executor: Routed[Executor] = Routed("default")
    """The scheduler's executor (entries without their own use it)."""
    test_mode: Routed[bool] = Routed("test_mode")
    """Run every fire inline in the thread that calls `run_pending()`,
    whatever the executors (no pool, no dispatcher, no NATS run message).
    Publish entries (seeds 002/003), which have nothing to run, still
    publish, unsigned. For deterministic tests (seed 001)."""
    nats: Routed[NatsSettings | None] = Routed("nats")
    """NATS settings: where `executor: nats` entries publish."""
    dask_tls: Routed[Any] = Routed("dask_tls")
    """`DaskTLS` for entries' `tls://` executors (a file's `dask:` section)."""
    pool_size: Routed[int] = Routed("pool_size")
    """Size of the pools built for entries that name `threads` or `processes`."""

    @property
    def running(self) -> list[str]:
        """Keys of the runs in flight, sorted."""
        with self._registry.lock:
            return sorted(self._dispatch.settler.inflight)

    def executor_for(self, entry: ScheduleEntry) -> Executor:
        """Return the executor an entry's runs go to.

        Args:
            entry: The entry.

        Returns:
            The entry's own executor (built once per kind), else the
            scheduler's; in `test_mode`, always inline.
        """
        return self._routes.for_entry(entry)

    def control(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a control request (NATS `<prefix>.control.<name>`).

        Args:
            command: `{"command": "status"}` or `{"command": "reload"}`.

        Returns:
            A JSON-able reply; `ok` is False for an unknown command or a
            rejected reload.
        """
        return answer(self, command)

    def run_counts(self) -> dict[str, int]:
        """Return how many runs the run store holds in each state."""
        return self.ledger.count_by_state()

    def _announce(self, events: Sequence[RunEvent]) -> None:
        """Hand settled and retried runs to `on_run` (read at call time)."""
        hook = self.on_run
        if hook is None:
            return
        for event in events:
            if event.kind == "abandoned":
                continue
            try:
                hook(event.record)
            except Exception:
                self.logger.exception("on_run hook failed for %s", event.record.key)

    # -------------------------------------------------------------- schedules

    def register_task(
        self,
        name: str,
        cron_or_interval: str | float | dt.timedelta,
        callback: Target | str,
        **options: Any,
    ) -> ScheduleEntry:
        """Register a schedule; safe while other threads run `run_pending()`.

        Args:
            name: Unique schedule name.
            cron_or_interval: A cron string, or seconds / a `timedelta`.
            callback: Callable or `module:function`. A callable is called
                with no arguments unless `pass_context=True`; a string
                target receives the `RunContext` unless `pass_context=False`.
            **options: Entry settings (`timezone`, `catchup`, `overlap`,
                `jitter_seconds`, `cache`, `expand_from`, `max_catchup`,
                `grace_seconds`, `max_fanout`, `enabled`, `anchor`), plus
                `pass_context` and `replace` (allow re-registering a name).

        Returns:
            The validated entry.

        Raises:
            ConfigError: For an invalid expression or option, or a name
                already registered without `replace=True`.
        """
        # Seed-001 callbacks take no arguments; `module:function` targets are
        # YAML-style and take the run context.
        pass_context = bool(options.pop("pass_context", isinstance(callback, str)))
        replace = bool(options.pop("replace", False))
        raw: dict[str, Any] = {"name": name, "target": callback, **options}
        if isinstance(cron_or_interval, str):
            raw["cron"] = cron_or_interval
        elif isinstance(cron_or_interval, dt.timedelta):
            raw["interval_seconds"] = cron_or_interval.total_seconds()
        else:
            raw["interval_seconds"] = cron_or_interval
        entry = build_entry(raw, pass_context=pass_context, memo=self._registry.memo)
        self.add_entry(entry, replace=replace)
        return entry

    def add_entry(self, entry: ScheduleEntry, *, replace: bool = False) -> None:
        """Register an already validated entry.

        Args:
            entry: The entry (see `build_entry`).
            replace: Allow replacing an entry of the same name.

        Raises:
            ConfigError: If the name is taken and `replace` is False.
        """
        self._registry.add(entry, replace=replace)
        self._wake_loop()

    @property
    def jobs(self) -> dict[str, ScheduleEntry]:
        """The registered entries by name."""
        return self._registry.entries()

    def pause(self, name: str) -> None:
        """Pause a schedule: its fires are recorded `skipped` until `resume()`.

        Kept in the ledger, so it survives restarts and every scheduler
        sharing the ledger honours it on its next wake.

        Args:
            name: Schedule name.

        Raises:
            KeyError: If no such schedule is registered.
        """
        self._set_paused(name, True)

    def resume(self, name: str) -> None:
        """Resume a paused schedule from its next fire (no catch-up).

        Args:
            name: Schedule name.

        Raises:
            KeyError: If no such schedule is registered.
        """
        self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> None:
        if name not in self.jobs:
            raise KeyError(name)
        self.ledger.set_paused(name, paused, self.clock.time())

    def trigger(
        self, name: str, items: Sequence[Mapping[str, Any]] | None = None
    ) -> list[RunRecord]:
        """Run a schedule now, outside its timetable, and wait for it.

        The run is recorded in the ledger like any other, under the key
        `name@<now>` (its nominal time is now) with the reason "triggered
        by hand"; overlap rules do not apply to it.

        Args:
            name: Schedule name.
            items: Fan-out items to run instead of calling `expand_from`
                (one run each); None runs the entry as a fire would.

        Returns:
            The finished runs' records (the expanding fire and its items).

        Raises:
            KeyError: If no such schedule is registered.
        """
        entry = self.jobs.get(name)
        if entry is None:
            raise KeyError(name)
        return self._dispatch.run_now(entry, items)

    def next_fire_times(self, n: int = 1) -> dict[str, list[dt.datetime]]:
        """Return the next `n` nominal fire times of every enabled entry.

        Args:
            n: How many per entry.

        Returns:
            Entry name to aware datetimes (in the entry's zone for cron).
        """
        return self._registry.next_fire_times(self.clock.time(), n)

    # ------------------------------------------------------------ the engine

    def run_pending(self, lookahead: float = 0.0, *, wait: bool = True) -> int:
        """Run everything that is due now, and return once it has run.

        As in seed 001 and the `schedule` library: the due fires are
        collected and claimed under the lock, their callbacks run outside it
        (so a callback may register tasks), then the results are recorded
        under the lock. The callbacks run on the executor (the scheduler's
        thread pool by default, in parallel; inline or in `test_mode`, in
        this thread) and this call waits until each of them has finished and
        is in the ledger, so a script that calls `run_pending()` and exits
        loses nothing. The long-running loop (`run()`, `start()`) does not
        wait: it hands fires to the pool and goes back to the clock.

        Safe to call from several threads at once and while other threads
        register tasks.

        Args:
            lookahead: Also claim fires due within this many seconds, then
                wait for their due instant before dispatching them.
            wait: Wait for the started runs (False: hand them to the
                executor and return, as the loop does).

        Returns:
            How many runs were started by this call.
        """
        return self._dispatch.run_pending(lookahead, wait=wait)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (real time) until no run is in flight, recording each as it ends.

        Args:
            timeout: Longest wait in seconds; None waits indefinitely.

        Returns:
            True if nothing is in flight any more.
        """
        return self._dispatch.drain(timeout)

    def _wake_loop(self) -> None:
        if self._dispatch.settler.loop_ident is not None:
            self.clock.wake()

    # ---------------------------------------------------------------- reload

    def reload(self) -> bool:
        """Re-read the YAML file and apply the differences.

        Unchanged entries keep their state; a changed trigger keeps its
        history but does not rerun fires before now; removed entries let
        running work finish; new entries start from now. An invalid file
        keeps the old configuration.

        Returns:
            True if the new file was applied.

        Raises:
            RuntimeError: If the scheduler was not built from a file.
        """
        if self.config_path is None:
            raise RuntimeError(
                "reload() needs a scheduler built with Scheduler.from_yaml"
            )
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.logger.error(
                "reload of %s rejected, keeping the old schedules: %s",
                self.config_path,
                exc,
            )
            return False
        self._apply_config(config, initial=False)
        return True

    def _apply_config(self, config: ScheduleConfig, *, initial: bool) -> None:
        previous = self._config
        if not initial and previous is not None:
            # These are fixed when the scheduler is built; say so, not silently.
            for label, before, after in (
                ("executor", previous.executor, config.executor),
                ("nats", previous.nats, config.nats),
                ("state_dir", previous.state_dir, config.state_dir),
            ):
                if before != after:
                    self.logger.warning(
                        "reload: %s changed (%s -> %s); it applies after a restart",
                        label,
                        before,
                        after,
                    )
        self._config = config
        added, changed, removed, kept = self._registry.apply(
            config.entries, initial=initial
        )
        if not initial:
            self.logger.info(
                "reloaded %s: %d added, %d changed, %d removed, %d unchanged",
                config.path,
                added,
                changed,
                removed,
                kept,
            )
        self._wake_loop()


def _open_store(settings: SchedulerSettings) -> RunStore:
    """The run store the settings name (SQLite in memory by default)."""
    store = settings.store
    if store is not None:
        return open_store(store) if isinstance(store, str) else store
    if settings.ledger is not None:
        return settings.ledger
    if settings.state_dir is not None:
        return Ledger(Path(settings.state_dir) / "ledger.sqlite3")
    return Ledger(":memory:")
