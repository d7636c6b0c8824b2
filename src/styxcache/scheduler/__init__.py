"""Rerun pipelines on cron and interval schedules through the cached runner.

Quick start::

    from styxcache.scheduler import Scheduler

    scheduler = Scheduler.from_yaml("schedule.yaml")
    scheduler.run(handle_signals=True)   # or: styxcache schedule run schedule.yaml

See docs/scheduler.md for the rules (DST, catch-up, overlap, reload, shutdown).
"""

from __future__ import annotations

from styxcache.scheduler.clock import Clock, FakeClock, SystemClock
from styxcache.scheduler.config import (
    ConfigError,
    NatsSettings,
    ScheduleConfig,
    ScheduleEntry,
    build_entry,
    load_config,
    parse_config,
)
from styxcache.scheduler.dask_executor import DaskExecutor
from styxcache.scheduler.executors import (
    Executor,
    FuturesExecutor,
    InlineExecutor,
    ProcessExecutor,
    ThreadExecutor,
    as_executor,
    make_executor,
)
from styxcache.scheduler.ledger import (
    Ledger,
    LedgerError,
    RunRecord,
    RunStore,
    run_key,
)
from styxcache.scheduler.memo_cache import (
    Cache,
    CacheMemory,
    UnsafeCacheFileError,
    json_reader,
    json_saver,
    pickle_reader,
    pickle_saver,
)
from styxcache.scheduler.nats_dispatch import NatsDispatcher
from styxcache.scheduler.runner_spec import RunnerSpec
from styxcache.scheduler.runs import (
    RunContext,
    RunLostError,
    RunOutcome,
    RunRequest,
    execute_run,
)
from styxcache.scheduler.scheduler import Scheduler, item_key
from styxcache.scheduler.stores import StoreUnavailableError, open_store
from styxcache.scheduler.triggers import (
    CronTrigger,
    IntervalTrigger,
    Trigger,
    TriggerError,
)

__all__ = [
    "Cache",
    "CacheMemory",
    "Clock",
    "ConfigError",
    "CronTrigger",
    "DaskExecutor",
    "Executor",
    "FakeClock",
    "FuturesExecutor",
    "InlineExecutor",
    "IntervalTrigger",
    "Ledger",
    "LedgerError",
    "NatsDispatcher",
    "NatsSettings",
    "ProcessExecutor",
    "RunContext",
    "RunLostError",
    "RunOutcome",
    "RunRecord",
    "RunRequest",
    "RunStore",
    "RunnerSpec",
    "ScheduleConfig",
    "ScheduleEntry",
    "Scheduler",
    "StoreUnavailableError",
    "SystemClock",
    "ThreadExecutor",
    "Trigger",
    "TriggerError",
    "UnsafeCacheFileError",
    "as_executor",
    "build_entry",
    "execute_run",
    "item_key",
    "json_reader",
    "json_saver",
    "load_config",
    "make_executor",
    "open_store",
    "parse_config",
    "pickle_reader",
    "pickle_saver",
    "run_key",
]
