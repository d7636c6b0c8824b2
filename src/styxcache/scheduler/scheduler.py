"""`Scheduler`: a routine loop and a cron/interval job scheduler in one class.

Two ways in, one engine:

* Seed-000 style: `Scheduler(routine=f, wait_ms=5_000, logger=log,
  max_cycles=3).run()` calls `f(scheduler)` every `wait_ms` and keeps a
  session ledger in `records`.
* Job style: `register_task(name, "0 2 * * *", callback, **options)` or
  `Scheduler.from_yaml(path)`, then `run_pending()` from your own loop, or
  `run()` / `start()` to let the scheduler wait for the next fire itself.

Every fire goes through the same steps on each wake: list the fires since the
entry's watermark, sort them into on-time and late (`grace_seconds`), apply
the entry's `catchup` and `overlap` rules, claim the survivors in the SQLite
ledger (a key that is already there is somebody else's), then hand them to
the executor outside the lock.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import heapq
import itertools
import json
import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from styxcache.scheduler.clock import Clock, SystemClock, utc_from_timestamp
from styxcache.scheduler.config import (
    ConfigError,
    NatsSettings,
    ScheduleConfig,
    ScheduleEntry,
    Target,
    build_entry,
    cache_label,
    load_config,
    resolve_callable,
)
from styxcache.scheduler.executors import (
    Executor,
    InlineExecutor,
    ThreadExecutor,
    as_executor,
    dispatches_work,
    make_executor,
)
from styxcache.scheduler.ledger import Ledger, RunRecord, RunStore, run_key
from styxcache.scheduler.runs import (
    RunContext,
    RunLostError,
    RunOutcome,
    RunRequest,
    execute_run,
)
from styxcache.scheduler.stores import StoreUnavailableError, open_store
from styxcache.scheduler.triggers import load_zone

__all__ = ["Scheduler", "item_key"]

# Fires listed one by one per wake and entry; older ones are summarised.
_MAX_ENUMERATED = 10_000
# A herd due within this window is claimed ahead, at about this cost per fire.
_HERD_WINDOW_S = 1.0
_CLAIM_COST_S = 100e-6
# Item keys longer than this are replaced by a digest of the item.
_MAX_ITEM_KEY = 80

ExceptionHandler = Callable[[BaseException, str, "Scheduler"], Any]


@dataclasses.dataclass(slots=True)
class _Fire:
    """One claimed run on its way to (or back from) the executor."""

    record: RunRecord
    entry: ScheduleEntry
    item: dict[str, Any] = dataclasses.field(default_factory=dict)
    expand: bool = False
    future: cf.Future[RunOutcome] | None = None
    action: str = "start"
    attempt: int = 1
    settled: bool = False


@dataclasses.dataclass(slots=True)
class _Job:
    """Runtime state of one registered entry."""

    entry: ScheduleEntry
    learned: float
    watermark: float = 0.0
    synced: bool = False
    fresh: bool = True
    version: int = 0
    next_nominal: float | None = None
    # The heap holds a cheap lower bound, not the next fire: computed on pop.
    lazy: bool = False
    running: int = 0
    queued: deque[_Fire] = dataclasses.field(default_factory=deque)


class Scheduler:
    """Runs a routine in a loop and/or fires registered schedules.

    Example:
        >>> import logging
        >>> from styxcache.scheduler import FakeClock, InlineExecutor
        >>> seen = []
        >>> s = Scheduler(clock=FakeClock(), executor=InlineExecutor())
        >>> _ = s.register_task("tick", 60, lambda: seen.append(1))
        >>> s.run(max_cycles=3)
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
        *,
        clock: Clock | None = None,
        executor: Executor | Any | None = None,
        ledger: RunStore | None = None,
        state_dir: str | Path | None = None,
        store: RunStore | str | None = None,
        max_sleep_seconds: float = 30.0,
        shutdown_timeout_seconds: float = 30.0,
        jump_threshold_seconds: float = 2.0,
        on_run: Callable[[RunRecord], Any] | None = None,
        dispatch_lead_seconds: float = 0.004,
        nats: NatsSettings | None = None,
        pool_size: int = 4,
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
            clock: Time source (`FakeClock` in tests).
            executor: Where runs execute (default: 4 daemon threads): an
                `Executor`, a `distributed.Client` or any
                `concurrent.futures.Executor`. Entries may override it.
            ledger: Run store (default: a SQLite `Ledger` in `state_dir`,
                else in memory).
            state_dir: Folder for `ledger.sqlite3`.
            store: The run store, as `ledger` (whichever name reads better),
                or a `postgresql://` URL for a store shared by several
                schedulers (see docs/how-to/replicas.md).
            max_sleep_seconds: Longest single wait, so a suspend or a clock
                jump is noticed promptly.
            shutdown_timeout_seconds: Default grace for running work.
            jump_threshold_seconds: Wall-vs-monotonic gap that counts as a
                clock jump.
            on_run: Called with each finished run's ledger record (metrics,
                notifications); its exceptions are logged and ignored.
            dispatch_lead_seconds: How early the loop wakes to claim a fire
                in the ledger before dispatching it on time.
            nats: NATS settings: where `executor: nats` entries publish, and
                where this scheduler answers control requests (connected
                now when given).
            pool_size: Size of the pools built for entries that name
                `threads` or `processes`.

        Raises:
            TypeError: If `routine` is neither callable nor a dispatcher, or
                a dispatcher is given both positionally and as `executor`.
            ValueError: If a numeric setting is out of range.
        """
        if routine is not None and not callable(routine):
            if not dispatches_work(routine):
                raise TypeError(
                    "the first argument must be a routine (callable) or an object"
                    " that dispatches runs (with dispatch() or submit()), got"
                    f" {type(routine).__name__}"
                )
            if executor is not None:
                raise TypeError(
                    f"got a dispatcher ({type(routine).__name__}) and executor=;"
                    " pass only one"
                )
            executor, routine = routine, None
        if wait_ms < 0:
            raise ValueError(f"wait_ms must not be negative, got {wait_ms}")
        if max_cycles is not None and max_cycles < 0:
            raise ValueError(f"max_cycles must not be negative, got {max_cycles}")
        if max_sleep_seconds <= 0:
            raise ValueError(
                f"max_sleep_seconds must be positive, got {max_sleep_seconds}"
            )
        self.routine = routine
        self.wait_ms = wait_ms
        self.logger = logger or logging.getLogger("styxcache.scheduler")
        self.sess_stats = sess_stats or (lambda _s: {})
        self.exception_handler: ExceptionHandler = (
            exception_handler or _default_exception_handler
        )
        self.max_cycles = max_cycles
        self.until_ms = until_ms
        self.records: list[dict[str, Any]] = records if records is not None else []
        self.cycle = 0
        self.clock: Clock = clock or SystemClock()
        self.executor: Executor = (
            as_executor(executor) if executor is not None else ThreadExecutor(4)
        )
        self.nats = nats
        self.dask_tls: Any = None
        """`DaskTLS` for entries' `tls://` executors (a file's `dask:` section)."""
        self.pool_size = pool_size
        self.test_mode = False
        """Run every fire inline in the thread that calls `run_pending()` or
        `run()`, whatever the executors (no pool, no dispatcher, no NATS
        run message). Publish entries (seeds 002/003), which have nothing to
        run, still publish, unsigned. For deterministic tests (seed 001)."""
        self._inline = InlineExecutor()
        # Fires started by the current thread's run_pending() (it waits for them).
        self._tls = threading.local()
        self._settle = threading.Condition()
        self._waiting = 0  # threads in _wait_settled (completions notify them)
        self._nominal_dt: tuple[float, dt.datetime] = (float("nan"), dt.datetime.min)
        # Executors built from entries' `executor:` strings (shut down with
        # the scheduler) and adapters of objects passed in code (not ours).
        self._executors: dict[str, Executor] = {}
        self._adapted: dict[int, tuple[Any, Executor]] = {}
        self._executors_lock = threading.Lock()
        if store is not None:
            if ledger is not None:
                raise TypeError("pass the run store as store= or ledger=, not both")
            ledger = open_store(store) if isinstance(store, str) else store
        if ledger is None:
            path = (
                Path(state_dir) / "ledger.sqlite3"
                if state_dir is not None
                else ":memory:"
            )
            ledger = Ledger(path)
        self.ledger = ledger
        self.max_sleep_seconds = max_sleep_seconds
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.jump_threshold_seconds = jump_threshold_seconds
        self.on_run = on_run
        self.dispatch_lead_seconds = max(0.0, dispatch_lead_seconds)
        self.config_path: Path | None = None
        self._config: ScheduleConfig | None = None
        self.stopping = threading.Event()
        """Set once shutdown has begun (no new fires are claimed after it)."""

        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._completions: queue.SimpleQueue[_Fire] = queue.SimpleQueue()
        self._inflight: dict[str, _Fire] = {}
        self._reload_requested = False
        self._thread: threading.Thread | None = None
        self._session_start: float | None = None
        self._recovered = False
        # While the run store is out of reach, re-sync no sooner than this
        # (monotonic seconds), instead of spinning.
        self._store_retry_at = 0.0
        self._ready: list[_Fire] = []
        # Insertion-ordered, so fires due together start in registration order.
        self._unsynced: dict[str, None] = {}
        self._unreported: list[tuple[_Fire, RunOutcome]] = []
        self._loop_ident: int | None = None
        if nats is not None:
            self._executor_named("nats")

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
            scheduler.executor = scheduler._executor_named("nats")
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
        entry = build_entry(raw, pass_context=pass_context)
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
        with self._lock:
            if entry.name in self._jobs and not replace:
                raise ConfigError(
                    "already registered (pass replace=True)",
                    entry=entry.name,
                    field="name",
                )
            self._install(entry)
        if self._loop_ident is not None:
            self.clock.wake()

    def unregister_task(self, name: str) -> None:
        """Remove a schedule; its running work finishes and is recorded.

        Args:
            name: Schedule name.

        Raises:
            KeyError: If no such schedule is registered.
        """
        with self._lock:
            if name not in self._jobs:
                raise KeyError(name)
            del self._jobs[name]

    def _install(self, entry: ScheduleEntry, *, fresh: bool = False) -> None:
        old = self._jobs.get(entry.name)
        if old is None:
            self._jobs[entry.name] = _Job(
                entry=entry, learned=self.clock.time(), fresh=fresh
            )
            self._unsynced[entry.name] = None
            return
        trigger_changed = old.entry.trigger.signature != entry.trigger.signature
        # Either direction is written to the ledger: re-enabling must start
        # from "now" even after a restart.
        enabled_changed = entry.enabled != old.entry.enabled
        old.entry = entry
        old.version += 1
        if trigger_changed or enabled_changed or not old.synced:
            old.synced = False
            old.learned = self.clock.time()
            self._unsynced[entry.name] = None
        else:
            self._schedule_next(old)

    @property
    def jobs(self) -> dict[str, ScheduleEntry]:
        """The registered entries by name."""
        with self._lock:
            return {name: job.entry for name, job in self._jobs.items()}

    def pause(self, name: str) -> None:
        """Pause a schedule: its fires are recorded `skipped` until `resume()`.

        Kept in the ledger, so it survives restarts and every scheduler
        sharing the ledger honours it on its next wake.

        Args:
            name: Schedule name.

        Raises:
            KeyError: If no such schedule is registered.
        """
        if name not in self.jobs:
            raise KeyError(name)
        self.ledger.set_paused(name, True, self.clock.time())

    def resume(self, name: str) -> None:
        """Resume a paused schedule from its next fire (no catch-up).

        Args:
            name: Schedule name.

        Raises:
            KeyError: If no such schedule is registered.
        """
        if name not in self.jobs:
            raise KeyError(name)
        self.ledger.set_paused(name, False, self.clock.time())

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
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                raise KeyError(name)
            entry = job.entry
        now = self.clock.time()
        reason = "triggered by hand"
        fires: list[_Fire] = []
        if items is None:
            expand = entry.expand_from is not None
            record = RunRecord(
                key=run_key(name, now, "*" if expand else ""),
                entry=name,
                nominal=now,
                item="*" if expand else "",
                state="running",
                reason=reason,
                due=now,
                started=now,
                lateness=0.0,
            )
            fires.append(_Fire(record=record, entry=entry, expand=expand))
        else:
            for key, item in self._items(entry, list(items)):
                record = RunRecord(
                    key=run_key(name, now, key),
                    entry=name,
                    nominal=now,
                    item=key,
                    state="running",
                    reason=reason,
                    due=now,
                    started=now,
                    lateness=0.0,
                )
                fires.append(_Fire(record=record, entry=entry, item=item))
        claimed = self.ledger.claim([f.record for f in fires])
        mine = [f for f, ok in zip(fires, claimed, strict=True) if ok]
        with self._lock:
            job.running += len(mine)
        outer = getattr(self._tls, "batch", None)
        batch: list[_Fire] = []
        self._tls.batch = batch
        try:
            for fire in mine:
                self._start(fire, persisted=True)
        finally:
            self._tls.batch = outer
        self._wait_settled(batch)
        return [f.record for f in batch]

    def next_fire_times(self, n: int = 1) -> dict[str, list[dt.datetime]]:
        """Return the next `n` nominal fire times of every enabled entry.

        Args:
            n: How many per entry.

        Returns:
            Entry name to aware datetimes (in the entry's zone for cron).
        """
        now = self.clock.time()
        result: dict[str, list[dt.datetime]] = {}
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            entry = job.entry
            if not entry.enabled:
                result[entry.name] = []
                continue
            start = max(now, job.watermark) if job.synced else now
            zone = getattr(entry.trigger, "timezone", "UTC")
            fires = itertools.islice(entry.trigger.iter_after(start), n)
            result[entry.name] = [
                dt.datetime.fromtimestamp(t, load_zone(zone)) for t in fires
            ]
        return result

    # -------------------------------------------------------------- executors

    def executor_for(self, entry: ScheduleEntry) -> Executor:
        """Return the executor an entry's runs go to.

        Args:
            entry: The entry.

        Returns:
            The entry's own executor (built once per kind), else the
            scheduler's; in `test_mode`, always inline.
        """
        if self.test_mode and not _publishes(entry):
            return self._inline
        spec = entry.executor
        if spec is None:
            return self.executor
        if isinstance(spec, str):
            return self._executor_named(spec)
        with self._executors_lock:
            known = self._adapted.get(id(spec))
            if known is None or known[0] is not spec:
                known = (spec, as_executor(spec))
                self._adapted[id(spec)] = known
            return known[1]

    def _executor_named(self, kind: str) -> Executor:
        with self._executors_lock:
            executor = self._executors.get(kind)
            if executor is None:
                if kind == "nats":
                    executor = self._connect_nats()
                else:
                    executor = make_executor(
                        kind, self.pool_size, dask_tls=self.dask_tls
                    )
                self._executors[kind] = executor
                self.logger.info("executor %s ready", kind)
            return executor

    def _connect_nats(self) -> Executor:
        if self.nats is None:
            raise RuntimeError("executor 'nats' needs NATS settings (nats=...)")
        from styxcache.scheduler.nats_dispatch import NatsDispatcher

        settings = self.nats
        if self.test_mode:
            # Seed 001's test mode "bypasses encryption": no signing key needed.
            settings = dataclasses.replace(settings, insecure_no_signing=True)
        dispatcher = NatsDispatcher(settings)
        dispatcher.serve_control(self.nats.name, self.control)
        return dispatcher

    def control(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a control request (NATS `<prefix>.control.<name>`).

        Args:
            command: `{"command": "status"}` or `{"command": "reload"}`.

        Returns:
            A JSON-able reply; `ok` is False for an unknown command or a
            rejected reload.
        """
        what = command.get("command")
        if what == "status":
            with self._lock:
                running = sorted(self._inflight)
            nexts = self.next_fire_times(1)
            return {
                "ok": True,
                "schedules": {
                    name: {
                        "enabled": entry.enabled,
                        "executor": self.executor_for(entry).name
                        if entry.executor is not None
                        else self.executor.name,
                        "next": nexts[name][0].isoformat() if nexts[name] else None,
                    }
                    for name, entry in self.jobs.items()
                },
                "running": running,
                "counts": self.ledger.count_by_state(),
                "stopping": self.stopping.is_set(),
            }
        if what == "reload":
            if self.config_path is None:
                return {"ok": False, "error": "not built from a schedule file"}
            applied = self.reload()
            return {
                "ok": applied,
                "error": "" if applied else "invalid file; old schedules kept",
            }
        return {"ok": False, "error": f"unknown command {what!r}"}

    # ------------------------------------------------------------ the engine

    def _jitter(self, entry: ScheduleEntry, nominal: float) -> float:
        if entry.jitter_seconds <= 0:
            return 0.0
        nxt = entry.trigger.next_after(nominal)
        period = (nxt - nominal) if nxt is not None else entry.jitter_seconds
        digest = hashlib.blake2b(
            f"{entry.name}|{nominal!r}".encode(), digest_size=8
        ).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        # fraction < 1, so the delay stays strictly below the period.
        return fraction * min(entry.jitter_seconds, period)

    def _schedule_next(self, job: _Job) -> None:
        job.version += 1
        if not job.entry.enabled:
            job.next_nominal = None
            return
        bound = getattr(job.entry.trigger, "lower_bound", None)
        low = bound(job.watermark) if bound is not None else None
        if low is not None:
            # Registering thousands of entries must not compute thousands of
            # calendars: the exact fire is computed when the bound comes due.
            job.lazy, job.next_nominal = True, None
            heapq.heappush(
                self._heap, (low, next(self._seq), job.entry.name, job.version)
            )
            return
        job.lazy = False
        nominal = job.entry.trigger.next_after(job.watermark)
        job.next_nominal = nominal
        if nominal is not None:
            due = nominal + self._jitter(job.entry, nominal)
            heapq.heappush(
                self._heap, (due, next(self._seq), job.entry.name, job.version)
            )

    def _sync(self, now: float) -> None:
        if not self._unsynced:
            return
        pending = [self._jobs[n] for n in self._unsynced if n in self._jobs]
        self._unsynced.clear()
        if not pending:
            return
        if not self._recovered:
            self._recovered = True
            # A shared store retries lost runs by lease (see _adopt) instead.
            if not hasattr(self.ledger, "adopt_orphans"):
                self.ledger.recover_orphans(now)
        states = self.ledger.sync_entries(
            (
                (j.entry.name, j.entry.trigger.signature, j.entry.enabled, j.learned)
                for j in pending
            ),
            restart=[j.entry.name for j in pending if j.fresh],
        )
        for job in pending:
            job.watermark = states[job.entry.name].watermark
            job.synced = True
            job.fresh = False
            self._schedule_next(job)

    def _store_lost(self) -> None:
        """Forget planned state until the run store answers again.

        Every job is re-read from the store when it is back, so the fires
        due meanwhile go through the catch-up rules like after a restart.
        """
        self._store_retry_at = self.clock.monotonic() + min(1.0, self.max_sleep_seconds)
        for name, job in self._jobs.items():
            job.synced = False
            job.version += 1  # its heap slot is stale now
            self._unsynced[name] = None

    def _adopt(self, now: float) -> list[_Fire]:
        """Take over runs of schedulers that died (stores with leases only)."""
        adopt = getattr(self.ledger, "adopt_orphans", None)
        if adopt is None or self.stopping.is_set():
            return []
        retries = {n: j.entry.retries for n, j in self._jobs.items() if j.synced}
        fires: list[_Fire] = []
        for record, attempt in adopt(now, retries):
            job = self._jobs[record.entry]
            fire = _Fire(
                record=record,
                entry=job.entry,
                expand=record.item == "*",
                attempt=attempt,
            )
            if record.item not in ("", "*") and job.entry.expand_from is not None:
                fire.item = self._item_for(job.entry, record.item)
            job.running += 1
            fires.append(fire)
        return fires

    def _item_for(self, entry: ScheduleEntry, key: str) -> dict[str, Any]:
        """Find a fan-out item by key again (its dict is not stored)."""
        try:
            items = resolve_callable(entry.expand_from)()  # type: ignore[arg-type]
            found = dict(self._items(entry, items)).get(key)
        except Exception as exc:
            self.logger.warning("%s: expand_from failed: %s", entry.name, exc)
            found = None
        if found is None:
            self.logger.warning(
                "%s: item %s is no longer listed by expand_from; retried without it",
                entry.name,
                key,
            )
        return found or {}

    def _collect_due(
        self, now: float, horizon: float
    ) -> tuple[list[RunRecord], list[_Fire], dict[str, float]]:
        """Pop entries due by `horizon` and decide the fate of their fires."""
        records: list[RunRecord] = []
        fires: list[_Fire] = []
        watermarks: dict[str, float] = {}
        paused: Mapping[str, float] = {}
        if self._heap and self._heap[0][0] <= horizon:
            # Operators pause through the shared store; read it once per wake.
            reader = getattr(self.ledger, "paused_entries", None)
            if reader is not None:
                paused = reader()
        while self._heap and self._heap[0][0] <= horizon:
            _, _, name, version = heapq.heappop(self._heap)
            job = self._jobs.get(name)
            if job is None or job.version != version or not job.entry.enabled:
                continue
            if job.lazy:
                job.lazy = False
                nominal = job.entry.trigger.next_after(job.watermark)
                job.next_nominal = nominal
                if nominal is None:
                    continue
                due = nominal + self._jitter(job.entry, nominal)
                if due > horizon:
                    heapq.heappush(self._heap, (due, next(self._seq), name, version))
                    continue
            if name in paused:
                self._skip_paused(job, now, horizon, paused[name], records)
            else:
                self._plan_job(job, now, horizon, records, fires)
            watermarks[name] = job.watermark
            self._schedule_next(job)
        return records, fires, watermarks

    def _enumerate(
        self, job: _Job, now: float, horizon: float, records: list[RunRecord]
    ) -> list[tuple[float, float]]:
        entry = job.entry
        due_fires: list[tuple[float, float]] = []
        cursor = job.watermark
        skipped_from: float | None = None
        skipped = 0
        while True:
            # next_after is memoised per trigger and instant, so a herd of
            # entries sharing one expression costs one computation.
            nominal = entry.trigger.next_after(cursor)
            if nominal is None:
                break
            cursor = nominal
            due = nominal + self._jitter(entry, nominal)
            if due > horizon:
                break
            due_fires.append((nominal, due))
            if len(due_fires) >= _MAX_ENUMERATED:
                # A very long outage: keep one summary row, then resume an
                # hour before the grace window so the newest fires are exact.
                if skipped_from is None:
                    skipped_from = due_fires[0][0]
                skipped += len(due_fires)
                cursor = max(due_fires[-1][0], now - entry.grace_seconds - 3600)
                due_fires.clear()
        if skipped_from is not None:
            state = "missed" if entry.catchup == "none" else "coalesced"
            records.append(
                RunRecord(
                    key=run_key(entry.name, skipped_from, "older"),
                    entry=entry.name,
                    nominal=skipped_from,
                    item="older",
                    state=state,
                    reason=f"{skipped}+ fires from an outage, summarised in one row",
                    ended=now,
                )
            )
        return due_fires

    def _skip_paused(
        self,
        job: _Job,
        now: float,
        horizon: float,
        since: float,
        records: list[RunRecord],
    ) -> None:
        due_fires = self._enumerate(job, now, horizon, records)
        if not due_fires:
            return
        job.watermark = due_fires[-1][0]
        reason = (
            "paused by an operator since"
            f" {utc_from_timestamp(since).isoformat(timespec='seconds')}"
            " (styxcache schedule resume)"
        )
        for fire in due_fires:
            records.append(self._record(job.entry, fire, "skipped", reason, now))

    def _plan_job(
        self,
        job: _Job,
        now: float,
        horizon: float,
        records: list[RunRecord],
        fires: list[_Fire],
    ) -> None:
        entry = job.entry
        due_fires = self._enumerate(job, now, horizon, records)
        if not due_fires:
            return
        job.watermark = due_fires[-1][0]
        late = [f for f in due_fires if now - f[1] > entry.grace_seconds]
        on_time = [f for f in due_fires if now - f[1] <= entry.grace_seconds]
        if late:
            self.logger.warning(
                "%s: %d fire(s) are late (newest due %s, %.0fs ago); catchup=%s",
                entry.name,
                len(late),
                utc_from_timestamp(late[-1][1]).isoformat(),
                now - late[-1][1],
                entry.catchup,
            )
        to_run: list[tuple[float, float]]
        if entry.catchup == "latest":
            to_run = due_fires[-1:]
            newest = utc_from_timestamp(due_fires[-1][0]).isoformat()
            for nominal, due in due_fires[:-1]:
                records.append(
                    self._record(
                        entry,
                        (nominal, due),
                        "coalesced",
                        f"coalesced into {newest}",
                        now,
                    )
                )
        elif entry.catchup == "all":
            # The newest max_catchup fires run oldest first; older ones are missed.
            to_run = due_fires[-entry.max_catchup :]
            for nominal, due in due_fires[: -entry.max_catchup]:
                reason = f"beyond max_catchup={entry.max_catchup}"
                record = self._record(entry, (nominal, due), "missed", reason, now)
                records.append(record)
        else:
            to_run = on_time[-1:]
            for nominal, due in late:
                records.append(
                    self._record(
                        entry, (nominal, due), "missed", "late and catchup=none", now
                    )
                )
            for nominal, due in on_time[:-1]:
                records.append(
                    self._record(
                        entry,
                        (nominal, due),
                        "coalesced",
                        "a newer on-time fire ran",
                        now,
                    )
                )
        prior_busy = job.running > 0 or bool(job.queued)
        busy = prior_busy
        queue_room = max(entry.max_catchup, 1) - len(job.queued)
        for nominal, due in to_run:
            if entry.overlap == "allow":
                action = "start"
            elif entry.overlap == "forbid" and prior_busy:
                records.append(
                    self._record(
                        entry,
                        (nominal, due),
                        "skipped",
                        "previous run still running",
                        now,
                    )
                )
                continue
            elif busy:
                if queue_room <= 0:
                    reason = f"overlap queue full ({max(entry.max_catchup, 1)} waiting)"
                    records.append(
                        self._record(entry, (nominal, due), "skipped", reason, now)
                    )
                    continue
                queue_room -= 1
                action = "queue"
            else:
                action = "start"
            # Later fires of the same batch wait for this one (catch-up in order).
            busy = busy or entry.overlap != "allow"
            record = self._record(entry, (nominal, due), "planned", "", None)
            if action == "start":
                # A fire claimed ahead of time starts at its due instant.
                record.state, record.started, record.lateness = (
                    "running",
                    max(now, due),
                    max(now - due, 0.0),
                )
            fire = _Fire(
                record=record, entry=entry, expand=entry.expand_from is not None
            )
            fire.action = action
            if entry.expand_from is not None:
                record.key = run_key(entry.name, nominal, "*")
                record.item = "*"
            records.append(record)
            fires.append(fire)

    @staticmethod
    def _record(
        entry: ScheduleEntry,
        fire: tuple[float, float],
        state: str,
        reason: str,
        ended: float | None,
    ) -> RunRecord:
        nominal, due = fire
        return RunRecord(
            key=run_key(entry.name, nominal),
            entry=entry.name,
            nominal=nominal,
            state=state,
            reason=reason,
            due=due,
            ended=ended,
        )

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
        outer = getattr(self._tls, "batch", None)
        batch: list[_Fire] = []
        self._tls.batch = batch if wait else None
        try:
            started = self._dispatch_due(lookahead)
        finally:
            self._tls.batch = outer
        if wait and batch:
            self._wait_settled(batch)
        return started

    def _wait_settled(self, fires: list[_Fire]) -> None:
        """Record completions until every fire in `fires` has ended."""
        while True:
            self._drain_completions()
            if all(f.settled for f in fires):
                return
            with self._settle:
                self._waiting += 1
                try:
                    if self._completions.empty() and not all(f.settled for f in fires):
                        # Woken by each completion; the timeout only guards
                        # against a completion drained by another thread.
                        self._settle.wait(self.max_sleep_seconds)
                finally:
                    self._waiting -= 1

    def _dispatch_due(self, lookahead: float) -> int:
        """Claim what is due by now + `lookahead` and hand it to executors."""
        # Completions free overlap slots first; their bookkeeping waits until
        # the due fires are on their way.
        started = self._drain_completions(report=False)
        if self.stopping.is_set():
            self._report()
            return started
        to_start: list[_Fire] = []
        with self._lock:
            now = self.clock.time()
            try:
                self._sync(now)
                to_start.extend(self._adopt(now))
                records, fires, watermarks = self._collect_due(
                    now, now + max(0.0, lookahead)
                )
                claimed = self.ledger.claim(records, watermarks) if records else []
            except StoreUnavailableError:
                records, fires, claimed = [], [], []
                self._store_lost()
            won = {r.key for r, ok in zip(records, claimed, strict=True) if ok}
            for fire in fires:
                if fire.record.key not in won:
                    continue  # another scheduler sharing the ledger owns it
                job = self._jobs[fire.entry.name]
                if fire.action == "queue":
                    job.queued.append(fire)
                else:
                    job.running += 1
                    to_start.append(fire)
        ordered = sorted(to_start, key=lambda f: f.record.started or 0.0)
        index = 0
        while index < len(ordered):
            due = ordered[index].record.started or 0.0
            while (remaining := due - self.clock.time()) > 0:
                if self.stopping.is_set():
                    self._abandon(ordered[index:])
                    return started
                self.clock.wait(remaining)
            # Everything due by now goes out together (a herd in one batch).
            now = self.clock.time()
            end = index + 1
            while end < len(ordered) and (ordered[end].record.started or 0.0) <= now:
                end += 1
            started += self._start_many(ordered[index:end])
            index = end
        return started + self._drain_completions()

    def _start_many(self, fires: list[_Fire]) -> int:
        """Start claimed fires; batch-capable executors get them in one call."""
        if len(fires) == 1:
            return self._start(fires[0], persisted=True)
        started = 0
        batches: dict[int, tuple[Any, list[tuple[Any, Any, Any]], list[_Fire]]] = {}
        tracked = getattr(self._tls, "batch", None)
        for fire in fires:
            if fire.expand:
                started += self._start(fire, persisted=True)
                continue
            executor = self.executor_for(fire.entry)
            if not hasattr(executor, "submit_many"):
                started += self._start(fire, persisted=True)
                continue
            if tracked is not None:
                tracked.append(fire)
            request, on_done = self._prepare(fire)
            _, calls, owners = batches.setdefault(id(executor), (executor, [], []))
            calls.append((execute_run, request, on_done))
            owners.append(fire)
            started += 1
        for executor, calls, owners in batches.values():
            try:
                futures = executor.submit_many(calls)
            except Exception as exc:
                for _fn, _request, on_done in calls:
                    failed: cf.Future[RunOutcome] = cf.Future()
                    failed.set_exception(exc)
                    on_done(failed)
                continue
            for fire, future in zip(owners, futures, strict=True):
                if fire.future is None:
                    fire.future = future
        return started

    def _abandon(self, fires: list[_Fire]) -> None:
        """Record claimed fires that shutdown overtook before their due time."""
        now = self.clock.time()
        with self._lock:
            for fire in fires:
                record = fire.record
                record.state, record.ended = "skipped", now
                record.reason = "scheduler shut down before it could start"
                self._finish_slot(fire.entry.name, start_queued=False)
        with contextlib.suppress(Exception):
            self.ledger.update([f.record for f in fires])

    def _claim_lead(self) -> float:
        """How early the loop claims: longer when many fires are due at once.

        Planning and claiming cost tens of microseconds per fire, so a herd
        of thousands due in the same second is claimed ahead (up to one
        second) and each fire is then started at its due instant.
        """
        lead = self.dispatch_lead_seconds
        with self._lock:
            if not self._heap:
                return lead
            top = self._heap[0][0]
            if top > self.clock.time() + self.max_sleep_seconds:
                return lead  # the loop wakes again before then anyway
            soon = sum(1 for item in self._heap if item[0] <= top + _HERD_WINDOW_S)
        return min(_HERD_WINDOW_S, max(lead, soon * _CLAIM_COST_S))

    def _start(self, fire: _Fire, *, persisted: bool = False) -> int:
        """Start one claimed fire (outside the lock); return runs started."""
        batch = getattr(self._tls, "batch", None)
        if batch is not None:
            batch.append(fire)
        record = fire.record
        if not persisted:
            now = self.clock.time()
            record.state = "running"
            record.started = now
            record.lateness = now - (
                record.due if record.due is not None else record.nominal
            )
            if not fire.expand:
                self.ledger.update([record])
        now = record.started if record.started is not None else self.clock.time()
        if fire.expand:
            try:
                return self._expand(fire, now)
            finally:
                fire.settled = True
        request, on_done = self._prepare(fire)
        try:
            executor = self.executor_for(fire.entry)
            fire.future = executor.submit(execute_run, request, on_done=on_done)
        except Exception as exc:
            failed: cf.Future[RunOutcome] = cf.Future()
            failed.set_exception(exc)
            on_done(failed)
        return 1

    def _prepare(
        self, fire: _Fire
    ) -> tuple[RunRequest, Callable[[cf.Future[RunOutcome]], None]]:
        """Build a fire's request and mark it in flight (batch-tracked too)."""
        record = fire.record
        cached = self._nominal_dt
        if cached[0] != record.nominal:
            # A herd shares one nominal instant: convert it once.
            cached = (record.nominal, utc_from_timestamp(record.nominal))
            self._nominal_dt = cached
        context = RunContext.quick(
            fire.entry.name,
            record.key,
            cached[1],
            fire.item,
            record.item,
            fire.entry.cache.value,
            fire.attempt,
        )
        request = RunRequest(
            fire.entry.target,  # type: ignore[arg-type]
            context,
            fire.entry.pass_context,
            fire.entry.runner,
            runner_is_default=fire.entry.runner_is_default,
            clock=self.clock,
        )
        with self._lock:
            self._inflight[record.key] = fire
        return request, functools.partial(self._on_done_future, fire)

    def _on_done_future(self, fire: _Fire, future: cf.Future[RunOutcome]) -> None:
        # Set here too: an inline executor finishes before submit() returns.
        fire.future = future
        self._on_done(fire)

    def _on_done(self, fire: _Fire) -> None:
        self._completions.put(fire)
        # Read after the put: a waiter that registers later sees the item.
        if self._waiting:
            with self._settle:
                self._settle.notify_all()
        # The loop thread drains its own completions before it next waits;
        # waking it from inside would only cost an empty cycle.
        if self._loop_ident is not None and threading.get_ident() != self._loop_ident:
            self.clock.wake()

    def _expand(self, fire: _Fire, now: float) -> int:
        entry = fire.entry
        parent = fire.record
        try:
            expander = resolve_callable(entry.expand_from)  # type: ignore[arg-type]
            items = expander()
            children = self._items(entry, items)
        except Exception as exc:
            parent.state, parent.ended = "failed", self.clock.time()
            parent.error = f"{type(exc).__name__}: {exc}"
            self.ledger.update([parent])
            self.logger.error("%s: expand_from failed: %s", parent.key, parent.error)
            with self._lock:
                self._finish_slot(entry.name)
            return 0
        records: list[RunRecord] = []
        for item_key, _item in children:
            records.append(
                RunRecord(
                    key=run_key(entry.name, parent.nominal, item_key),
                    entry=entry.name,
                    nominal=parent.nominal,
                    item=item_key,
                    state="running",
                    due=parent.due,
                    started=now,
                    lateness=parent.lateness,
                )
            )
        try:
            claimed = self.ledger.claim(records) if records else []
        except StoreUnavailableError as exc:
            # Nothing was claimed; the fire is recorded when the store is back.
            parent.state, parent.ended = "interrupted", self.clock.time()
            parent.reason = f"its items could not be claimed: {exc}"
            self.ledger.update([parent])
            with self._lock:
                self._finish_slot(entry.name)
            return 0
        parent.state, parent.ended = "ok", self.clock.time()
        parent.reason = f"expanded into {len(children)} item(s)"
        self.ledger.update([parent])
        started = 0
        mine = [
            (rec, item)
            for rec, (_k, item), ok in zip(records, children, claimed, strict=True)
            if ok
        ]
        with self._lock:
            job = self._jobs.get(entry.name)
            if job is not None:
                job.running += len(mine)
            self._finish_slot(entry.name, start_queued=not mine)
        for rec, item in mine:
            child = _Fire(record=rec, entry=entry, item=item)
            started += self._start(child, persisted=True)
        return started

    def _items(
        self, entry: ScheduleEntry, items: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
            raise TypeError(
                f"expand_from must return a list of dicts, got {type(items).__name__}"
            )
        if len(items) > entry.max_fanout:
            raise ValueError(
                f"expand_from returned {len(items)} items;"
                f" max_fanout is {entry.max_fanout}"
            )
        seen: set[str] = set()
        result: list[tuple[str, dict[str, Any]]] = []
        for item in items:
            if not isinstance(item, Mapping):
                raise TypeError(
                    f"expand_from returned a {type(item).__name__}, not a dict"
                )
            key = item_key(item)
            if key in seen:
                self.logger.info(
                    "%s: dropping duplicate fan-out item %s", entry.name, key
                )
                continue
            seen.add(key)
            result.append((key, dict(item)))
        return result

    def _finish_slot(self, name: str, *, start_queued: bool = True) -> None:
        job = self._jobs.get(name)
        if job is None:
            return
        job.running = max(0, job.running - 1)
        if start_queued:
            self._kick_queue(name)

    def _kick_queue(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is None or job.running > 0 or not job.queued or self.stopping.is_set():
            return
        fire = job.queued.popleft()
        job.running += 1
        self._ready.append(fire)

    def _drain_completions(self, *, report: bool = True) -> int:
        """Settle finished runs and start queued fires they released.

        With `report=False` the ledger writes, log lines and hooks of the
        finished runs wait for the next `_report()`, so that a due fire is
        dispatched before that slower bookkeeping.
        """
        started = 0
        while True:
            done: list[_Fire] = []
            while True:
                try:
                    done.append(self._completions.get_nowait())
                except queue.Empty:
                    break
            if done:
                now = self.clock.time()
                for fire in done:
                    outcome = self._complete(fire, now)
                    if outcome is not None:
                        self._unreported.append((fire, outcome))
            with self._lock:
                # Fires released from overlap queues while the lock was held.
                ready, self._ready = self._ready, []
            for fire in ready:
                started += self._start(fire)
            if not done and not ready:
                if report:
                    self._report()
                return started

    def _complete(self, fire: _Fire, now: float) -> RunOutcome | None:
        """Settle a finished future; None when a lost run was restarted."""
        record = fire.record
        record.ended = now
        assert fire.future is not None
        lost: RunLostError | None = None
        try:
            outcome = fire.future.result(timeout=0)
        except RunLostError as exc:
            lost = exc
            outcome = RunOutcome(ok=False, error=f"RunLostError: {exc}")
        except BaseException as exc:  # the executor itself failed
            outcome = RunOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        if lost is not None:
            return self._lost(fire, lost, outcome)
        record.state = "ok" if outcome.ok else "failed"
        record.error = outcome.error
        record.hits, record.misses = outcome.hits, outcome.misses
        if (
            outcome.started is not None
            and outcome.ended is not None
            and (outcome.on_clock or isinstance(self.clock, SystemClock))
        ):
            # When the target really ran, not when the fire was claimed.
            record.started, record.ended = outcome.started, outcome.ended
            due = record.due if record.due is not None else record.nominal
            record.lateness = outcome.started - due
        with self._lock:
            self._inflight.pop(record.key, None)
            self._finish_slot(fire.entry.name)
        self._settled(fire)
        return outcome

    def _settled(self, fire: _Fire) -> None:
        fire.settled = True
        if self._waiting:
            with self._settle:
                self._settle.notify_all()

    def _lost(
        self, fire: _Fire, lost: RunLostError, outcome: RunOutcome
    ) -> RunOutcome | None:
        """Record a run the executor lost; restart it while retries remain."""
        record = fire.record
        retries = fire.entry.retries
        record.state, record.error = "interrupted", outcome.error
        record.reason = f"attempt {fire.attempt} lost: {lost}"
        if fire.attempt > retries or self.stopping.is_set():
            if retries:
                record.reason += f" (no retries left of {retries})"
            with self._lock:
                self._inflight.pop(record.key, None)
                self._finish_slot(fire.entry.name)
            self._settled(fire)
            return outcome
        record.reason += f"; retry {fire.attempt} of {retries} follows"
        # Written now: the restart below overwrites the row with "running".
        snapshot = dataclasses.replace(record)
        with contextlib.suppress(Exception):
            self.ledger.update([snapshot])
        self.logger.warning("run %s interrupted: %s", record.key, record.reason)
        if self.on_run is not None:
            try:
                self.on_run(snapshot)
            except Exception:
                self.logger.exception("on_run hook failed for %s", record.key)
        fire.attempt += 1
        record.error, record.ended = "", None
        with self._lock:
            self._inflight.pop(record.key, None)
            # The slot stays taken: the same run starts again.
            self._ready.append(fire)
        return None

    def _report(self) -> None:
        """Write, log and announce the runs settled since the last report."""
        with self._lock:
            batch, self._unreported = self._unreported, []
        if not batch:
            return
        self.ledger.update([fire.record for fire, _ in batch])
        for fire, outcome in batch:
            self._log_outcome(fire.record, outcome)

    def _log_outcome(self, record: RunRecord, outcome: RunOutcome) -> None:
        took = (record.ended or 0.0) - (record.started or record.ended or 0.0)
        if outcome.ok:
            self.logger.info(
                "run %s ok in %.2fs (late %.3fs): %d cache hits, %d misses",
                record.key,
                took,
                record.lateness or 0.0,
                outcome.hits,
                outcome.misses,
            )
        else:
            self.logger.error(
                "run %s failed in %.2fs: %s (%d cache hits, %d misses)\n%s",
                record.key,
                took,
                outcome.error,
                outcome.hits,
                outcome.misses,
                outcome.traceback.rstrip(),
            )
        if self.on_run is not None:
            try:
                self.on_run(record)
            except Exception:
                self.logger.exception("on_run hook failed for %s", record.key)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (real time) until no run is in flight, recording each as it ends.

        Args:
            timeout: Longest wait in seconds; None waits indefinitely.

        Returns:
            True if nothing is in flight any more.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain_completions()
            with self._lock:
                futures = [
                    f.future for f in self._inflight.values() if f.future is not None
                ]
                ready = bool(self._ready)
            if not futures and not ready and self._completions.empty():
                return True
            if not futures:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            cf.wait(futures, timeout=remaining, return_when=cf.FIRST_COMPLETED)

    # -------------------------------------------------------------- the loop

    def _seconds_to_next_due(self, now: float) -> float:
        with self._lock:
            while self._heap:
                _, _, name, version = self._heap[0]
                job = self._jobs.get(name)
                if job is not None and job.version == version:
                    break
                heapq.heappop(self._heap)  # stale: superseded by a reload
            if self._unsynced:
                return max(0.0, self._store_retry_at - self.clock.monotonic())
            return self._heap[0][0] - now if self._heap else float("inf")

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
        self._loop_ident = threading.get_ident()
        self.logger.info("scheduler started with %d schedule(s)", len(self._jobs))
        next_routine = self.clock.monotonic()
        reason = "shutdown requested"
        try:
            while True:
                if self.stopping.is_set():
                    break
                if self.max_cycles is not None and self.cycle >= self.max_cycles:
                    reason = f"max_cycles={self.max_cycles} reached"
                    break
                if (
                    self.until_ms is not None
                    and self.clock.time() * 1000 >= self.until_ms
                ):
                    reason = "until_ms reached"
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self.run_pending(self._claim_lead(), wait=False)
                if self.routine is not None:
                    if self.clock.monotonic() >= next_routine:
                        self._run_routine()
                        next_routine += self.wait_ms / 1000
                        # A cycle longer than wait_ms does not queue up extra cycles.
                        next_routine = max(next_routine, self.clock.monotonic())
                else:
                    self.cycle += 1
                self._sleep(next_routine)
        finally:
            self._loop_ident = None
            if restore is not None:
                restore()
        if self.stopping.is_set():
            self._finish_shutdown(self.shutdown_timeout_seconds)
        else:
            self.drain(self.shutdown_timeout_seconds)
        self.record_session_end(reason)

    def _run_routine(self) -> None:
        assert self.routine is not None
        self.logger.info("cycle %d: starting", self.cycle)
        try:
            self.routine(self)
        except Exception as exc:
            self.exception_handler(exc, "routine", self)
        self.cycle += 1
        self.logger.info("cycle %d: finished", self.cycle - 1)

    def _sleep(self, next_routine: float) -> None:
        now = self.clock.time()
        to_due = self._seconds_to_next_due(now) - self._claim_lead()
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
        now = self.clock.time()
        leftovers: list[RunRecord] = []
        with self._lock:
            for fire in self._inflight.values():
                fire.record.state = "interrupted"
                fire.record.ended = now
                fire.record.reason = (
                    f"still running when shutdown gave up after {timeout:.1f}s"
                )
                leftovers.append(fire.record)
            self._inflight.clear()
            for job in self._jobs.values():
                while job.queued:
                    record = job.queued.popleft().record
                    record.state, record.ended = "skipped", now
                    record.reason = "scheduler shut down before it could start"
                    leftovers.append(record)
        with contextlib.suppress(Exception):
            self.ledger.update(leftovers)
        for record in leftovers:
            self.logger.warning(
                "run %s %s: %s", record.key, record.state, record.reason
            )
        self.executor.shutdown(wait=False, cancel_pending=True)
        with self._executors_lock:
            owned = list(self._executors.values())
        for executor in owned:
            if executor is not self.executor:
                executor.shutdown(wait=False, cancel_pending=True)
        return clean and not leftovers

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
        with self._lock:
            new = {e.name: e for e in config.entries}
            removed = [name for name in self._jobs if name not in new]
            added = changed = kept = 0
            for name in removed:
                del self._jobs[name]
            for entry in config.entries:
                old = self._jobs.get(entry.name)
                if old is None:
                    added += 1
                    self._install(entry, fresh=not initial)
                elif old.entry.fingerprint == entry.fingerprint:
                    kept += 1
                else:
                    changed += 1
                    self._install(entry)
        if not initial:
            self.logger.info(
                "reloaded %s: %d added, %d changed, %d removed, %d unchanged",
                config.path,
                added,
                changed,
                len(removed),
                kept,
            )
        if self._loop_ident is not None:
            self.clock.wake()

    # -------------------------------------------------------- session ledger

    def record_session_end(self, reason: str = "not given") -> dict[str, Any]:
        """Append this session's summary to `records` and log the history.

        Args:
            reason: Why the session ended.

        Returns:
            The new record.
        """
        now = self.clock.time()
        start = self._session_start if self._session_start is not None else now
        try:
            counts = self.ledger.count_by_state()
        except StoreUnavailableError:
            counts = {}
        record: dict[str, Any] = {
            "start": utc_from_timestamp(start).isoformat(),
            "finish": utc_from_timestamp(now).isoformat(),
            "duration_s": round(now - start, 3),
            "cycles": self.cycle,
            "termination reason": reason,
            "runs": counts,
            **dict(self.sess_stats(self)),
        }
        self.records.append(record)
        self.logger.info("session ended (%s) after %d cycle(s)", reason, self.cycle)
        for index, row in enumerate(self.records):
            self.logger.info("session %d: %s", index, json.dumps(row, default=str))
        return record

    def get_records_df(self) -> list[dict[str, Any]]:
        """Return the session records (a list of dicts, ready for a DataFrame)."""
        return [dict(r) for r in self.records]

    def close(self) -> None:
        """Shut down without grace (if running) and close the ledger."""
        if not self.stopping.is_set():
            self.shutdown(timeout=0)
        self.ledger.close()


def _publishes(entry: ScheduleEntry) -> bool:
    """Whether the entry publishes a message (seeds 002/003) instead of running."""
    from styxcache.scheduler.publish import PublishAction

    return isinstance(entry.target, PublishAction)


def item_key(item: Mapping[str, Any]) -> str:
    """Return a fan-out item's stable key.

    Args:
        item: The context dict; an explicit `key` entry wins.

    Returns:
        The key: `key`, or canonical JSON of the item, or a digest of it
        when long.
    """
    if "key" in item:
        return str(item["key"])
    text = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) <= _MAX_ITEM_KEY:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _default_exception_handler(
    exc: BaseException, where: str, scheduler: Scheduler
) -> None:
    scheduler.record_session_end(reason=f"{where} raised {type(exc).__name__}: {exc}")
    scheduler.logger.exception("%s raised; stopping", where, exc_info=exc)
    raise exc
