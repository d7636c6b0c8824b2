"""A NATS worker: takes runs from `<prefix>.tasks.*`, reports on the results subject.

Workers subscribe in one queue group, so the server hands each task to one
of them. A worker says `accepted` at once, sends a `heartbeat` for every run
it holds (queued or running) every `heartbeat_seconds`, and a `result` at
the end. That is what the dispatcher's lost-run rule watches: a worker that
dies goes silent, and its runs are retried elsewhere.

Runs execute in worker threads through `execute_run`, so the cache mode,
the cached runner built from the entry's `runner:` settings and the cache
statistics are exactly those of any other executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from styxcache.scheduler.runs import RunOutcome, RunRequest, execute_run
from styxcache.scheduler.wire import WireError, decode_task, encode_report

__all__ = ["WorkerSettings", "serve"]

_log = logging.getLogger("styxcache.scheduler.nats_worker")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How a worker connects and works.

    Attributes:
        url: The NATS server.
        schedules: Only take runs of these schedules (all when empty).
        subject_prefix: Same prefix as the scheduler's `nats:` section.
        queue: Queue group shared by the workers.
        concurrency: Runs executed at once by this worker.
        heartbeat_seconds: Interval of the heartbeats; keep it well below
            the scheduler's `lost_after_seconds`.
        max_runs: Exit after this many results (None: run until stopped).
        connect_timeout_seconds: Give up when no server answers this long
            at startup (later disconnections are retried forever).
    """

    url: str
    schedules: Sequence[str] = ()
    subject_prefix: str = "styxcache"
    queue: str = "styxcache-workers"
    concurrency: int = 1
    heartbeat_seconds: float = 5.0
    max_runs: int | None = None
    connect_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        """Reject settings that cannot work.

        Raises:
            ValueError: Naming the setting.
        """
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.heartbeat_seconds > 0:
            raise ValueError(
                f"heartbeat_seconds must be positive, got {self.heartbeat_seconds}"
            )
        if self.max_runs is not None and self.max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {self.max_runs}")


async def _log_error(exc: Exception) -> None:
    # nats-py's default handler logs a full traceback for every refused retry.
    _log.warning("NATS: %s: %s", type(exc).__name__, exc)


async def serve(settings: WorkerSettings, stop: asyncio.Event | None = None) -> int:
    """Work until `stop` is set or `max_runs` results were sent.

    Args:
        settings: Connection and work settings.
        stop: Set it to stop; the runs in hand are finished first.

    Returns:
        How many runs this worker reported.
    """
    import nats

    stop = stop or asyncio.Event()
    me = f"{socket.gethostname()}:{os.getpid()}"
    connecting = asyncio.ensure_future(
        nats.connect(
            settings.url,
            name=f"styxcache-worker-{me}",
            max_reconnect_attempts=-1,
            error_cb=_log_error,
        )
    )
    stopped = asyncio.ensure_future(stop.wait())
    # A stop request (SIGTERM) must work while the server is still unreachable.
    await asyncio.wait(
        {connecting, stopped},
        timeout=settings.connect_timeout_seconds,
        return_when=asyncio.FIRST_COMPLETED,
    )
    stopped.cancel()
    if not connecting.done():
        connecting.cancel()
        if stop.is_set():
            return 0
        raise OSError(
            f"no NATS server answered within {settings.connect_timeout_seconds:g}s"
        )
    nc = connecting.result()
    queue: asyncio.Queue[tuple[RunRequest, str]] = asyncio.Queue()
    held: dict[str, tuple[int, str]] = {}
    done = 0
    pool = cf.ThreadPoolExecutor(settings.concurrency, "styxcache-worker")
    loop = asyncio.get_running_loop()

    async def on_task(msg: Any) -> None:
        try:
            request, reply_to = decode_task(msg.data)
        except WireError as exc:
            _log.warning("ignoring a bad task on %s: %s", msg.subject, exc)
            return
        key, attempt = request.context.key, request.context.attempt
        held[key] = (attempt, reply_to)
        await nc.publish(reply_to, encode_report("accepted", key, attempt, me))
        await queue.put((request, reply_to))

    async def heartbeats() -> None:
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            for key, (attempt, reply_to) in list(held.items()):
                await nc.publish(reply_to, encode_report("heartbeat", key, attempt, me))

    async def work() -> None:
        nonlocal done
        while True:
            request, reply_to = await queue.get()
            key, attempt = request.context.key, request.context.attempt
            _log.info("running %s (attempt %d)", key, attempt)
            try:
                outcome = await loop.run_in_executor(pool, execute_run, request)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # SystemExit in a target, a broken pool
                # Reported, not swallowed: a run held without a result would
                # be heartbeated forever and never counted as lost.
                outcome = RunOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
            await nc.publish(
                reply_to, encode_report("result", key, attempt, me, outcome)
            )
            held.pop(key, None)
            done += 1
            _log.info("reported %s: %s", key, "ok" if outcome.ok else outcome.error)
            if settings.max_runs is not None and done >= settings.max_runs:
                stop.set()

    subjects = [
        f"{settings.subject_prefix}.tasks.{name.replace('.', '_')}"
        for name in settings.schedules
    ] or [f"{settings.subject_prefix}.tasks.>"]
    subscriptions = [
        await nc.subscribe(subject, queue=settings.queue, cb=on_task)
        for subject in subjects
    ]
    await nc.flush()
    _log.info("worker %s listening on %s", me, ", ".join(subjects))
    tasks = [asyncio.ensure_future(heartbeats())]
    tasks += [asyncio.ensure_future(work()) for _ in range(settings.concurrency)]
    try:
        await stop.wait()
        # Take no new runs; finish the ones in hand.
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.unsubscribe(), 5)
        while held:
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        # Bounded: with the server gone, drain() would wait for a reconnect
        # forever and SIGTERM could not stop the worker.
        try:
            await asyncio.wait_for(nc.drain(), 5)
        except Exception:
            await nc.close()
        pool.shutdown(wait=False)
    return done
