"""The JSON messages between a scheduler and its NATS workers.

Subjects (prefix `styxcache` by default):

* `<prefix>.tasks.<schedule>`: one message per run to do (`encode_task`).
  Workers subscribe in a queue group, so each message reaches one worker.
* `<prefix>.results.<schedule>`: a worker's word about a run
  (`encode_report`): `accepted` on receipt, `heartbeat` while it holds the
  run, `result` with the outcome at the end.
* `<prefix>.control.<name>`: requests to one scheduler (status, reload).

Every message carries `v` (the format version); a reader rejects versions
it does not know rather than guessing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from styxcache.scheduler.runner_spec import RunnerSpec
from styxcache.scheduler.runs import RunContext, RunOutcome, RunRequest

__all__ = [
    "VERSION",
    "WireError",
    "decode_report",
    "decode_task",
    "encode_report",
    "encode_task",
    "results_subject",
    "tasks_subject",
]

VERSION = 1
"""Message format version."""

REPORT_KINDS = ("accepted", "heartbeat", "result")


class WireError(ValueError):
    """A message that is not a valid styxcache task or report."""


def tasks_subject(prefix: str, schedule: str) -> str:
    """Return the subject a schedule's runs are published to.

    Args:
        prefix: Subject prefix.
        schedule: Schedule name (dots in it become `_`: a dot separates
            subject tokens).

    Returns:
        `<prefix>.tasks.<schedule>`.
    """
    return f"{prefix}.tasks.{schedule.replace('.', '_')}"


def results_subject(prefix: str, schedule: str) -> str:
    """Return the subject a schedule's outcomes come back on.

    Args:
        prefix: Subject prefix.
        schedule: Schedule name.

    Returns:
        `<prefix>.results.<schedule>`.
    """
    return f"{prefix}.results.{schedule.replace('.', '_')}"


def encode_task(request: RunRequest, reply_to: str) -> bytes:
    """Serialise one run for a worker.

    Args:
        request: The run; its target must be a `module:function` string.
        reply_to: Subject the worker reports on.

    Returns:
        UTF-8 JSON.

    Raises:
        TypeError: For a callable target or an item that is not JSON.
    """
    if not isinstance(request.target, str):
        raise TypeError(
            "NATS workers import their target by name: give the entry's target"
            f" as 'module:function', not {request.target!r}"
        )
    ctx = request.context
    message = {
        "v": VERSION,
        "key": ctx.key,
        "schedule": ctx.schedule,
        "nominal_time": ctx.nominal_time.isoformat(),
        "item": ctx.item,
        "item_key": ctx.item_key,
        "cache": ctx.cache,
        "attempt": ctx.attempt,
        "target": request.target,
        "pass_context": request.pass_context,
        "runner": request.runner.as_dict() if request.runner is not None else None,
        "reply_to": reply_to,
    }
    try:
        return json.dumps(message).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"run {ctx.key}: the fan-out item must be JSON for NATS: {exc}"
        ) from None


def _load(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError(f"expected a JSON object, got {type(message).__name__}")
    if message.get("v") != VERSION:
        raise WireError(f"unknown message version {message.get('v')!r}")
    return message


def decode_task(data: bytes) -> tuple[RunRequest, str]:
    """Read a task message.

    Args:
        data: The message body.

    Returns:
        The run request and the subject to report on.

    Raises:
        WireError: If the message is malformed.
    """
    message = _load(data)
    try:
        runner = message.get("runner")
        context = RunContext(
            schedule=str(message["schedule"]),
            key=str(message["key"]),
            nominal_time=dt.datetime.fromisoformat(message["nominal_time"]),
            item=dict(message.get("item") or {}),
            item_key=str(message.get("item_key", "")),
            cache=str(message.get("cache", "normal")),
            attempt=int(message.get("attempt", 1)),
        )
        request = RunRequest(
            target=str(message["target"]),
            context=context,
            pass_context=bool(message.get("pass_context", True)),
            runner=RunnerSpec.from_mapping(runner) if runner is not None else None,
        )
        return request, str(message["reply_to"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"bad task message: {type(exc).__name__}: {exc}") from None


def encode_report(
    kind: str,
    key: str,
    attempt: int,
    worker: str,
    outcome: RunOutcome | None = None,
) -> bytes:
    """Serialise a worker's word about a run.

    Args:
        kind: `accepted`, `heartbeat` or `result`.
        key: Run key.
        attempt: The attempt the worker is working on.
        worker: `host:pid` of the worker.
        outcome: The outcome (for `result`).

    Returns:
        UTF-8 JSON.
    """
    message: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "key": key,
        "attempt": attempt,
        "worker": worker,
    }
    if outcome is not None:
        message["outcome"] = dataclasses.asdict(outcome)
    return json.dumps(message).encode()


@dataclasses.dataclass(frozen=True)
class Report:
    """A decoded worker report.

    Attributes:
        kind: `accepted`, `heartbeat` or `result`.
        key: Run key.
        attempt: Attempt number.
        worker: `host:pid`.
        outcome: The outcome of a `result`.
    """

    kind: str
    key: str
    attempt: int
    worker: str
    outcome: RunOutcome | None = None


def decode_report(data: bytes) -> Report:
    """Read a worker report.

    Args:
        data: The message body.

    Returns:
        The report.

    Raises:
        WireError: If the message is malformed.
    """
    message = _load(data)
    kind = message.get("kind")
    if kind not in REPORT_KINDS:
        raise WireError(f"unknown report kind {kind!r}")
    outcome = None
    if kind == "result":
        raw = message.get("outcome")
        if not isinstance(raw, dict):
            raise WireError("a result report needs an outcome object")
        names = {f.name for f in dataclasses.fields(RunOutcome)}
        try:
            outcome = RunOutcome(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise WireError(f"bad outcome: {exc}") from None
    try:
        return Report(
            kind=str(kind),
            key=str(message["key"]),
            attempt=int(message.get("attempt", 1)),
            worker=str(message.get("worker", "")),
            outcome=outcome,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"bad report: {type(exc).__name__}: {exc}") from None
