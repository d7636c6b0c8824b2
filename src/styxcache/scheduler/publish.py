"""Publish entries: a timer that hands a goal or a task to *other* services.

Seeds 002/003 describe a scheduler that, when an entry fires, publishes an
orchestrator goal to `<prefix>.goals.incoming` or a task message to
`<prefix>.tasks.incoming` for whatever service consumes those subjects. An
entry says so with `dispatch_type: goal` and a `goal_config:` (or
`dispatch_type: task` and a `task_config:`) instead of a `target:`::

    schedules:
      - name: morning-brief
        cron: "0 7 * * *"
        dispatch_type: goal
        goal_config:
          instruction: "Summarise yesterday's sessions"
          context: {source: scheduler}
          priority: normal
      - name: per-session-digest
        interval_seconds: 3600
        dispatch_type: task
        task_config:
          worker_type: summarizer
          payload: {style: short}
        expand_from: myapp.sessions.active   # [{"session_id": "s1"}, ...]

With `expand_from`, one message is published per returned dict, the dict
merged over the goal's `context` (goals) or the task's `payload` (tasks):
keys of the dict win. Each message is one run in the ledger (the fan-out
item's run), so catch-up, overlap and history work as for any entry.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal, get_args

from styxcache.errors import PublishConfigError
from styxcache.scheduler.config_errors import unknown_keys

__all__ = [
    "DISPATCH_TYPES",
    "GOAL_KEYS",
    "TASK_KEYS",
    "DispatchType",
    "PublishAction",
    "PublishConfigError",
    "publish_overrides",
    "publish_subject",
]

PUBLISH_KEYS = frozenset({"dispatch_type", "goal_config", "task_config"})
"""Entry keys of publish entries."""

DispatchType = Literal["goal", "task"]
"""What a publish entry sends: a goal or a task."""
DISPATCH_TYPES: tuple[str, ...] = get_args(DispatchType)
GOAL_KEYS = frozenset({"instruction", "context", "priority", "metadata"})
"""Keys of a `goal_config:` mapping."""
TASK_KEYS = frozenset({"worker_type", "payload", "model_tier", "priority", "metadata"})
"""Keys of a `task_config:` mapping."""

# Message ids derive from run keys: a retried or re-published run carries the
# same id, so a consumer can drop duplicates.
_ID_NAMESPACE = uuid.UUID("5f0b8e53-8f1e-4d7c-9a55-6b0c3f1f2a11")


def publish_subject(prefix: str, dispatch_type: str) -> str:
    """Return where a goal or task is published.

    Args:
        prefix: Subject prefix.
        dispatch_type: `goal` or `task`.

    Returns:
        `<prefix>.goals.incoming` or `<prefix>.tasks.incoming`.
    """
    return f"{prefix}.{dispatch_type}s.incoming"


def _jsonable(value: Any, field: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishConfigError(f"must be plain JSON data: {exc}", field) from None


@dataclasses.dataclass(frozen=True)
class PublishAction:
    """What one publish entry sends; stands where a target would be.

    It is data, not code: the scheduler hands it to the NATS dispatcher,
    which builds and publishes the message. Calling it is an error.

    Attributes:
        dispatch_type: `goal` or `task`.
        config: The entry's `goal_config` or `task_config` (JSON text, so the
            action stays hashable and immutable).
    """

    dispatch_type: DispatchType
    config_json: str

    @classmethod
    def from_entry(
        cls,
        dispatch_type: Any,
        goal_config: Any,
        task_config: Any,
    ) -> PublishAction:
        """Validate the publish keys of an entry.

        Args:
            dispatch_type: `goal` or `task`.
            goal_config: Mapping for goals (None otherwise).
            task_config: Mapping for tasks (None otherwise).

        Returns:
            The action.

        Raises:
            PublishConfigError: Naming the offending key.
        """
        if dispatch_type not in DISPATCH_TYPES:
            raise PublishConfigError(
                f"must be {' or '.join(DISPATCH_TYPES)}; got {dispatch_type!r}",
                "dispatch_type",
            )
        name = f"{dispatch_type}_config"
        other = "task_config" if dispatch_type == "goal" else "goal_config"
        if (task_config if dispatch_type == "goal" else goal_config) is not None:
            raise PublishConfigError(
                f"does not go with dispatch_type: {dispatch_type} (use {name})", other
            )
        config = goal_config if dispatch_type == "goal" else task_config
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise PublishConfigError(
                f"must be a mapping, got {type(config).__name__}", name
            )
        allowed = GOAL_KEYS if dispatch_type == "goal" else TASK_KEYS
        unknown = unknown_keys(config, allowed, name)
        if unknown:
            raise PublishConfigError(*unknown)
        merged_into = "context" if dispatch_type == "goal" else "payload"
        for key in (merged_into, "metadata"):
            if key in config and not isinstance(config[key], Mapping):
                raise PublishConfigError(
                    f"must be a mapping, got {config[key]!r}", f"{name}.{key}"
                )
        text_keys = (
            ("instruction", "priority")
            if dispatch_type == "goal"
            else (
                "worker_type",
                "model_tier",
                "priority",
            )
        )
        for key in text_keys:
            if key in config and not isinstance(config[key], str):
                raise PublishConfigError(
                    f"must be a string, got {config[key]!r}", f"{name}.{key}"
                )
        if dispatch_type == "task" and not config.get("worker_type"):
            raise PublishConfigError(
                "is required: the service that should take the task",
                "task_config.worker_type",
            )
        _jsonable(dict(config), name)
        kind: DispatchType = "goal" if dispatch_type == "goal" else "task"
        return cls(kind, json.dumps(dict(config), sort_keys=True))

    @property
    def config(self) -> dict[str, Any]:
        """The entry's goal or task settings (a fresh copy)."""
        value: dict[str, Any] = json.loads(self.config_json)
        return value

    def __str__(self) -> str:
        """Name the action for listings (`publish goal`, `publish task summarizer`)."""
        if self.dispatch_type == "task":
            return f"publish task {self.config['worker_type']}"
        return "publish goal"

    def __call__(self, *_args: Any) -> None:
        """Refuse to run: a publish entry runs nowhere but on NATS.

        Raises:
            TypeError: Always.
        """
        raise TypeError(
            f"a dispatch_type: {self.dispatch_type} entry publishes to NATS; it"
            " needs the 'nats' executor, not a local one"
        )

    def message(
        self,
        *,
        schedule: str,
        run_key: str,
        nominal_time: str,
        item: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Build the goal or task message of one run.

        Args:
            schedule: Entry name (`metadata.scheduled_by`).
            run_key: The run's key (source of the message id).
            nominal_time: ISO fire time.
            item: The `expand_from` context dict (empty without fan-out),
                merged over the goal's `context` or the task's `payload`.

        Returns:
            The JSON-able message.
        """
        config = self.config
        metadata = {
            **config.get("metadata", {}),
            "scheduled_by": schedule,
            "run_key": run_key,
            "nominal_time": nominal_time,
        }
        message_id = str(uuid.uuid5(_ID_NAMESPACE, run_key))
        if self.dispatch_type == "goal":
            return {
                "goal_id": message_id,
                "instruction": config.get("instruction", ""),
                "context": {**config.get("context", {}), **item},
                "priority": config.get("priority", "normal"),
                "metadata": metadata,
            }
        return {
            "task_id": message_id,
            "worker_type": config["worker_type"],
            "payload": {**config.get("payload", {}), **item},
            "model_tier": config.get("model_tier", "local"),
            "priority": config.get("priority", "normal"),
            "metadata": metadata,
        }


def publish_overrides(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """Validate an entry's publish keys; say what they imply for the entry.

    Args:
        raw: The entry mapping.

    Returns:
        None for an ordinary entry; else `target` (the `PublishAction`),
        `executor` (`nats`) and `runner` (None: publishing runs no tool).

    Raises:
        PublishConfigError: Naming the offending key.
    """
    if not PUBLISH_KEYS & set(raw):
        return None
    if "dispatch_type" not in raw:
        given = sorted(PUBLISH_KEYS & set(raw))[0]
        raise PublishConfigError("needs dispatch_type: goal or task", given)
    if raw.get("target") is not None:
        raise PublishConfigError(
            "a dispatch_type entry publishes a message; it has no target", "target"
        )
    executor = raw.get("executor")
    if executor is not None and executor != "nats":
        raise PublishConfigError(
            f"a dispatch_type entry publishes on NATS; got executor {executor!r}",
            "executor",
        )
    if raw.get("dispatch") not in (None, "nats"):
        raise PublishConfigError(
            f"a dispatch_type entry publishes on NATS; got {raw.get('dispatch')!r}",
            "dispatch",
        )
    action = PublishAction.from_entry(
        raw.get("dispatch_type"), raw.get("goal_config"), raw.get("task_config")
    )
    return {"target": action, "executor": "nats", "runner": None}
