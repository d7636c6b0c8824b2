"""A validated schedule entry and the names of its choices.

The entry is plain data: the loader (`entry_build.build_entry`) checks every
field before one is made, and the scheduler, the CLI and the workers only
read it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Literal, get_args

from styxcache.modes import CacheMode
from styxcache.scheduler.refs import Target, ref_name
from styxcache.scheduler.runner_spec import RunnerSpec
from styxcache.scheduler.triggers import Trigger

__all__ = [
    "CATCHUP_CHOICES",
    "OVERLAP_CHOICES",
    "Catchup",
    "ExecutorSpec",
    "Overlap",
    "PoolKind",
    "ScheduleEntry",
    "cache_label",
    "check_executor_kind",
    "executor_label",
    "new_entry",
]

Catchup = Literal["latest", "all", "none"]
"""What to do with fires older than the grace period."""
Overlap = Literal["forbid", "allow", "queue"]
"""What to do with a fire while an earlier run of the entry is going."""
PoolKind = Literal["inline", "threads", "processes"]
"""The executors that run on the scheduler's own machine."""

CATCHUP_CHOICES: tuple[str, ...] = get_args(Catchup)
OVERLAP_CHOICES: tuple[str, ...] = get_args(Overlap)
_POOL_KINDS: tuple[str, ...] = get_args(PoolKind)
_DASK = re.compile(r"^(dask|tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


@dataclasses.dataclass(frozen=True)
class ScheduleEntry:
    """One validated schedule.

    Attributes:
        name: Unique name; part of every run key.
        trigger: When it fires.
        target: Callable or `module:function` run for each fire (or item).
        expand_from: Callable or `module:function` returning context dicts,
            one run per dict, called at fire time.
        cache: The cache mode in force inside each run.
        catchup: What to do with fires older than `grace_seconds`.
        max_catchup: Most late fires `catchup: all` runs in one wake.
        overlap: What to do with a fire while an earlier run is still going.
        jitter_seconds: Upper bound of the deterministic start delay.
        grace_seconds: A fire this late or less counts as on time.
        max_fanout: Most items one fire may expand to.
        enabled: Disabled entries never fire (and later start from "now").
        pass_context: Call the target with a `RunContext` (True for YAML
            targets; `register_task` callbacks default to no arguments).
        executor: Where this entry's runs and fan-out items execute,
            overriding the scheduler's executor: `inline`, `threads`,
            `processes`, `dask://host:port`, `nats`, or (in code) an
            `Executor`, a `concurrent.futures.Executor` or a
            `distributed.Client`. None uses the scheduler's.
        runner: Settings each worker builds its `CachingRunner` from.
        retries: How many times a run the executor lost (worker died,
            no answer in time) is started again; a target that raised is
            never retried.
        runner_is_default: `runner` was not written in the entry: it is the
            file's default cache, used only when the worker's global Styx
            runner is not already a `CachingRunner`.
    """

    name: str
    trigger: Trigger
    target: str | Target | None = None
    expand_from: str | Target | None = None
    cache: CacheMode = CacheMode.NORMAL
    catchup: Catchup = "latest"
    max_catchup: int = 10
    overlap: Overlap = "forbid"
    jitter_seconds: float = 0.0
    grace_seconds: float = 60.0
    max_fanout: int = 1000
    enabled: bool = True
    pass_context: bool = True
    executor: Any = None
    runner: RunnerSpec | None = None
    retries: int = 0
    runner_is_default: bool = False

    @property
    def fingerprint(self) -> str:
        """A string that changes whenever any setting of the entry changes."""
        parts = [
            self.trigger.signature,
            ref_name(self.target),
            ref_name(self.expand_from),
            self.cache.value,
            self.catchup,
            str(self.max_catchup),
            self.overlap,
            repr(self.jitter_seconds),
            repr(self.grace_seconds),
            str(self.max_fanout),
            str(self.enabled),
            str(self.pass_context),
            executor_label(self.executor),
            repr(self.runner),
            str(self.retries),
        ]
        return "|".join(parts)


_ENTRY_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(ScheduleEntry)
    if f.default is not dataclasses.MISSING
}
_ENTRY_FACTORIES: list[tuple[str, Callable[[], Any]]] = [
    (f.name, f.default_factory)
    for f in dataclasses.fields(ScheduleEntry)
    if f.default_factory is not dataclasses.MISSING
]


def new_entry(**values: Any) -> ScheduleEntry:
    """Make a validated `ScheduleEntry` without the frozen per-field setattr.

    Registering 10,000 entries makes 10,000 of these; filling `__dict__` at
    once (defaults first, for fields added later) gives an equal object at a
    fraction of the cost. Only for values already checked.

    Args:
        **values: Field values.

    Returns:
        The entry.
    """
    entry = object.__new__(ScheduleEntry)
    fields = dict(_ENTRY_DEFAULTS)
    for name, factory in _ENTRY_FACTORIES:
        fields[name] = factory()
    fields.update(values)
    entry.__dict__.update(fields)
    return entry


@dataclasses.dataclass(frozen=True)
class ExecutorSpec:
    """Which executor a YAML file asks for.

    Attributes:
        kind: `inline`, `threads` or `processes`.
        max_workers: Worker count for pools.
    """

    kind: str = "threads"
    max_workers: int = 4


def executor_label(executor: Any) -> str:
    """Name an entry's executor setting for logs and fingerprints.

    Args:
        executor: A kind string, an executor object or None.

    Returns:
        The string itself, `""` for None, else the object's `name` or type.
    """
    if executor is None:
        return ""
    if isinstance(executor, str):
        return executor
    return str(getattr(executor, "name", type(executor).__name__))


def check_executor_kind(kind: str) -> None:
    """Accept `inline`, `threads`, `processes`, `nats` and Dask addresses.

    Args:
        kind: The setting.

    Raises:
        ValueError: Saying what is accepted.
    """
    if kind in _POOL_KINDS or kind == "nats" or _DASK.match(kind):
        return
    raise ValueError(
        f"must be {', '.join(_POOL_KINDS)}, nats or a Dask scheduler address"
        f" such as dask://127.0.0.1:8786; got {kind!r}"
    )


def cache_label(entry: ScheduleEntry) -> str:
    """Say which cache an entry's runs go through, for logs and `schedule list`.

    Args:
        entry: The entry.

    Returns:
        The cache folder, with ` (default)` when the entry did not choose
        it; `none` for an entry without a cache (`runner: none`, or a code
        entry that uses whatever global runner the program set).
    """
    if entry.runner is None:
        return "none"
    folder = str(entry.runner.cache_dir)
    return f"{folder} (default)" if entry.runner_is_default else folder
