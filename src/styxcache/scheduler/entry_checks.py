"""Checks of single entry fields: each returns the value or raises `ConfigError`.

They share one convention: `raw` is the entry mapping (or a section of the
file), `key` the key checked, `entry` the entry's name for the error, and
`default` the value of an absent key. `entry_build.build_entry` runs them
through a `Collector`, so that one bad file reports every bad field at once.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_args

from styxcache.modes import CacheMode
from styxcache.scheduler.config_errors import ConfigError
from styxcache.scheduler.entry import check_executor_kind
from styxcache.scheduler.refs import REF_PATTERN, resolve_callable
from styxcache.scheduler.runner_spec import RunnerSpec, RunnerSpecError
from styxcache.scheduler.triggers import (
    CronTrigger,
    IntervalTrigger,
    NextFireMemo,
    Trigger,
    TriggerError,
    load_zone,
)

__all__ = [
    "FAILED",
    "Collector",
    "anchor",
    "cache_mode",
    "check_ref",
    "choice",
    "entry_executor",
    "entry_runner",
    "integer",
    "is_no_runner",
    "names",
    "number",
    "publish",
    "trigger",
]

FAILED: Any = object()
"""What `Collector.check` returns for a check that failed."""

# `runner: none` (or off/false) opts an entry or file out of the cache.
_NO_RUNNER = ("none", "off", False)
_DISPATCH = ("local", "nats")
_CACHE_MODES = ", ".join(mode.value for mode in CacheMode)


class Collector:
    """Runs checks and keeps every `ConfigError` instead of stopping at one."""

    def __init__(self, *, collect: bool = True) -> None:
        """Start with no errors.

        Args:
            collect: False stops at the first error (a cheap first pass).
        """
        self.errors: list[ConfigError] = []
        self.collect = collect

    def check(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn`; on a `ConfigError`, keep it and return `FAILED`.

        Args:
            fn: The check.
            *args: Its arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What `fn` returned, or `FAILED`.
        """
        if not self.collect:
            # First pass: stop at the first error (registering thousands of
            # valid entries stays cheap); the caller reruns collecting all.
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            self.errors.append(exc)
            return FAILED


def names(keys: list[str]) -> str:
    """Quote and join key names for an error message."""
    return ", ".join(map(repr, keys))


def is_no_runner(value: Any) -> bool:
    """Say whether a `runner:` value is the explicit opt-out of the cache."""
    return value is None or (isinstance(value, (str, bool)) and value in _NO_RUNNER)


def number(
    raw: Mapping[str, Any],
    key: str,
    entry: str,
    default: float,
    *,
    minimum: float = 0.0,
) -> float:
    """A finite number no less than `minimum`."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number, got {value!r}", entry=entry, field=key)
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(
            f"must be a finite number >= {minimum:g}, got {value!r}",
            entry=entry,
            field=key,
        )
    return float(value)


def integer(
    raw: Mapping[str, Any], key: str, entry: str, default: int, *, minimum: int = 1
) -> int:
    """A whole number no less than `minimum`."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"must be a whole number >= {minimum}, got {value!r}",
            entry=entry,
            field=key,
        )
    return value


def choice(
    raw: Mapping[str, Any], key: str, entry: str, default: str, allowed: Any
) -> str:
    """One of the values of a `Literal` type."""
    choices = get_args(allowed)
    value = raw.get(key, default)
    if value not in choices:
        raise ConfigError(
            f"must be one of {', '.join(choices)}; got {value!r}",
            entry=entry,
            field=key,
        )
    return str(value)


def anchor(raw: Mapping[str, Any], entry: str) -> float:
    """The `anchor:` of an interval entry, as Unix seconds."""
    value = raw.get("anchor", 0.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"not an ISO datetime: {value!r}", entry=entry, field="anchor"
            ) from None
    if not isinstance(value, dt.datetime):
        raise ConfigError(
            f"must be an ISO datetime or Unix seconds, got {value!r}",
            entry=entry,
            field="anchor",
        )
    if value.tzinfo is None:
        raise ConfigError(
            "needs a UTC offset (e.g. 2024-01-01T00:00:00+00:00)",
            entry=entry,
            field="anchor",
        )
    return value.timestamp()


def _one_schedule(raw: Mapping[str, Any], entry: str) -> None:
    present = [
        k for k in ("trigger", "cron", "interval_seconds") if raw.get(k) is not None
    ]
    if len(present) != 1:
        what = "neither" if not present else "both " + " and ".join(present)
        raise ConfigError(
            f"give exactly one of 'cron' or 'interval_seconds' ({what} given)",
            entry=entry,
            field="cron",
        )


def _timezone(raw: Mapping[str, Any], entry: str) -> str:
    timezone = raw.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ConfigError(
            f"must be an IANA name such as 'Europe/Berlin', got {timezone!r}",
            entry=entry,
            field="timezone",
        )
    try:
        load_zone(timezone)
    except TriggerError as exc:
        raise ConfigError(str(exc), entry=entry, field="timezone") from None
    return timezone


def trigger(
    raw: Mapping[str, Any], entry: str, memo: NextFireMemo | None = None
) -> Trigger:
    """The entry's trigger: a given one, a cron (sharing `memo`) or an interval."""
    _one_schedule(raw, entry)
    timezone = _timezone(raw, entry)
    interval = raw.get("interval_seconds")
    if "anchor" in raw and interval is None:
        raise ConfigError(
            "only applies to interval_seconds entries", entry=entry, field="anchor"
        )
    given = raw.get("trigger")
    if given is not None:
        if not isinstance(given, Trigger):
            raise ConfigError(f"not a Trigger: {given!r}", entry=entry, field="trigger")
        return given
    cron = raw.get("cron")
    if cron is not None:
        try:
            return CronTrigger(cron, timezone, memo=memo)
        except TriggerError as exc:
            field = "timezone" if "time zone" in str(exc) else "cron"
            raise ConfigError(str(exc), entry=entry, field=field) from None
    start = anchor(raw, entry)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise ConfigError(
            f"must be a number of seconds, got {interval!r}",
            entry=entry,
            field="interval_seconds",
        )
    try:
        return IntervalTrigger(interval, start)
    except TriggerError as exc:
        raise ConfigError(str(exc), entry=entry, field="interval_seconds") from None


def entry_executor(raw: Mapping[str, Any], entry: str) -> Any:
    """The entry's `executor:` (or `dispatch: nats`), None for the file's."""
    executor = raw.get("executor")
    dispatch = raw.get("dispatch")
    if dispatch is not None:
        # `dispatch: nats` is the spelling of `executor: nats`.
        if dispatch not in _DISPATCH:
            raise ConfigError(
                f"must be {' or '.join(_DISPATCH)}; got {dispatch!r}",
                entry=entry,
                field="dispatch",
            )
        if dispatch == "nats":
            if executor is not None and executor != "nats":
                raise ConfigError(
                    f"dispatch: nats conflicts with executor {executor!r}",
                    entry=entry,
                    field="dispatch",
                )
            return "nats"
    if executor is None:
        return None
    if isinstance(executor, str):
        try:
            check_executor_kind(executor)
        except ValueError as exc:
            raise ConfigError(str(exc), entry=entry, field="executor") from None
        return executor
    if not callable(getattr(executor, "submit", None)):
        raise ConfigError(
            f"must be a kind name or an object with submit(), got {executor!r}",
            entry=entry,
            field="executor",
        )
    return executor


def entry_runner(
    raw: Mapping[str, Any],
    entry: str,
    base_dir: Path | None,
    default: RunnerSpec | None,
) -> tuple[RunnerSpec | None, bool]:
    """The entry's runner spec, and whether it is the file's default."""
    if "runner" not in raw:
        return default, default is not None
    value = raw["runner"]
    if is_no_runner(value):
        return None, False  # the explicit opt-out: no cache
    if isinstance(value, RunnerSpec):
        return value, False
    try:
        return RunnerSpec.from_mapping(value, base_dir), False
    except RunnerSpecError as exc:
        raise ConfigError(str(exc), entry=entry, field=exc.field) from None


def publish(raw: Mapping[str, Any], entry: str) -> dict[str, Any] | None:
    """What seeds 002/003's publish keys (`dispatch_type`) imply, if present."""
    from styxcache.scheduler.publish import PublishConfigError, publish_overrides

    try:
        return publish_overrides(raw)
    except PublishConfigError as exc:
        raise ConfigError(str(exc), entry=entry, field=exc.field) from None


def check_ref(ref: Any, entry: str, key: str, resolve: bool) -> None:
    """Check a `module:function` reference, importing it when `resolve`."""
    if not callable(ref) and not (isinstance(ref, str) and REF_PATTERN.match(ref)):
        raise ConfigError(
            f"expected 'module:function', got {ref!r}", entry=entry, field=key
        )
    if resolve:
        try:
            resolve_callable(ref)
        except ValueError as exc:
            raise ConfigError(str(exc), entry=entry, field=key) from None


def cache_mode(raw: Mapping[str, Any], entry: str) -> CacheMode:
    """The entry's `cache:` mode."""
    value = raw.get("cache", "normal")
    try:
        return CacheMode(value)
    except ValueError:
        raise ConfigError(
            f"must be one of {_CACHE_MODES}; got {value!r}",
            entry=entry,
            field="cache",
        ) from None
