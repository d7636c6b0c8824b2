"""Which executor a schedule's runs go to, and the executors the scheduler owns.

An entry names an executor kind (`threads`, `processes`, `dask`, `nats`...),
passes an executor object, or uses the scheduler's default. Kinds are built
once and shut down with the scheduler; objects passed in code are adapted
once and left running (they are not ours).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast, overload

from styxcache.scheduler.entry import ScheduleEntry
from styxcache.scheduler.executors import (
    Executor,
    InlineExecutor,
    as_executor,
    make_executor,
)
from styxcache.scheduler.nats_connect import NatsSettings

__all__ = ["ExecutorRoutes", "Routed", "publishes"]

ControlHandler = Callable[[Mapping[str, Any]], dict[str, Any]]
_T = TypeVar("_T")


def publishes(entry: ScheduleEntry) -> bool:
    """Whether the entry publishes a message (seeds 002/003) instead of running."""
    from styxcache.scheduler.publish import PublishAction

    return isinstance(entry.target, PublishAction)


class ExecutorRoutes:
    """Maps entries to executors; builds named kinds on first use.

    Attributes:
        default: The scheduler's executor (entries without their own).
        test_mode: Route every non-publishing run inline (see
            `Scheduler.test_mode`).
        nats: NATS settings for `nats` entries and the control subject.
        dask_tls: `DaskTLS` for entries' `tls://` executors.
        pool_size: Size of the pools built for `threads` / `processes`.
    """

    def __init__(
        self,
        default: Executor,
        *,
        nats: NatsSettings | None,
        pool_size: int,
        control: ControlHandler,
        logger: logging.Logger,
    ) -> None:
        """Create the routes.

        Args:
            default: The scheduler's executor.
            nats: NATS settings, or None.
            pool_size: Pool size for named kinds.
            control: Answers control requests arriving over NATS.
            logger: Where "executor ready" lines go.
        """
        self.default = default
        self.test_mode = False
        self.nats = nats
        self.dask_tls: Any = None
        self.pool_size = pool_size
        self._control = control
        self._logger = logger
        self._inline = InlineExecutor()
        self._named: dict[str, Executor] = {}
        self._adapted: dict[int, tuple[Any, Executor]] = {}
        self._lock = threading.Lock()

    def for_entry(self, entry: ScheduleEntry) -> Executor:
        """Return the executor an entry's runs go to (see `Scheduler.executor_for`)."""
        if self.test_mode and not publishes(entry):
            return self._inline
        spec = entry.executor
        if spec is None:
            return self.default
        if isinstance(spec, str):
            return self.named(spec)
        with self._lock:
            known = self._adapted.get(id(spec))
            if known is None or known[0] is not spec:
                known = (spec, as_executor(spec))
                self._adapted[id(spec)] = known
            return known[1]

    def named(self, kind: str) -> Executor:
        """Return the executor of a kind, building it on first use."""
        with self._lock:
            executor = self._named.get(kind)
            if executor is None:
                if kind == "nats":
                    executor = self._connect_nats()
                else:
                    executor = make_executor(
                        kind, self.pool_size, dask_tls=self.dask_tls
                    )
                self._named[kind] = executor
                self._logger.info("executor %s ready", kind)
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
        dispatcher.serve_control(self.nats.name, self._control)
        return dispatcher

    def shutdown(self) -> None:
        """Shut down the default executor and every kind built here."""
        self.default.shutdown(wait=False, cancel_pending=True)
        with self._lock:
            owned = list(self._named.values())
        for executor in owned:
            if executor is not self.default:
                executor.shutdown(wait=False, cancel_pending=True)


class _HasRoutes(Protocol):
    _routes: ExecutorRoutes


class Routed(Generic[_T]):
    """A scheduler attribute that lives on its `ExecutorRoutes`.

    Reading and writing `scheduler.executor`, `scheduler.test_mode`... go
    straight to the routes, so a change made after construction (seed 001
    sets `test_mode` on a built scheduler) takes effect on the next run.
    """

    def __init__(self, field: str) -> None:
        """Forward to `ExecutorRoutes.<field>`."""
        self.field = field

    @overload
    def __get__(self, obj: None, owner: type) -> Routed[_T]: ...

    @overload
    def __get__(self, obj: _HasRoutes, owner: type) -> _T: ...

    def __get__(self, obj: _HasRoutes | None, owner: type) -> Routed[_T] | _T:
        if obj is None:
            return self
        return cast(_T, getattr(obj._routes, self.field))

    def __set__(self, obj: _HasRoutes, value: _T) -> None:
        setattr(obj._routes, self.field, value)
