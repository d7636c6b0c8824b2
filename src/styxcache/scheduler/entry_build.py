"""Build a `ScheduleEntry` from the keys of one entry, reporting every bad field."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from styxcache.scheduler import entry_checks as checks
from styxcache.scheduler.config_errors import ConfigError, fail, raise_all
from styxcache.scheduler.config_keys import entry_keys
from styxcache.scheduler.entry import Catchup, Overlap, ScheduleEntry, new_entry
from styxcache.scheduler.runner_spec import RunnerSpec
from styxcache.scheduler.triggers import NextFireMemo

__all__ = ["EntryOptions", "build_entry"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class EntryOptions:
    """How to build the entries of one file (or one `register_task` call).

    Attributes:
        label: How to name the entry in errors if it has no valid name.
        resolve: Import `module:function` references now, to fail early.
        pass_context: Whether the target receives a `RunContext`.
        base_dir: Folder relative `runner:` paths are resolved against.
        default_runner: The cache of an entry without `runner:`.
        memo: Next-fire answers shared by the cron triggers built with it.
    """

    label: str | None = None
    resolve: bool = True
    pass_context: bool = True
    base_dir: Path | None = None
    default_runner: RunnerSpec | None = None
    memo: NextFireMemo | None = None


def build_entry(
    raw: Mapping[str, Any],
    *,
    label: str | None = None,
    resolve: bool = True,
    pass_context: bool = True,
    base_dir: Path | None = None,
    default_runner: RunnerSpec | None = None,
    memo: NextFireMemo | None = None,
) -> ScheduleEntry:
    """Validate one entry mapping, reporting every bad field at once.

    Args:
        raw: The entry's keys (see `config_keys.ENTRY_FIELDS`); `cron` may
            also be given as a `Trigger` under the key `trigger`.
        label: How to name the entry in errors if it has no valid name.
        resolve: Import `module:function` references now, to fail early.
        pass_context: Whether the target receives a `RunContext`.
        base_dir: Folder relative `runner:` paths are resolved against.
        default_runner: The cache of an entry without `runner:` (the file's
            default); `runner: none` opts out.
        memo: Next-fire answers to share with other entries' cron triggers
            (a herd of entries with one expression then costs one
            computation per fire); None gives the trigger its own.

    Returns:
        The entry.

    Raises:
        ConfigError: On any unknown key or invalid value (`ConfigErrors`,
            with `errors` listing each, when there are several).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", entry=label)
    options = EntryOptions(label, resolve, pass_context, base_dir, default_runner, memo)
    try:
        return _build(raw, options, checks.Collector(collect=False))
    except ConfigError:
        return _build(raw, options, checks.Collector(collect=True))


def _build(
    raw: Mapping[str, Any], options: EntryOptions, got: checks.Collector
) -> ScheduleEntry:
    entry = _name(raw, options.label, got)
    known = entry_keys()
    for key in sorted(set(raw) - known - {"trigger"}):
        got.check(
            fail,
            f"unknown key {key!r}; allowed: {checks.names(sorted(known))}",
            entry,
            key,
        )
    trigger = got.check(checks.trigger, raw, entry, options.memo)
    publish, target = _target(raw, entry, options, got)
    cache = got.check(checks.cache_mode, raw, entry)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        got.check(fail, f"must be true or false, got {enabled!r}", entry, "enabled")
    work = _placement(raw, entry, options, got, publish, target)
    timing = _timing(raw, entry, got)
    raise_all(got.errors)
    return new_entry(
        name=entry,
        trigger=trigger,
        cache=cache,
        enabled=enabled,
        pass_context=options.pass_context,
        **work,
        **timing,
    )


def _name(raw: Mapping[str, Any], label: str | None, got: checks.Collector) -> str:
    name = raw.get("name")
    if isinstance(name, str) and _NAME.match(name):
        return name
    entry = label if label is not None else repr(name)
    got.check(
        fail,
        f"name must be letters, digits, '_', '.', '-' (got {name!r})",
        entry,
        "name",
    )
    return entry


def _target(
    raw: Mapping[str, Any], entry: str, options: EntryOptions, got: checks.Collector
) -> tuple[dict[str, Any] | None, Any]:
    """The publish keys' meaning (if any) and what runs."""
    publish = got.check(checks.publish, raw, entry)
    if publish is checks.FAILED:
        publish = None
    target = raw.get("target") if publish is None else publish["target"]
    refs = [("expand_from", raw.get("expand_from"))]
    if publish is None:
        refs.insert(0, ("target", target))
    for key, ref in refs:
        if ref is not None:
            got.check(checks.check_ref, ref, entry, key, options.resolve)
    if target is None:
        got.check(fail, "is required ('module:function')", entry, "target")
    return publish, target


def _placement(
    raw: Mapping[str, Any],
    entry: str,
    options: EntryOptions,
    got: checks.Collector,
    publish: dict[str, Any] | None,
    target: Any,
) -> dict[str, Any]:
    """Where the runs go and through which cache."""
    executor = got.check(checks.entry_executor, raw, entry)
    runner, runner_is_default = None, False
    if publish is not None:
        executor = publish["executor"]
    else:
        if executor == "nats" and not isinstance(target, str):
            got.check(
                fail,
                "NATS workers import their target by name: give 'module:function',"
                f" not {target!r}",
                entry,
                "target",
            )
        chosen = got.check(
            checks.entry_runner, raw, entry, options.base_dir, options.default_runner
        )
        if chosen is not checks.FAILED:
            runner, runner_is_default = chosen
    return {
        "target": target,
        "expand_from": raw.get("expand_from"),
        "executor": executor,
        "runner": runner,
        "runner_is_default": runner_is_default,
    }


def _timing(
    raw: Mapping[str, Any], entry: str, got: checks.Collector
) -> dict[str, Any]:
    """Retries, catch-up, overlap, jitter, grace and fan-out."""
    return {
        "retries": got.check(checks.integer, raw, "retries", entry, 0, minimum=0),
        "catchup": got.check(checks.choice, raw, "catchup", entry, "latest", Catchup),
        "max_catchup": got.check(checks.integer, raw, "max_catchup", entry, 10),
        "overlap": got.check(checks.choice, raw, "overlap", entry, "forbid", Overlap),
        "jitter_seconds": got.check(checks.number, raw, "jitter_seconds", entry, 0.0),
        "grace_seconds": got.check(checks.number, raw, "grace_seconds", entry, 60.0),
        "max_fanout": got.check(checks.integer, raw, "max_fanout", entry, 1000),
    }
