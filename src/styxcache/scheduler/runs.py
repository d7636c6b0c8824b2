"""What one scheduled run receives and reports, and the function that runs it.

`execute_run` is a plain module-level function over picklable dataclasses, so
every executor (inline, threads, processes, and later Dask or NATS workers)
can call it. It sets the run's cache mode and counts the cache events of the
run *inside* the worker, because thread pools do not copy context variables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import traceback
from typing import Any

from styxcache.errors import RunLostError
from styxcache.events import collect_events
from styxcache.modes import CacheMode, cache_mode
from styxcache.scheduler.refs import Target, resolve_callable
from styxcache.scheduler.runner_spec import RunnerSpec, using_runner

__all__ = ["RunContext", "RunLostError", "RunOutcome", "RunRequest", "execute_run"]


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Handed to a schedule's target.

    Attributes:
        schedule: Schedule name.
        key: Run key (unique per schedule, nominal time and item).
        nominal_time: The fire instant the run belongs to (aware, UTC).
        item: The fan-out context dict (empty without `expand_from`).
        item_key: The item's stable key (`""` without fan-out).
        cache: The cache mode in force inside the run.
        attempt: 1 for the first try, 2 for the first retry of a lost run.
        runner: The `CachingRunner` built on the worker from the entry's
            `runner:` settings (None without them); it is also the global
            Styx runner while the target runs.
    """

    schedule: str
    key: str
    nominal_time: dt.datetime
    item: dict[str, Any] = dataclasses.field(default_factory=dict)
    item_key: str = ""
    cache: str = CacheMode.NORMAL.value
    attempt: int = 1
    # Built inside the worker, never pickled or compared.
    runner: Any = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def quick(
        cls,
        schedule: str,
        key: str,
        nominal_time: dt.datetime,
        item: dict[str, Any],
        item_key: str,
        cache: str,
        attempt: int,
    ) -> RunContext:
        """Build a context without the frozen dataclass's per-field checks.

        A herd of 10,000 fires builds 10,000 contexts on the dispatch path;
        filling `__dict__` at once is several times cheaper and gives an
        equal object.

        Returns:
            The context.
        """
        context = object.__new__(cls)
        context.__dict__.update(
            schedule=schedule,
            key=key,
            nominal_time=nominal_time,
            item=item,
            item_key=item_key,
            cache=cache,
            attempt=attempt,
            runner=None,
        )
        return context

    def __getitem__(self, name: str) -> Any:
        """Read a key of the fan-out item, so `ctx["subject"]` works.

        Args:
            name: Item key.

        Returns:
            The value.
        """
        return self.item[name]

    def get(self, name: str, default: Any = None) -> Any:
        """Read a key of the fan-out item with a default.

        Args:
            name: Item key.
            default: Returned when the key is absent.

        Returns:
            The value or the default.
        """
        return self.item.get(name, default)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """Everything a worker needs to perform one run.

    Attributes:
        target: Callable or `module:function`.
        context: The run's context.
        pass_context: Whether to call `target(context)` or `target()`.
        runner: Settings the worker builds its cached runner from.
        runner_is_default: `runner` is the file's default cache, not the
            entry's own choice: it is used only when the worker's global
            Styx runner is not already a `CachingRunner`.
        clock: The scheduler's clock, for stamping the real start and end
            on the same clock as the due time; process-local (dropped when
            the request is pickled, then the worker's wall clock is used).
    """

    target: str | Target
    context: RunContext
    pass_context: bool = True
    runner: RunnerSpec | None = None
    runner_is_default: bool = False
    clock: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the clock (it holds locks; other processes use theirs)."""
        state = dict(self.__dict__)
        state["clock"] = None
        return state


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a worker reports back.

    Attributes:
        ok: False if the target raised.
        error: `Type: message` of the exception.
        traceback: Formatted traceback of the exception.
        hits: Cache hits made by executions inside the run.
        misses: Cache misses (refreshes count as misses: the tool ran).
        bypassed: Executions that bypassed the cache.
        duration_s: Monotonic duration of the run in the worker.
        started: When the target really started (Unix seconds, on the
            scheduler's clock in-process, else the worker's wall clock).
        ended: When it returned.
        on_clock: The stamps are on the scheduler's own clock (the run was
            in-process); else they are the worker's wall clock.
    """

    ok: bool
    error: str = ""
    traceback: str = ""
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    duration_s: float = 0.0
    started: float | None = None
    ended: float | None = None
    on_clock: bool = False


def _global_is_caching() -> bool:
    from styxdefs import get_global_runner

    from styxcache.runner import CachingRunner

    try:
        return isinstance(get_global_runner(), CachingRunner)
    except Exception:  # no global runner yet
        return False


def _call(target: str | Target, pass_context: bool, context: RunContext) -> None:
    function = resolve_callable(target)
    if pass_context:
        function(context)
    else:
        function()


def execute_run(request: RunRequest) -> RunOutcome:
    """Run a target under its cache mode and count its cache events.

    Never raises for a failing target: the failure is part of the outcome.

    Args:
        request: The run.

    Returns:
        The outcome.
    """
    wall = request.clock.time if request.clock is not None else time.time
    started_at = wall()
    started = time.monotonic()
    error, trace = "", ""
    spec = request.runner
    if spec is not None and request.runner_is_default and _global_is_caching():
        # The program already put a cache in front of Styx: keep it.
        spec = None
    with cache_mode(request.context.cache), collect_events() as events:
        try:
            if spec is None:
                _call(request.target, request.pass_context, request.context)
            else:
                with using_runner(spec) as runner:
                    context = dataclasses.replace(request.context, runner=runner)
                    _call(request.target, request.pass_context, context)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trace = traceback.format_exc()
    hits = misses = bypassed = 0
    for event in events:
        if event.kind == "hit":
            hits += 1
        elif event.kind in ("miss", "refresh"):
            misses += 1
        elif event.kind == "bypass":
            bypassed += 1
    return RunOutcome(
        ok=not error,
        error=error,
        traceback=trace,
        hits=hits,
        misses=misses,
        bypassed=bypassed,
        duration_s=time.monotonic() - started,
        started=started_at,
        ended=wall(),
        on_clock=request.clock is not None,
    )
