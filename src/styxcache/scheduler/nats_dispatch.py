"""Publishes runs to NATS workers, behind the scheduler's `Executor` protocol.

`submit()` publishes the run on `<prefix>.runs.<schedule>` and returns a
future that completes when a worker's `result` for that run key arrives on
`<prefix>.results.<schedule>`. The task names the entry and carries data
only; workers run that entry from their own schedule file.

Every message is signed and every message received is checked
(`styxcache.scheduler.signing`): a forged or replayed result is dropped,
counted, and never reaches the ledger.

The same dispatcher publishes the goals and tasks of publish entries
(`dispatch_type: goal|task`) to `<prefix>.goals.incoming` /
`<prefix>.tasks.incoming`, and answers on `<prefix>.control.<name>`,
`<prefix>.scheduler.<name>` (health) and the `<prefix>.control.reload`
broadcast.

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

from styxcache.scheduler.futures import DoneCallback, new_future
from styxcache.scheduler.nats_connect import NatsSettings, redact
from styxcache.scheduler.publish import PublishAction, publish_subject
from styxcache.scheduler.runs import RunLostError, RunOutcome, RunRequest, execute_run
from styxcache.scheduler.signing import BadMessageError, MessageAuth
from styxcache.scheduler.wire import (
    Report,
    TaskMessage,
    WireError,
    control_subject,
    decode_report,
    encode_task,
    health_subject,
    reload_subject,
    results_subject,
    runs_subject,
)

__all__ = ["NatsDispatcher"]

_log = logging.getLogger("styxcache.scheduler.nats_dispatch")

T = TypeVar("T")
A = TypeVar("A")
# What `receive` decodes: a task (workers) or a report (the dispatcher).
M = TypeVar("M", TaskMessage, Report)
ControlHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclasses.dataclass(slots=True)
class _Pending:
    future: cf.Future[Any]
    schedule: str
    attempt: int
    last_word: float
    worker: str = ""


def log_drop(
    log: logging.Logger, auth: MessageAuth, subject: str, exc: Exception
) -> None:
    """Log a refused message: the first few of each reason, then rarely.

    Args:
        log: Where to log.
        auth: Holds the counts.
        subject: Where it arrived.
        exc: Why it was refused.
    """
    reason = exc.reason if isinstance(exc, BadMessageError) else "malformed"
    if not isinstance(exc, BadMessageError):
        auth.count(reason)
    count = auth.counts().get(reason, 0)
    # Powers of two: a flood of forgeries cannot flood the log.
    if count & (count - 1) == 0:
        log.warning(
            "dropped a message on %s (%s; %d %s so far)", subject, exc, count, reason
        )


def receive(
    log: logging.Logger,
    auth: MessageAuth,
    msg: Any,
    decode: Callable[[bytes], M],
) -> M | None:
    """Decode and authenticate a message for one run, or drop it.

    Args:
        log: Where a drop is logged (see `log_drop`).
        auth: Checks the signature against the run key.
        msg: The NATS message.
        decode: Parses the body into a message with a `key`.

    Returns:
        The message, or None if it was malformed or not authentic.
    """
    try:
        message = decode(msg.data)
        auth.check(msg.subject, msg.data, msg.headers, run=message.key)
    except (WireError, BadMessageError) as exc:
        log_drop(log, auth, msg.subject, exc)
        return None
    return message


class NatsDispatcher:
    """An executor whose workers are `styxcache worker` processes on NATS."""

    name = "nats"

    def __init__(
        self,
        settings: NatsSettings,
        *,
        connect_timeout: float = 10.0,
        check_every_seconds: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        auth: MessageAuth | None = None,
    ) -> None:
        """Connect to the server and listen for results.

        Args:
            settings: Server, credentials, TLS, signing key, subject prefix
                and the lost-run timeout.
            connect_timeout: Seconds to wait for the connection.
            check_every_seconds: How often silent runs are looked for.
            monotonic: Time source of the lost-run rule.
            auth: Message signer/checker (default: from `settings`).

        Raises:
            ImportError: Without the `nats` extra (`nats-py`).
            OSError: Without a signing key (unless the settings say
                `insecure_no_signing`), or if the server cannot be reached
                or refuses the credentials (the message never shows them).
        """
        try:
            import nats
        except ImportError as exc:
            raise ImportError(
                "executor 'nats' needs nats-py: pip install 'styxcache[nats]'"
            ) from exc
        self.settings = settings
        self.auth = auth if auth is not None else settings.message_auth()
        if not self.auth.enabled:
            _log.warning(
                "NATS messages are NOT signed (insecure_no_signing): anyone who"
                " can publish to %s can forge results and control this scheduler",
                settings.display_url,
            )
        self._secrets = settings.secrets()
        options = settings.connect_options()
        self._nats = nats
        self._monotonic = monotonic
        self._check_every = check_every_seconds
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._publishing: set[cf.Future[Any]] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="styxcache-nats", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._connect(options, connect_timeout), connect_timeout + 5)
        except BaseException as exc:
            self._stop_loop()
            why = redact(str(exc), self._secrets) or (
                f"{type(exc).__name__}: no answer within {connect_timeout:g}s"
            )
            raise OSError(
                f"cannot connect to NATS at {settings.display_url}: {why}"
            ) from None
        _log.info(
            "connected to NATS at %s (messages %s)",
            settings.display_url,
            "signed" if self.auth.enabled else "NOT signed",
        )

    def _call(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _log_error(self, exc: Exception) -> None:
        # nats-py's default handler logs a full traceback for every refused
        # retry, and its messages may carry the URL.
        _log.warning(
            "NATS: %s: %s", type(exc).__name__, redact(str(exc), self._secrets)
        )

    async def _connect(self, options: dict[str, Any], timeout: float) -> None:
        # wait_for cancels the attempt, which would otherwise retry forever.
        self._nc = await asyncio.wait_for(
            self._nats.connect(
                **options,
                connect_timeout=timeout,
                max_reconnect_attempts=-1,
                name=f"styxcache-scheduler-{self.settings.name}",
                error_cb=self._log_error,
            ),
            timeout,
        )
        prefix = self.settings.subject_prefix
        await self._nc.subscribe(f"{prefix}.results.>", cb=self._on_report)
        self._watchdog = asyncio.ensure_future(self._watch())

    async def _on_report(self, msg: Any) -> None:
        report = receive(_log, self.auth, msg, decode_report)
        if report is None:
            return
        with self._lock:
            pending = self._pending.get(report.key)
            if pending is None:
                return  # already settled (a late twin of a retried run)
            prefix = self.settings.subject_prefix
            if msg.subject != results_subject(prefix, pending.schedule):
                # Signed, but for another schedule: never settle with it.
                _log.warning(
                    "ignoring a report on %s for a run of %s",
                    msg.subject,
                    pending.schedule,
                )
                return
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

    async def _publish(self, subject: str, body: bytes, run: str) -> None:
        headers = self.auth.sign(subject, body, run=run)
        await self._nc.publish(subject, body, headers=headers or None)

    def submit(
        self, fn: Callable[[A], T], arg: A, /, on_done: DoneCallback | None = None
    ) -> cf.Future[T]:
        """Publish one run (or one goal/task of a publish entry).

        Args:
            fn: Must be `execute_run` (workers call it themselves).
            arg: The `RunRequest`.
            on_done: Called with the future once it is done.

        Returns:
            A future settled by the worker's result (or `RunLostError`); for
            a publish entry, settled once the server has the message.

        Raises:
            TypeError: For anything but `execute_run` of a `RunRequest`
                with a JSON fan-out item.
            RuntimeError: After `shutdown()`.
        """
        if fn is not execute_run or not isinstance(arg, RunRequest):
            raise TypeError("the NATS dispatcher only sends execute_run(RunRequest)")
        if isinstance(arg.target, PublishAction):
            return self._submit_publish(arg, arg.target, on_done)  # type: ignore[return-value]
        context = arg.context
        prefix = self.settings.subject_prefix
        body = encode_task(context)
        future: cf.Future[T] = new_future(on_done)
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._pending[context.key] = _Pending(
                future, context.schedule, context.attempt, self._monotonic()
            )
        subject = runs_subject(prefix, context.schedule)
        try:
            self._call(self._publish(subject, body, context.key))
        except Exception as exc:
            # Settled here, once: the watchdog must not settle it again.
            with self._lock:
                self._pending.pop(context.key, None)
            why = redact(str(exc), self._secrets)
            future.set_exception(RunLostError(f"publishing on {subject} failed: {why}"))
            return future
        _log.debug("published %s on %s", context.key, subject)
        return future

    def _submit_publish(
        self, request: RunRequest, action: PublishAction, on_done: DoneCallback | None
    ) -> cf.Future[RunOutcome]:
        context = request.context
        future: cf.Future[RunOutcome] = new_future(on_done)
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._publishing.add(future)
        message = action.message(
            schedule=context.schedule,
            run_key=context.key,
            nominal_time=context.nominal_time.isoformat(),
            item=context.item,
        )
        try:
            body = json.dumps(message, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            with self._lock:
                self._publishing.discard(future)
            future.set_result(
                RunOutcome(ok=False, error=f"TypeError: the message is not JSON: {exc}")
            )
            return future
        subject = publish_subject(self.settings.subject_prefix, action.dispatch_type)
        started = time.monotonic()

        async def send() -> None:
            await self._publish(subject, body, context.key)
            await self._nc.flush(timeout=10)

        def settle(done: cf.Future[None]) -> None:
            with self._lock:
                self._publishing.discard(future)
            exc = done.exception()
            if exc is not None:
                why = redact(f"{type(exc).__name__}: {exc}", self._secrets)
                future.set_exception(
                    RunLostError(f"publishing on {subject} failed: {why}")
                )
                return
            _log.info(
                "%s: published %s %s on %s",
                context.schedule,
                action.dispatch_type,
                message.get("goal_id") or message.get("task_id"),
                subject,
            )
            future.set_result(
                RunOutcome(ok=True, duration_s=time.monotonic() - started)
            )

        asyncio.run_coroutine_threadsafe(send(), self._loop).add_done_callback(settle)
        return future

    def serve_control(self, name: str, handler: ControlHandler) -> None:
        """Answer requests for the scheduler `name` with `handler`.

        Subscribes `<prefix>.control.<name>` (commands), `<prefix>.scheduler.<name>`
        (health checks: the command defaults to `status`) and the
        `<prefix>.control.reload` broadcast (always `reload`). Requests must
        be signed; replies are signed for the inbox they go to. The handler
        runs in a thread of its own (a reload reads files).

        Args:
            name: The scheduler's name.
            handler: `handler(request) -> reply`.
        """
        prefix = self.settings.subject_prefix

        def answerer(default: str | None, forced: str | None) -> Any:
            async def answer(msg: Any) -> None:
                try:
                    self.auth.check(msg.subject, msg.data, msg.headers, run="")
                except BadMessageError as exc:
                    log_drop(_log, self.auth, msg.subject, exc)
                    return
                try:
                    request = json.loads(msg.data or b"{}")
                    if not isinstance(request, dict):
                        raise ValueError("expected a JSON object")
                    if forced is not None:
                        request["command"] = forced
                    elif default is not None:
                        request.setdefault("command", default)
                    reply = dict(await asyncio.to_thread(handler, request))
                    if request.get("command") == "status":
                        reply["name"] = name
                        reply["dropped"] = self.auth.counts()
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if msg.reply:
                    body = json.dumps(reply, default=str).encode()
                    await self._publish(msg.reply, body, "")

            return answer

        subjects = (
            (control_subject(prefix, name), None, None),
            (health_subject(prefix, name), "status", None),
            (reload_subject(prefix), None, "reload"),
        )
        for subject, default, forced in subjects:
            self._call(self._nc.subscribe(subject, cb=answerer(default, forced)))
        self._call(self._nc.flush(timeout=10))
        _log.info("answering on %s", ", ".join(subject for subject, _, _ in subjects))

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
            publishing = list(self._publishing)
        # Messages handed to the loop are always flushed before it stops.
        cf.wait(publishing, timeout=15)
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
            _log.warning(
                "closing the NATS connection failed: %s",
                redact(str(exc), self._secrets),
            )
        self._stop_loop()

    async def _close(self) -> None:
        self._watchdog.cancel()
        await self._nc.drain()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
