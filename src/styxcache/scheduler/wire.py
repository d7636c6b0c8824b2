"""The JSON messages between a scheduler and its NATS workers.

Subjects (prefix `styxcache` by default):

* `<prefix>.runs.<schedule>`: one message per run to do (`encode_task`).
  Workers subscribe in a queue group, so each message reaches one worker.
* `<prefix>.results.<schedule>`: a worker's word about a run
  (`encode_report`): `accepted` on receipt, `heartbeat` while it holds the
  run, `result` with the outcome at the end.
* `<prefix>.control.<name>`: commands to one scheduler (status, reload);
  `<prefix>.control.reload`: a reload broadcast to every scheduler;
  `<prefix>.scheduler.<name>`: health checks.
* `<prefix>.goals.incoming` / `<prefix>.tasks.incoming`: what publish
  entries send to other services (`styxcache.scheduler.publish`).

A task message names the schedule entry and carries data only (the item,
the nominal time, the attempt): never a code reference. A worker runs the
entry of that name from its *own* schedule file or allowlist, or nothing.
Every message carries `v` (the format version); a reader rejects versions
it does not know rather than guessing. Authentication (HMAC headers) is
`styxcache.scheduler.signing`'s business.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, Literal, get_args

from styxcache.errors import WireError
from styxcache.modes import CacheMode
from styxcache.scheduler.runs import RunContext, RunOutcome

__all__ = [
    "REPORT_KINDS",
    "VERSION",
    "Report",
    "ReportKind",
    "TaskMessage",
    "WireError",
    "control_subject",
    "decode_report",
    "decode_task",
    "encode_report",
    "encode_task",
    "health_subject",
    "reload_subject",
    "results_subject",
    "runs_subject",
]

VERSION = 2
"""Message format version (1 carried a target to import: no longer read)."""

ReportKind = Literal["accepted", "heartbeat", "result"]
"""What a worker says about a run."""
REPORT_KINDS: tuple[str, ...] = get_args(ReportKind)
_CACHE_MODES = frozenset(mode.value for mode in CacheMode)


def _token(schedule: str) -> str:
    # A dot separates subject tokens.
    return schedule.replace(".", "_")


def runs_subject(prefix: str, schedule: str) -> str:
    """Return the subject a schedule's runs are published to.

    Args:
        prefix: Subject prefix.
        schedule: Schedule name (dots in it become `_`).

    Returns:
        `<prefix>.runs.<schedule>`.
    """
    return f"{prefix}.runs.{_token(schedule)}"


def results_subject(prefix: str, schedule: str) -> str:
    """Return the subject a schedule's outcomes come back on.

    Args:
        prefix: Subject prefix.
        schedule: Schedule name.

    Returns:
        `<prefix>.results.<schedule>`.
    """
    return f"{prefix}.results.{_token(schedule)}"


def control_subject(prefix: str, name: str) -> str:
    """Return the command subject of one scheduler (`<prefix>.control.<name>`)."""
    return f"{prefix}.control.{name}"


def reload_subject(prefix: str) -> str:
    """Return the reload broadcast subject (`<prefix>.control.reload`)."""
    return f"{prefix}.control.reload"


def health_subject(prefix: str, name: str) -> str:
    """Return a scheduler's health-check subject (`<prefix>.scheduler.<name>`)."""
    return f"{prefix}.scheduler.{name}"


@dataclasses.dataclass(frozen=True)
class TaskMessage:
    """A decoded task: which entry to run, and its data.

    Attributes:
        schedule: Entry name; the worker looks it up in its own registry.
        key: Run key.
        nominal_time: The fire instant (aware).
        item: The fan-out context dict.
        item_key: The item's key.
        cache: Cache mode: normal, refresh or bypass.
        attempt: Attempt number.
    """

    schedule: str
    key: str
    nominal_time: dt.datetime
    item: dict[str, Any]
    item_key: str = ""
    cache: str = "normal"
    attempt: int = 1

    def context(self) -> RunContext:
        """Return the `RunContext` the worker's target receives."""
        return RunContext(
            schedule=self.schedule,
            key=self.key,
            nominal_time=self.nominal_time,
            item=dict(self.item),
            item_key=self.item_key,
            cache=self.cache,
            attempt=self.attempt,
        )


def encode_task(context: RunContext) -> bytes:
    """Serialise one run for a worker: the entry name and the run's data.

    Args:
        context: The run's context.

    Returns:
        UTF-8 JSON.

    Raises:
        TypeError: For an item that is not JSON.
    """
    message = {
        "v": VERSION,
        "key": context.key,
        "schedule": context.schedule,
        "nominal_time": context.nominal_time.isoformat(),
        "item": context.item,
        "item_key": context.item_key,
        "cache": context.cache,
        "attempt": context.attempt,
    }
    try:
        return json.dumps(message, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"run {context.key}: the fan-out item must be JSON for NATS: {exc}"
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


def decode_task(data: bytes) -> TaskMessage:
    """Read a task message.

    Args:
        data: The message body.

    Returns:
        The task. Keys other than the data fields (a `target` of the old
        format, say) are ignored: a task never names code.

    Raises:
        WireError: If the message is malformed.
    """
    message = _load(data)
    try:
        item = message.get("item") or {}
        if not isinstance(item, dict):
            raise TypeError(f"item must be an object, got {type(item).__name__}")
        nominal = dt.datetime.fromisoformat(message["nominal_time"])
        if nominal.tzinfo is None:
            raise ValueError("nominal_time needs a UTC offset")
        cache = str(message.get("cache", "normal"))
        if cache not in _CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}")
        attempt = message.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"bad attempt {attempt!r}")
        return TaskMessage(
            schedule=str(message["schedule"]),
            key=str(message["key"]),
            nominal_time=nominal,
            item=item,
            item_key=str(message.get("item_key", "")),
            cache=cache,
            attempt=attempt,
        )
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
