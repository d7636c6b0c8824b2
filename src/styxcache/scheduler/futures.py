"""Settling `concurrent.futures.Future`s: what every executor hands back.

The scheduler waits on a `Future` per run whatever runs it (a thread, a
process pool, Dask, NATS workers). Executors that make their own futures
make them with `new_future`, so the completion callback is attached before
any worker can settle it, and settle them with `run_into`.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DoneCallback", "new_future", "run_into"]

T = TypeVar("T")
A = TypeVar("A")
DoneCallback = Callable[["cf.Future[Any]"], object]


def new_future(on_done: DoneCallback | None = None) -> cf.Future[Any]:
    """Make a pending future, with `on_done` attached before anyone can settle it.

    Args:
        on_done: Called with the future once it is done.

    Returns:
        The future.
    """
    future: cf.Future[Any] = cf.Future()
    if on_done is not None:
        future.add_done_callback(on_done)
    return future


def run_into(future: cf.Future[T], fn: Callable[[A], T], arg: A) -> None:
    """Run `fn(arg)` and settle `future` with its result or exception.

    Nothing runs if the future was cancelled first.

    Args:
        future: A pending future.
        fn: The function.
        arg: Its argument.
    """
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(arg)
    except BaseException as exc:  # the future carries it to the scheduler
        future.set_exception(exc)
        return
    future.set_result(result)
