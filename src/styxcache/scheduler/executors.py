"""Executors: where runs execute, behind one small protocol.

The scheduler only ever calls `submit(fn, arg)` and `shutdown(...)`, and
reads the returned `concurrent.futures.Future`. Anything that can honour
that is an executor: the pools here, a Dask cluster (`dask_executor`), NATS
workers (`nats_dispatch`); one contract test suite runs against them all.

Process pools and foreign executors are `concurrent.futures` executors
(`ProcessExecutor`, `FuturesExecutor`). `ThreadExecutor` alone keeps its
own small queue of daemon threads rather than wrapping
`concurrent.futures.ThreadPoolExecutor`, whose worker threads are not
daemons and are joined at interpreter exit: a hung target would then hang
the service's exit, which is exactly what a shutdown timeout must prevent.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from styxcache.scheduler.futures import DoneCallback, new_future, run_into

__all__ = [
    "DispatcherExecutor",
    "Executor",
    "FuturesExecutor",
    "InlineExecutor",
    "ProcessExecutor",
    "ThreadExecutor",
    "as_executor",
    "dispatches_work",
    "make_executor",
]


T = TypeVar("T")
A = TypeVar("A")


@runtime_checkable
class Executor(Protocol):
    """Runs submitted calls and reports through futures."""

    name: str
    """Short label for logs (`inline`, `threads`, ...)."""

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Start `fn(arg)` and return its future.

        Args:
            fn: A module-level function (process executors pickle it).
            arg: Its single argument.
            on_done: Called with the future once it is done; executors that
                create the future attach it before the work can finish, so
                the submitter never races the worker for the future's lock.
        """
        ...

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting work.

        Args:
            wait: Block until running calls end.
            cancel_pending: Drop calls that have not started.
        """
        ...


class InlineExecutor:
    """Runs each call at once in the submitting thread (deterministic tests)."""

    name = "inline"

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Run `fn(arg)` now (see `Executor.submit`)."""
        future: cf.Future[T] = new_future(on_done)
        run_into(future, fn, arg)
        return future

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Nothing to stop."""


class ThreadExecutor:
    """A fixed pool of daemon threads.

    Example:
        >>> pool = ThreadExecutor(2)
        >>> pool.submit(abs, -3).result()
        3
        >>> pool.shutdown()
    """

    name = "threads"

    def __init__(self, max_workers: int = 4) -> None:
        """Start the pool lazily.

        Args:
            max_workers: Number of threads.

        Raises:
            ValueError: If `max_workers` is below 1.
        """
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[
            tuple[cf.Future[Any], Callable[[Any], Any], Any] | None
        ]
        self._queue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._outstanding = 0

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Queue `fn(arg)` for a worker thread (see `Executor.submit`).

        Raises:
            RuntimeError: After `shutdown()`.
        """
        future: cf.Future[T] = self.submit_many([(fn, arg, on_done)])[0]
        return future

    def submit_many(
        self, calls: list[tuple[Callable[[Any], Any], Any, DoneCallback | None]]
    ) -> list[cf.Future[Any]]:
        """Queue many calls at once (a herd of fires due together).

        Every future is made before the first call is queued, so the worker
        threads do not compete with the submitter while it prepares them.

        Args:
            calls: `(fn, arg, on_done)` triples.

        Returns:
            The calls' futures, in order.

        Raises:
            RuntimeError: After `shutdown()`.
        """
        jobs = [(new_future(on_done), fn, arg) for fn, arg, on_done in calls]
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._outstanding += len(jobs)
            while len(self._threads) < min(self.max_workers, self._outstanding):
                thread = threading.Thread(
                    target=self._work,
                    name=f"styxcache-run-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        for job in jobs:
            self._queue.put(job)
        return [future for future, _, _ in jobs]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            run_into(*job)
            with self._lock:
                self._outstanding -= 1

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop the workers once the queue drains.

        Args:
            wait: Join the threads (they are daemons, so not waiting is safe).
            cancel_pending: Cancel queued calls that have not started.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        if cancel_pending:
            pending = []
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    pending.append(job)
            for future, _, _ in pending:
                future.cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


class FuturesExecutor:
    """Adapts any `concurrent.futures.Executor` (for example a Dask client's)."""

    def __init__(self, executor: cf.Executor, name: str = "futures") -> None:
        """Wrap an executor.

        Args:
            executor: The executor to submit to.
            name: Label for logs.
        """
        self._executor = executor
        self.name = name

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Submit to the wrapped executor (see `Executor.submit`)."""
        future = self._executor.submit(fn, arg)
        if on_done is not None:
            future.add_done_callback(on_done)
        return future

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Shut the wrapped executor down.

        Args:
            wait: Wait for running calls.
            cancel_pending: Cancel queued calls.
        """
        self._executor.shutdown(wait=wait, cancel_futures=cancel_pending)


class ProcessExecutor(FuturesExecutor):
    """A process pool; targets must be importable (`module:function`)."""

    def __init__(self, max_workers: int = 2, start_method: str = "spawn") -> None:
        """Create the pool.

        Args:
            max_workers: Number of processes.
            start_method: multiprocessing start method; `spawn` avoids
                forking a process that holds the scheduler's threads.
        """
        context = multiprocessing.get_context(start_method)
        super().__init__(
            cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=context),
            "processes",
        )

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Shut down; when not waiting, terminate the worker processes.

        Args:
            wait: Wait for running calls.
            cancel_pending: Cancel queued calls.
        """
        pool = self._executor
        # `_processes` is None once the pool was shut down before.
        running = getattr(pool, "_processes", None) or {}
        processes = list(running.values()) if not wait else []
        pool.shutdown(wait=wait, cancel_futures=cancel_pending)
        for process in processes:
            # A run past the shutdown timeout must not keep the service alive.
            process.terminate()


class DispatcherExecutor:
    """Adapts an object that dispatches jobs: `dispatch(job)` or `submit(job)`.

    Seed 001 builds its scheduler on a dispatcher (`Scheduler(dispatcher)`);
    whatever that object does with a job (run it now, queue it, hand it to a
    thread), the job is a zero-argument callable that performs the run and
    settles the future the scheduler waits on.

    Example:
        >>> class Dispatcher:
        ...     def dispatch(self, job):
        ...         job()
        >>> DispatcherExecutor(Dispatcher()).submit(abs, -2).result()
        2
    """

    def __init__(self, dispatcher: Any) -> None:
        """Wrap a dispatcher.

        Args:
            dispatcher: An object with a `dispatch` or a `submit` method.

        Raises:
            TypeError: If it has neither.
        """
        method = getattr(dispatcher, "dispatch", None)
        if not callable(method):
            method = getattr(dispatcher, "submit", None)
        if not callable(method):
            raise TypeError(
                f"{type(dispatcher).__name__} has no dispatch() or submit() method"
            )
        self._send: Callable[[Callable[[], Any]], Any] = method
        self.dispatcher = dispatcher
        self.name = type(dispatcher).__name__

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Hand `fn(arg)` to the dispatcher as a job (see `Executor.submit`)."""
        future: cf.Future[T] = new_future(on_done)

        def job() -> T | None:
            if not future.set_running_or_notify_cancel():
                return None
            try:
                result = fn(arg)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            future.set_result(result)
            return result

        try:
            self._send(job)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
        return future

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Leave the dispatcher alone: it belongs to the caller."""


def dispatches_work(obj: Any) -> bool:
    """Whether `obj` is somewhere runs can go (rather than a routine).

    Args:
        obj: Anything.

    Returns:
        True for an `Executor`, a `concurrent.futures.Executor`, or an object
        with a `dispatch()` or `submit()` method.
    """
    return isinstance(obj, (cf.Executor, Executor)) or any(
        callable(getattr(obj, name, None)) for name in ("dispatch", "submit")
    )


def make_executor(kind: str, max_workers: int = 4, *, dask_tls: Any = None) -> Executor:
    """Build an executor by name.

    Args:
        kind: `inline`, `threads`, `processes`, or a Dask scheduler address
            (`dask://host:port`, `tcp://host:port`, `tls://host:port`).
        max_workers: Pool size.
        dask_tls: `DaskTLS` certificates for a `tls://` scheduler.

    Returns:
        The executor.

    Raises:
        ValueError: For an unknown kind (`nats` needs server settings: the
            scheduler builds that one).
    """
    if kind == "inline":
        return InlineExecutor()
    if kind == "threads":
        return ThreadExecutor(max_workers)
    if kind == "processes":
        return ProcessExecutor(max_workers)
    if kind.startswith(("dask://", "tcp://", "tls://")):
        from styxcache.scheduler.dask_executor import DaskExecutor

        return DaskExecutor.connect(kind, tls=dask_tls)
    raise ValueError(
        f"unknown executor kind {kind!r}; expected inline, threads, processes"
        " or dask://host:port"
    )


def as_executor(obj: Any) -> Executor:
    """Adapt what a caller may pass as an executor.

    Args:
        obj: An `Executor`, a `distributed.Client`, any
            `concurrent.futures.Executor`, or an object with `dispatch(job)`
            or `submit(job)` (see `DispatcherExecutor`).

    Returns:
        An `Executor`.

    Raises:
        TypeError: For anything else.
    """
    from styxcache.scheduler.dask_executor import DaskExecutor, is_dask_client

    if is_dask_client(obj):
        return DaskExecutor(obj)
    if isinstance(obj, cf.Executor):
        return FuturesExecutor(obj, type(obj).__name__)
    if isinstance(obj, Executor):
        return obj
    if dispatches_work(obj):
        return DispatcherExecutor(obj)
    raise TypeError(
        "expected an Executor, a concurrent.futures.Executor, a"
        " distributed.Client or an object with dispatch() or submit(),"
        f" got {type(obj).__name__}"
    )
