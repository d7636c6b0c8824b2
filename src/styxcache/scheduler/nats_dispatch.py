"""Publishes runs to NATS workers, behind the scheduler's `Executor` protocol.

`submit()` publishes the run on `<prefix>.tasks.<schedule>` and returns a
future that completes when a worker's `result` for that run key arrives on
`<prefix>.results.<schedule>`.

The rule for dead workers (core NATS has no redelivery): a worker reports
`accepted` as soon as a run reaches it and a `heartbeat` for every run it
holds (queued or running) every few seconds. A run with no word for
`lost_after_seconds` (no worker took it, or its worker died) fails its
future with `RunLostError`; the scheduler records the attempt as `interrupted`
and publishes it again while the entry's `retries` last. A worker that was
only cut off may then still finish the first attempt: whichever result
comes first settles the run, and the cache's lease makes the identical
tool runs inside the two attempts run once.

The NATS client lives on an asyncio loop in one daemon thread; the
scheduler's threads talk to it through `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from styxcache.scheduler.config import NatsSettings
from styxcache.scheduler.runs import RunLostError, RunRequest, execute_run
from styxcache.scheduler.wire import (
    WireError,
    decode_report,
    encode_task,
    results_subject,
    tasks_subject,
)

__all__ = ["NatsDispatcher"]

_log = logging.getLogger("styxcache.scheduler.nats_dispatch")

T = TypeVar("T")
A = TypeVar("A")
DoneCallback = Callable[["cf.Future[Any]"], object]
ControlHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclasses.dataclass(slots=True)
class _Pending:
    future: cf.Future[Any]
    schedule: str
    attempt: int
    last_word: float
    worker: str = ""


async def _log_error(exc: Exception) -> None:
    # nats-py's default handler logs a full traceback for every refused retry.
    _log.warning("NATS: %s: %s", type(exc).__name__, exc)


class NatsDispatcher:
    """An executor whose workers are `styxcache worker --nats URL` processes."""

    name = "nats"

    def __init__(
        self,
        settings: NatsSettings,
        *,
        connect_timeout: float = 10.0,
        check_every_seconds: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Connect to the server and listen for results.

        Args:
            settings: Server URL, subject prefix and the lost-run timeout.
            connect_timeout: Seconds to wait for the connection.
            check_every_seconds: How often silent runs are looked for.
            monotonic: Time source of the lost-run rule.

        Raises:
            ImportError: Without the `nats` extra (`nats-py`).
            OSError: If the server cannot be reached in time.
        """
        try:
            import nats
        except ImportError as exc:
            raise ImportError(
                "executor 'nats' needs nats-py: pip install 'styxcache[nats]'"
            ) from exc
        self.settings = settings
        self._nats = nats
        self._monotonic = monotonic
        self._check_every = check_every_seconds
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="styxcache-nats", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._connect(connect_timeout), connect_timeout + 5)
        except BaseException as exc:
            self._stop_loop()
            why = str(exc) or f"no answer within {connect_timeout:g}s"
            raise OSError(f"cannot connect to NATS at {settings.url}: {why}") from exc
        _log.info("connected to NATS at %s", settings.url)

    def _call(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, timeout: float) -> None:
        # wait_for cancels the attempt, which would otherwise retry forever.
        self._nc = await asyncio.wait_for(
            self._nats.connect(
                self.settings.url,
                connect_timeout=timeout,
                max_reconnect_attempts=-1,
                name=f"styxcache-scheduler-{self.settings.name}",
                error_cb=_log_error,
            ),
            timeout,
        )
        prefix = self.settings.subject_prefix
        await self._nc.subscribe(f"{prefix}.results.>", cb=self._on_report)
        self._watchdog = asyncio.ensure_future(self._watch())

    async def _on_report(self, msg: Any) -> None:
        try:
            report = decode_report(msg.data)
        except WireError as exc:
            _log.warning("ignoring a bad report on %s: %s", msg.subject, exc)
            return
        with self._lock:
            pending = self._pending.get(report.key)
            if pending is None:
                return  # already settled (a late twin of a retried run)
            pending.last_word = self._monotonic()
            pending.worker = report.worker
            if report.kind != "result":
                return
            del self._pending[report.key]
        assert report.outcome is not None
        if not pending.future.done():
            pending.future.set_result(report.outcome)

    async def _watch(self) -> None:
        limit = self.settings.lost_after_seconds
        while True:
            await asyncio.sleep(self._check_every)
            now = self._monotonic()
            with self._lock:
                lost = [
                    (key, p)
                    for key, p in self._pending.items()
                    if now - p.last_word > limit
                ]
                for key, _ in lost:
                    del self._pending[key]
            for key, pending in lost:
                who = f"worker {pending.worker}" if pending.worker else "no worker"
                pending.future.set_exception(
                    RunLostError(f"{who} said nothing about {key} for {limit:g}s")
                )

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Publish one run.

        Args:
            fn: Must be `execute_run` (workers call it themselves).
            arg: The `RunRequest`.
            on_done: Called with the future once it is done.

        Returns:
            A future settled by the worker's result (or `RunLostError`).

        Raises:
            TypeError: For anything but `execute_run` of a `RunRequest` with
                a `module:function` target and a JSON fan-out item.
            RuntimeError: After `shutdown()`.
        """
        if fn is not execute_run or not isinstance(arg, RunRequest):
            raise TypeError("the NATS dispatcher only sends execute_run(RunRequest)")
        schedule = arg.context.schedule
        prefix = self.settings.subject_prefix
        body = encode_task(arg, results_subject(prefix, schedule))
        future: cf.Future[T] = cf.Future()
        if on_done is not None:
            future.add_done_callback(on_done)
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._pending[arg.context.key] = _Pending(
                future, schedule, arg.context.attempt, self._monotonic()
            )
        subject = tasks_subject(prefix, schedule)
        try:
            self._call(self._nc.publish(subject, body))
        except Exception as exc:
            # Settled here, once: the watchdog must not settle it again.
            with self._lock:
                self._pending.pop(arg.context.key, None)
            future.set_exception(RunLostError(f"publishing on {subject} failed: {exc}"))
            return future
        _log.debug("published %s on %s", arg.context.key, subject)
        return future

    def serve_control(self, name: str, handler: ControlHandler) -> None:
        """Answer requests on `<prefix>.control.<name>` with `handler`.

        The handler runs in a thread of its own (a reload reads files), gets
        the decoded JSON request and returns a JSON-able reply.

        Args:
            name: The scheduler's name.
            handler: `handler(request) -> reply`.
        """

        async def answer(msg: Any) -> None:
            try:
                request = json.loads(msg.data or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("expected a JSON object")
                reply = await asyncio.to_thread(handler, request)
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if msg.reply:
                await msg.respond(json.dumps(reply, default=str).encode())

        subject = f"{self.settings.subject_prefix}.control.{name}"
        self._call(self._nc.subscribe(subject, cb=answer))
        _log.info("answering control requests on %s", subject)

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop; unsettled runs fail with `RunLostError` unless waited for.

        Args:
            wait: Wait for the outstanding results first.
            cancel_pending: Do not wait, whatever `wait` says.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            futures = [p.future for p in self._pending.values()]
        if wait and not cancel_pending:
            cf.wait(futures)
        with self._lock:
            left = list(self._pending.values())
            self._pending.clear()
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(RunLostError("scheduler shut down"))
        try:
            self._call(self._close(), 10)
        except Exception as exc:
            _log.warning("closing the NATS connection failed: %s", exc)
        self._stop_loop()

    async def _close(self) -> None:
        self._watchdog.cancel()
        await self._nc.drain()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
