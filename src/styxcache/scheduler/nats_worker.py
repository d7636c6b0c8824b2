"""A NATS worker: runs registered entries when a signed task names them.

A worker runs only the entries it was given at start (from its own schedule
file or an allowlist): a task message names the entry and carries data (the
item, the nominal time, the attempt), never code. It subscribes only to the
run subjects of those entries (`<prefix>.runs.<entry>`); a task for another
entry, an unsigned, mis-signed, stale or replayed task is dropped, logged
and counted, and nothing of it runs.

Workers subscribe in one queue group, so the server hands each task to one
of them. A worker says `accepted` at once, sends a `heartbeat` for every run
it holds (queued or running) every `heartbeat_seconds`, and a `result` at
the end, all signed. That is what the dispatcher's lost-run rule watches: a
worker that dies goes silent, and its runs are retried elsewhere.

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
from collections.abc import Callable, Mapping
from typing import Any

from styxcache._system import owner_label
from styxcache.scheduler.nats_connect import NatsSettings, redact
from styxcache.scheduler.nats_dispatch import receive
from styxcache.scheduler.runner_spec import RunnerSpec
from styxcache.scheduler.runs import RunOutcome, RunRequest, execute_run
from styxcache.scheduler.signing import MessageAuth
from styxcache.scheduler.wire import (
    decode_task,
    encode_report,
    results_subject,
    runs_subject,
)

__all__ = ["WorkerEntry", "WorkerSettings", "serve"]

_log = logging.getLogger("styxcache.scheduler.nats_worker")


@dataclasses.dataclass(frozen=True)
class WorkerEntry:
    """One entry a worker agrees to run.

    Attributes:
        target: The callable (or `module:function`) from the worker's own
            schedule file or command line.
        pass_context: Call `target(ctx)` rather than `target()`.
        runner: Settings of the cached runner built for it.
    """

    target: str | Callable[..., Any]
    pass_context: bool = True
    runner: RunnerSpec | None = None


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How a worker connects and what it runs.

    Attributes:
        nats: Server, credentials, TLS, signing key and subject prefix (the
            same as the scheduler's `nats:` section).
        entries: The entries this worker runs, by name; nothing else runs.
        queue: Queue group shared by the workers.
        concurrency: Runs executed at once by this worker.
        heartbeat_seconds: Interval of the heartbeats; keep it well below
            the scheduler's `lost_after_seconds`.
        max_runs: Exit after this many results (None: run until stopped).
        connect_timeout_seconds: Give up when no server answers this long
            at startup (later disconnections are retried forever).
    """

    nats: NatsSettings
    entries: Mapping[str, WorkerEntry]
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
        if not self.entries:
            raise ValueError(
                "a worker needs the entries it may run: a schedule file"
                " (--schedule FILE) or an allowlist (--allow NAME=module:function)"
            )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.heartbeat_seconds > 0:
            raise ValueError(
                f"heartbeat_seconds must be positive, got {self.heartbeat_seconds}"
            )
        if self.max_runs is not None and self.max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {self.max_runs}")


async def serve(
    settings: WorkerSettings,
    stop: asyncio.Event | None = None,
    *,
    auth: MessageAuth | None = None,
) -> int:
    """Work until `stop` is set or `max_runs` results were sent.

    Args:
        settings: Connection and work settings.
        stop: Set it to stop; the runs in hand are finished first.
        auth: Message signer/checker (default: from `settings.nats`).

    Returns:
        How many runs this worker reported.

    Raises:
        OSError: Without a signing key (unless insecure mode was asked
            for), or when no server answers in time or it refuses the
            credentials (never shown).
    """
    auth = auth if auth is not None else settings.nats.message_auth()
    if not auth.enabled:
        _log.warning(
            "NATS messages are NOT signed (insecure_no_signing): anyone who can"
            " publish to %s can make this worker run its entries",
            settings.nats.display_url,
        )
    stop = stop or asyncio.Event()
    me = owner_label(token=False)
    nc = await _connect(settings, stop, me)
    if nc is None:
        return 0
    return await _Worker(settings, auth, nc, me, stop).run()


async def _connect(settings: WorkerSettings, stop: asyncio.Event, me: str) -> Any:
    """Connect to the server, or return None if `stop` came first.

    Raises:
        OSError: When no server answers in time or it refuses us.
    """
    import nats

    nats_settings = settings.nats
    secrets = nats_settings.secrets()

    async def log_error(exc: Exception) -> None:
        # nats-py's default handler logs a full traceback for every refused retry.
        _log.warning("NATS: %s: %s", type(exc).__name__, redact(str(exc), secrets))

    connecting = asyncio.ensure_future(
        nats.connect(
            **nats_settings.connect_options(),
            name=f"styxcache-worker-{me}",
            max_reconnect_attempts=-1,
            error_cb=log_error,
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
            return None
        raise OSError(
            f"no NATS server answered at {nats_settings.display_url} within"
            f" {settings.connect_timeout_seconds:g}s"
        )
    try:
        return connecting.result()
    except Exception as exc:
        raise OSError(
            f"cannot connect to NATS at {nats_settings.display_url}:"
            f" {redact(f'{type(exc).__name__}: {exc}', secrets)}"
        ) from None


class _Worker:
    """One connected worker: takes tasks, runs them, reports, heartbeats."""

    def __init__(
        self,
        settings: WorkerSettings,
        auth: MessageAuth,
        nc: Any,
        me: str,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.nc = nc
        self.me = me
        self.stop = stop
        self.prefix = settings.nats.subject_prefix
        self.queue: asyncio.Queue[tuple[RunRequest, str]] = asyncio.Queue()
        # Runs in hand (queued or running): key -> (attempt, reply subject).
        self.held: dict[str, tuple[int, str]] = {}
        self.done = 0
        self.pool = cf.ThreadPoolExecutor(settings.concurrency, "styxcache-worker")

    async def report(self, subject: str, body: bytes, key: str) -> None:
        headers = self.auth.sign(subject, body, run=key)
        await self.nc.publish(subject, body, headers=headers or None)

    async def on_task(self, msg: Any) -> None:
        task = receive(_log, self.auth, msg, decode_task)
        if task is None:
            return
        entry = self.settings.entries.get(task.schedule)
        if entry is None or msg.subject != runs_subject(self.prefix, task.schedule):
            self.auth.count("unknown-entry")
            _log.warning(
                "refused run %s: entry %r is not registered on this worker",
                task.key,
                task.schedule,
            )
            return
        key, attempt = task.key, task.attempt
        reply_to = results_subject(self.prefix, task.schedule)
        request = RunRequest(
            target=entry.target,
            context=task.context(),
            pass_context=entry.pass_context,
            runner=entry.runner,
        )
        self.held[key] = (attempt, reply_to)
        await self.report(
            reply_to, encode_report("accepted", key, attempt, self.me), key
        )
        await self.queue.put((request, reply_to))

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            for key, (attempt, reply_to) in list(self.held.items()):
                await self.report(
                    reply_to, encode_report("heartbeat", key, attempt, self.me), key
                )

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request, reply_to = await self.queue.get()
            key, attempt = request.context.key, request.context.attempt
            _log.info("running %s (attempt %d)", key, attempt)
            try:
                outcome = await loop.run_in_executor(self.pool, execute_run, request)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # SystemExit in a target, a broken pool
                # Reported, not swallowed: a run held without a result would
                # be heartbeated forever and never counted as lost.
                outcome = RunOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
            await self.report(
                reply_to, encode_report("result", key, attempt, self.me, outcome), key
            )
            self.held.pop(key, None)
            self.done += 1
            _log.info("reported %s: %s", key, "ok" if outcome.ok else outcome.error)
            max_runs = self.settings.max_runs
            if max_runs is not None and self.done >= max_runs:
                self.stop.set()

    async def run(self) -> int:
        settings = self.settings
        subjects = sorted(
            {runs_subject(self.prefix, name) for name in settings.entries}
        )
        subscriptions = [
            await self.nc.subscribe(subject, queue=settings.queue, cb=self.on_task)
            for subject in subjects
        ]
        await self.nc.flush()
        _log.info(
            "worker %s listening on %s (entries: %s; messages %s)",
            self.me,
            ", ".join(subjects),
            ", ".join(sorted(settings.entries)),
            "signed" if self.auth.enabled else "NOT signed",
        )
        tasks = [asyncio.ensure_future(self.heartbeats())]
        tasks += [
            asyncio.ensure_future(self.work()) for _ in range(settings.concurrency)
        ]
        try:
            await self.stop.wait()
            # Take no new runs; finish the ones in hand.
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(subscription.unsubscribe(), 5)
            while self.held:
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            # Bounded: with the server gone, drain() would wait for a reconnect
            # forever and SIGTERM could not stop the worker.
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:
                await self.nc.close()
            self.pool.shutdown(wait=False)
            if self.auth.counts():
                _log.warning("messages refused: %s", self.auth.counts())
        return self.done
