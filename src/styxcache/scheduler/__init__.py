"""Rerun pipelines on cron and interval schedules through the cached runner.

Quick start::

    from styxcache.scheduler import Scheduler

    scheduler = Scheduler.from_yaml("schedule.yaml")
    scheduler.run(handle_signals=True)   # or: styxcache schedule run schedule.yaml

See docs/scheduler.md for the rules (DST, catch-up, overlap, reload, shutdown).

The names below are imported on first use: a NATS or Dask worker imports
`styxcache.scheduler.runs` (and this package with it) without the scheduler
loop, the YAML loader or PyYAML.
"""

from __future__ import annotations

# Private aliases: every public name of this package is in `__all__`.
import importlib as _importlib
import typing as _typing
import warnings as _warnings

if _typing.TYPE_CHECKING:
    from styxcache.scheduler.clock import Clock, FakeClock, SystemClock
    from styxcache.scheduler.config import ScheduleConfig, load_config
    from styxcache.scheduler.config_errors import ConfigError
    from styxcache.scheduler.dask_executor import DaskExecutor
    from styxcache.scheduler.entry import ScheduleEntry
    from styxcache.scheduler.executors import (
        Executor,
        FuturesExecutor,
        InlineExecutor,
        ProcessExecutor,
        ThreadExecutor,
    )
    from styxcache.scheduler.ledger import Ledger, LedgerError, RunRecord, RunStore
    from styxcache.scheduler.memo_cache import (
        Cache,
        CacheMemory,
        UnsafeCacheFileError,
        json_reader,
        json_saver,
        pickle_reader,
        pickle_saver,
    )
    from styxcache.scheduler.nats_connect import NatsSettings
    from styxcache.scheduler.nats_dispatch import NatsDispatcher
    from styxcache.scheduler.options import SchedulerSettings
    from styxcache.scheduler.runner_spec import RunnerSpec
    from styxcache.scheduler.runs import RunContext, RunLostError, RunOutcome
    from styxcache.scheduler.scheduler import Scheduler
    from styxcache.scheduler.stores import StoreUnavailableError
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
    "RunStore",
    "RunnerSpec",
    "ScheduleConfig",
    "ScheduleEntry",
    "Scheduler",
    "SchedulerSettings",
    "StoreUnavailableError",
    "SystemClock",
    "ThreadExecutor",
    "Trigger",
    "TriggerError",
    "UnsafeCacheFileError",
    "json_reader",
    "json_saver",
    "load_config",
    "pickle_reader",
    "pickle_saver",
]

# Where each public name is defined (the module imported on first use).
_HOMES = {
    "clock": "Clock FakeClock SystemClock",
    "config": "ScheduleConfig load_config",
    "config_errors": "ConfigError",
    "dask_executor": "DaskExecutor",
    "entry": "ScheduleEntry",
    "executors": "Executor FuturesExecutor InlineExecutor ProcessExecutor"
    " ThreadExecutor",
    "ledger": "Ledger LedgerError RunRecord RunStore",
    "memo_cache": "Cache CacheMemory UnsafeCacheFileError json_reader json_saver"
    " pickle_reader pickle_saver",
    "nats_connect": "NatsSettings",
    "nats_dispatch": "NatsDispatcher",
    "options": "SchedulerSettings",
    "runner_spec": "RunnerSpec",
    "runs": "RunContext RunLostError RunOutcome",
    "scheduler": "Scheduler",
    "stores": "StoreUnavailableError",
    "triggers": "CronTrigger IntervalTrigger Trigger TriggerError",
}
_MODULE_OF = {
    name: module for module, names in _HOMES.items() for name in names.split()
}


# Exported by 1.0's development releases, internal since: still served, with a
# DeprecationWarning naming their home, so code written against them keeps running
# for one more release.
_DEPRECATED = {
    "RunRequest": "runs",
    "as_executor": "executors",
    "build_entry": "entry_build",
    "execute_run": "runs",
    "item_key": "planner",
    "make_executor": "executors",
    "open_store": "stores",
    "parse_config": "config",
    "run_key": "ledger",
}


def __getattr__(name: str) -> _typing.Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        home = _DEPRECATED.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        _warnings.warn(
            f"{__name__}.{name} is internal and no longer exported; import it "
            f"from {__name__}.{home} (this alias will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_importlib.import_module(f"{__name__}.{home}"), name)
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """List the public names (with the module's own attributes)."""
    return sorted({*globals(), *__all__})
