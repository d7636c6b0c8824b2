"""Run an import's per-entry work in forked worker processes, a slice each.

An import spends most of its time in per-file system calls and per-entry
Python work (parsing and checking manifests, hashing, committing), which
one interpreter runs on one core. The checked plan is handed to the
workers by `fork` (nothing is pickled on the way in); each worker owns a
contiguous slice of the entries for the whole import and runs the steps
the parent sends, one at a time, all workers in step: the parent decides
between steps (nothing is written until every slice is checked; nothing
is committed until every slice is verified). With one slice (small
imports, one core, no `fork`, or other threads alive, where forking could
copy a lock one of them holds) the same steps run in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import connection
from typing import Generic, TypeVar, cast

from styxcache._system import can_fork
from styxcache.transfer.common import TransferError

__all__ = ["PARALLEL_FROM", "Crew", "crew", "split", "worker_count"]

PARALLEL_FROM = 2000
"""Entries from which an import forks workers by itself (below, starting them
costs more than it saves)."""
_MAX_WORKERS = 8

C = TypeVar("C")
S = TypeVar("S")
R = TypeVar("R")


def worker_count(requested: int | None, entries: int) -> int:
    """How many processes to use for `entries` entries.

    Args:
        requested: What the caller asked for (None: decide; 1: no workers).
        entries: The entries to process.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"workers must be at least 1, not {requested}")
    if entries < 2 or not can_fork():
        return 1
    if requested is None:
        if entries < PARALLEL_FROM:
            return 1
        requested = min(_cpus(), _MAX_WORKERS)
    return max(1, min(requested, entries))


def _cpus() -> int:
    """CPUs this process may run on (all of them where that cannot be asked)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split(keys: Sequence[str], weights: dict[str, int], parts: int) -> list[list[str]]:
    """Cut `keys` into at most `parts` contiguous slices of about equal weight.

    Args:
        keys: In order.
        weights: The work each key is (members, say); missing keys weigh 1.
        parts: How many slices at most.
    """
    total = sum(weights.get(key, 1) for key in keys)
    slices: list[list[str]] = [[]]
    done = 0
    for key in keys:
        if len(slices) < parts and done >= total * len(slices) / parts:
            slices.append([])
        slices[-1].append(key)
        done += weights.get(key, 1)
    return [part for part in slices if part]


class Crew(Generic[C, S]):
    """One worker per slice, each keeping its slice's state between steps."""

    def __init__(
        self, context: C, slices: list[S], pipes: list[connection.Connection]
    ) -> None:
        self._context = context
        self._slices = slices
        self._pipes = pipes

    def step(self, fn: Callable[[C, S], R]) -> list[R]:
        """Return `[fn(context, slice) for slice in slices]`, one worker each.

        `fn` must be a module-level function (it is sent to the workers by
        name); it may keep state on its slice for the next step. Every
        worker finishes the step; then the first exception (in slice order)
        is raised here.
        """
        if not self._pipes:
            return [fn(self._context, part) for part in self._slices]
        answers: list[tuple[bool, object]] = []
        for pipe in self._pipes:
            with contextlib.suppress(OSError):  # a dead worker: its answer says
                pipe.send(fn)
        for pipe in self._pipes:
            try:
                answers.append(pipe.recv())
            except (EOFError, OSError):
                died = TransferError("an import worker process died (killed?)")
                answers.append((False, died))
        for ok, value in answers:
            if not ok:
                assert isinstance(value, BaseException)  # sent by `_serve`
                raise value
        return [cast("R", value) for _, value in answers]


@contextlib.contextmanager
def crew(context: C, slices: list[S]) -> Iterator[Crew[C, S]]:
    """Fork one worker per slice (none for a single slice).

    Args:
        context: What every step gets first (inherited, not pickled).
        slices: What each worker works on (inherited, not pickled).
    """
    pipes: list[connection.Connection] = []
    pids: list[int] = []
    try:
        for part in slices if len(slices) > 1 else ():
            mine, theirs = multiprocessing.Pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the worker (coverage sees the parent)
                code = 1
                try:
                    mine.close()
                    for other in pipes:
                        other.close()
                    _serve(theirs, context, part)
                    code = 0
                finally:
                    os._exit(code)
            theirs.close()
            pipes.append(mine)
            pids.append(pid)
        yield Crew(context, slices, pipes)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)  # done: the worker exits after its current step
            pipe.close()
        for pid in pids:
            os.waitpid(pid, 0)


def _serve(pipe: connection.Connection, context: object, part: object) -> None:
    """A worker's loop: run each step sent, answer `(ok, result or exception)`."""
    while True:
        try:
            fn = pipe.recv()
        except EOFError:
            return
        if fn is None:
            return
        try:
            answer: tuple[bool, object] = (True, fn(context, part))
        except Exception as exc:  # raised again in the parent
            answer = (False, _portable(exc))
        pipe.send(answer)


def _portable(exc: Exception) -> Exception:
    """The exception itself if the parent can unpickle it, else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any failure: send what it said instead
        return TransferError(f"{type(exc).__name__}: {exc}")
    return exc
