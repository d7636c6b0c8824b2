"""`Scheduler`: a routine loop and a cron/interval job scheduler in one object.

Two ways in, one engine:

* Seed-000 style: `Scheduler(routine=f, wait_ms=5_000, logger=log,
  max_cycles=3).run()` calls `f(scheduler)` every `wait_ms` and keeps a
  session ledger in `records` (see `routine`).
* Job style: `register_task(name, "0 2 * * *", callback, **options)` or
  `Scheduler.from_yaml(path)`, then `run_pending()` from your own loop, or
  `run()` / `start()` to let the scheduler wait for the next fire itself.

This module keeps the loop, start and stop, signals, clock-jump detection
and the YAML entry point; the work is done by the pieces it wires together:
`registry` (jobs, heap, reload diff), `planner` (pure fire decisions),
`dispatch` (claim, start, fan-out, completions, retries, overlap queue),
`routing` (entry to executor), `control` (the control RPC) and `bus`
(the ledger, the log and `on_run` listen to finished runs).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from styxcache.scheduler.clock import Clock
from styxcache.scheduler.config import ScheduleConfig, load_config
from styxcache.scheduler.engine import Engine
from styxcache.scheduler.entry import cache_label
from styxcache.scheduler.executors import Executor, dispatches_work, make_executor
from styxcache.scheduler.options import (
    SchedulerOptions,
    SchedulerSettings,
    settings_from,
)
from styxcache.scheduler.planner import item_key
from styxcache.scheduler.routine import ExceptionHandler, RoutineSession
from styxcache.scheduler.runstore import RunStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Scheduler", "SchedulerSettings", "item_key"]


class Scheduler(Engine, RoutineSession):
    """Runs a routine in a loop and/or fires registered schedules.

    Example:
        >>> import logging
        >>> from styxcache.scheduler import FakeClock, InlineExecutor
        >>> seen = []
        >>> s = Scheduler(clock=FakeClock(), executor=InlineExecutor())
        >>> _ = s.register_task("tick", 60, lambda: seen.append(1))
        >>> s.run(max_cycles=5)  # waits are at most max_sleep_seconds (30 s)
        >>> len(seen)
        2
    """

    def __init__(
        self,
        routine: Callable[[Scheduler], Any] | None = None,
        wait_ms: int = 5_000,
        logger: logging.Logger | None = None,
        sess_stats: Callable[[Scheduler], Mapping[str, Any]] | None = None,
        exception_handler: ExceptionHandler | None = None,
        max_cycles: int | None = None,
        until_ms: int | None = None,
        records: list[dict[str, Any]] | None = None,
        **options: Unpack[SchedulerOptions],
    ) -> None:
        """Create a scheduler; nothing runs until `run()`, `start()` or `run_pending()`.

        Args:
            routine: Called as `routine(scheduler)` once per cycle. An object
                that dispatches work instead (seed 001's
                `Scheduler(dispatcher)`: anything with `dispatch(job)` or
                `submit(...)`, such as a `concurrent.futures.Executor`) is
                taken as the `executor`: where runs go.
            wait_ms: Milliseconds between routine cycles (anchored to the
                start, so slow cycles do not accumulate drift).
            logger: Where lifecycle and run lines go.
            sess_stats: Extra columns for each session record.
            exception_handler: `handler(exc, where, scheduler)` for routine
                errors; the default records the session end, logs, re-raises.
            max_cycles: Stop `run()` after this many cycles.
            until_ms: Stop `run()` at this Unix time in milliseconds.
            records: Session records list to append to.
            **options: Engine settings, one keyword each or all together as
                `settings=SchedulerSettings(...)` (keywords win):
                `clock` (time source, `FakeClock` in tests); `executor`
                (where runs execute, default 4 daemon threads: an
                `Executor`, a `distributed.Client` or any
                `concurrent.futures.Executor`; entries may override it);
                `ledger` (run store, default a SQLite `Ledger` in
                `state_dir`, else in memory); `state_dir` (folder for
                `ledger.sqlite3`); `store` (the run store, as `ledger`, or a
                `postgresql://` URL for a store shared by several
                schedulers, see docs/how-to/replicas.md);
                `max_sleep_seconds` (longest single wait, so a suspend or a
                clock jump is noticed promptly); `shutdown_timeout_seconds`
                (default grace for running work); `jump_threshold_seconds`
                (wall-vs-monotonic gap that counts as a clock jump);
                `on_run` (called with each finished run's ledger record; its
                exceptions are logged and ignored); `dispatch_lead_seconds`
                (how early the loop wakes to claim a fire before dispatching
                it on time); `nats` (where `executor: nats` entries publish
                and where this scheduler answers control requests, connected
                now when given); `pool_size` (size of the pools built for
                entries that name `threads` or `processes`).

        Raises:
            TypeError: If `routine` is neither callable nor a dispatcher, a
                dispatcher is given both positionally and as `executor`, a
                keyword is unknown, or both `store` and `ledger` are given.
            ValueError: If a numeric setting is out of range.
        """
        settings = settings_from(options)
        if routine is not None and not callable(routine):
            if not dispatches_work(routine):
                raise TypeError(
                    "the first argument must be a routine (callable) or an object"
                    " that dispatches runs (with dispatch() or submit()), got"
                    f" {type(routine).__name__}"
                )
            if settings.executor is not None:
                raise TypeError(
                    f"got a dispatcher ({type(routine).__name__}) and executor=;"
                    " pass only one"
                )
            settings = dataclasses.replace(settings, executor=routine)
            routine = None
        self._init_routine(
            routine,
            wait_ms,
            logger,
            sess_stats,
            exception_handler,
            max_cycles,
            until_ms,
            records,
        )
        super().__init__(settings, self.logger)
        self._reload_requested = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        clock: Clock | None = None,
        executor: Executor | Any | None = None,
        logger: logging.Logger | None = None,
        state_dir: str | Path | None = None,
        store: RunStore | str | None = None,
    ) -> Scheduler:
        """Build a scheduler from a YAML schedule file.

        Args:
            path: The file (see `styxcache.scheduler.config`).
            clock: Time source.
            executor: Overrides the file's `executor` setting (also a
                `distributed.Client` or a `concurrent.futures.Executor`).
            logger: Where run lines go.
            state_dir: Overrides the file's `state_dir`.
            store: Overrides the file's `state` (a run store or a
                `postgresql://` URL); wins over `state_dir`.

        Returns:
            A scheduler with every entry registered.

        Raises:
            ConfigError: If the file is invalid (nothing is written then).
        """
        config = load_config(path)
        kind = config.executor.kind
        scheduler = cls(
            logger=logger,
            clock=clock,
            executor=executor
            or (
                make_executor(kind, config.executor.max_workers, dask_tls=config.dask)
                if kind != "nats"
                else None
            ),
            state_dir=state_dir if state_dir is not None else config.state_dir,
            store=store
            if store is not None
            else (config.state if state_dir is None else None),
            max_sleep_seconds=config.max_sleep_seconds,
            shutdown_timeout_seconds=config.shutdown_timeout_seconds,
            nats=config.nats,
            pool_size=config.executor.max_workers,
        )
        scheduler.dask_tls = config.dask
        if executor is None and kind == "nats":
            scheduler.executor = scheduler._routes.named("nats")
        scheduler.config_path = Path(path)
        scheduler._config = config
        scheduler._apply_config(config, initial=True)
        scheduler._log_caches(config)
        return scheduler

    def _log_caches(self, config: ScheduleConfig) -> None:
        by_cache: dict[str, list[str]] = {}
        for entry in config.entries:
            if entry.executor == "nats" and entry.runner is None:
                continue  # publish entries and NATS runs: the worker's cache
            by_cache.setdefault(cache_label(entry), []).append(entry.name)
        for label, names in by_cache.items():
            if label == "none":
                self.logger.warning(
                    "schedule(s) %s run without a cache (runner: none)",
                    ", ".join(names),
                )
            else:
                self.logger.info(
                    "schedule(s) %s run through the cache %s",
                    ", ".join(names),
                    label,
                )

    # -------------------------------------------------------------- the loop

    def run(
        self,
        max_cycles: int | None = None,
        until_ms: int | None = None,
        *,
        handle_signals: bool = False,
    ) -> None:
        """Loop until `max_cycles`, `until_ms` or `shutdown()`.

        Each cycle runs what is due and, when a routine is set and its turn
        has come, calls `routine(self)`; then it waits for the next fire or
        routine turn (at most `max_sleep_seconds`).

        Args:
            max_cycles: Overrides the constructor's value.
            until_ms: Overrides the constructor's value.
            handle_signals: Install SIGTERM/SIGINT (shutdown) and SIGHUP
                (reload) handlers; only from the main thread.
        """
        if max_cycles is not None:
            self.max_cycles = max_cycles
        if until_ms is not None:
            self.until_ms = until_ms
        restore = self._install_signals() if handle_signals else None
        self._session_start = self.clock.time()
        self._dispatch.settler.loop_ident = threading.get_ident()
        self.logger.info(
            "scheduler started with %d schedule(s)", len(self._registry.jobs)
        )
        try:
            reason = self._loop()
        finally:
            self._dispatch.settler.loop_ident = None
            if restore is not None:
                restore()
        if self.stopping.is_set():
            self._finish_shutdown(self.shutdown_timeout_seconds)
        else:
            self.drain(self.shutdown_timeout_seconds)
        self.record_session_end(reason)

    def _loop(self) -> str:
        """Cycle until a stop condition; return why it stopped."""
        next_routine = self.clock.monotonic()
        while not self.stopping.is_set():
            limit = self._limit_reached()
            if limit is not None:
                return limit
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            self.run_pending(self._claim_lead(), wait=False)
            if self.routine is None:
                self.cycle += 1
            elif self.clock.monotonic() >= next_routine:
                self._run_routine()
                next_routine += self.wait_ms / 1000
                # A cycle longer than wait_ms does not queue up extra cycles.
                next_routine = max(next_routine, self.clock.monotonic())
            self._sleep(next_routine)
        return "shutdown requested"

    def _claim_lead(self) -> float:
        return self._registry.claim_lead(
            self.dispatch_lead_seconds, self.max_sleep_seconds
        )

    def _sleep(self, next_routine: float) -> None:
        now = self.clock.time()
        to_due = self._registry.seconds_to_next_due(now) - self._claim_lead()
        timeout = min(to_due, self.max_sleep_seconds)
        if self.routine is not None:
            timeout = min(timeout, next_routine - self.clock.monotonic())
        if self.max_cycles is not None and self.cycle >= self.max_cycles:
            return
        if timeout <= 0 or self.stopping.is_set():
            return
        wall0, mono0 = self.clock.time(), self.clock.monotonic()
        self.clock.wait(timeout)
        drift = (self.clock.time() - wall0) - (self.clock.monotonic() - mono0)
        if abs(drift) > self.jump_threshold_seconds:
            self.logger.warning(
                "wall clock jumped by %+.1fs while waiting (suspend or clock change);"
                " fires in between are handled by the catch-up rules",
                drift,
            )

    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread.

        Returns:
            The thread.

        Raises:
            RuntimeError: If the loop is already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(
            target=self.run, name="styxcache-scheduler", daemon=True
        )
        self._thread.start()
        return self._thread

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop claiming fires, let running work finish, then give up on it.

        Never blocks much longer than `timeout` (real seconds): runs still
        going then are recorded as interrupted, queued ones as skipped.

        Args:
            timeout: Grace for running work (default: the configured one).

        Returns:
            True if every run finished within the timeout.
        """
        grace = self.shutdown_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + grace
        self.stopping.set()
        self.clock.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return self._finish_shutdown(max(0.0, deadline - time.monotonic()))

    def _finish_shutdown(self, timeout: float) -> bool:
        self.stopping.set()
        clean = self.drain(timeout)
        nothing_left = self._dispatch.settler.give_up(timeout)
        self._routes.shutdown()
        return clean and nothing_left

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "signal handlers can only be installed from the main thread"
            )

        def stop(signum: int, _frame: FrameType | None) -> None:
            self.logger.info("received %s: shutting down", signal.Signals(signum).name)
            self.stopping.set()
            self.clock.wake()

        def hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True
            self.clock.wake()

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop))
        }
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def close(self) -> None:
        """Shut down without grace (if running) and close the ledger."""
        if not self.stopping.is_set():
            self.shutdown(timeout=0)
        self.ledger.close()
