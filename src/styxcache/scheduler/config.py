"""Schedule entries and the YAML file that declares them.

Every check happens here, before the scheduler touches its ledger: an unknown
key or a bad value raises `ConfigError` naming the entry and the field.

Example file::

    state_dir: .schedule-state        # relative to this file
    executor: {kind: threads, max_workers: 4}
    defaults: {timezone: Europe/Berlin}
    schedules:
      - name: nightly-subjects
        cron: "0 2 * * *"
        target: pipeline_jobs:process_subject
        expand_from: pipeline_jobs:list_subjects
        cache: normal
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from styxcache.modes import CacheMode
from styxcache.scheduler.nats_connect import NatsSettings, NatsSettingsError
from styxcache.scheduler.runner_spec import (
    POLICY_FIELDS,
    RUNNER_KEYS,
    RunnerSpec,
    RunnerSpecError,
)
from styxcache.scheduler.triggers import (
    CronTrigger,
    IntervalTrigger,
    Trigger,
    TriggerError,
    load_zone,
)

__all__ = [
    "ENTRY_FIELDS",
    "ENTRY_KEYS",
    "TOP_FIELDS",
    "ConfigError",
    "ConfigErrors",
    "ExecutorSpec",
    "FieldDoc",
    "NatsSettings",
    "ScheduleConfig",
    "ScheduleEntry",
    "build_entry",
    "cache_label",
    "default_cache_dir",
    "load_config",
    "parse_config",
    "register_entry_keys",
    "render_reference",
    "resolve_callable",
]

Catchup = Literal["latest", "all", "none"]
Overlap = Literal["forbid", "allow", "queue"]

_CATCHUP = ("latest", "all", "none")
_OVERLAP = ("forbid", "allow", "queue")
_EXECUTORS = ("inline", "threads", "processes")
_DASK = re.compile(r"^(dask|tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
# `module:attr`, or seeds 002/003's dotted `package.module.function`.
_REF = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*|\.[A-Za-z_]\w*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One key the loader accepts, as the reference documents it.

    Attributes:
        default: The default, as written in YAML (`""`: required or none).
        doc: One line saying what it does.
        defaultable: Whether `defaults:` may set it for every entry.
    """

    default: str
    doc: str
    defaultable: bool = True


# The loader's own table: it decides which keys are accepted, and
# docs/scheduler.md's reference is generated from it (`render_reference`).
# Extensions add rows here (see `register_entry_keys`).
ENTRY_FIELDS: dict[str, FieldDoc] = {
    "name": FieldDoc("", "unique name: letters, digits, `_ . -`", False),
    "cron": FieldDoc("", "cron expression (5 fields, or 6 with seconds)", False),
    "interval_seconds": FieldDoc(
        "", "fire every N seconds instead of `cron` (exactly one of the two)", False
    ),
    "timezone": FieldDoc("UTC", "IANA zone whose wall time `cron` is read in"),
    "anchor": FieldDoc(
        "1970-01-01T00:00:00+00:00",
        "intervals only: one point of the grid (ISO datetime or Unix seconds)",
    ),
    "target": FieldDoc(
        "", "`module:function` called with the run's `RunContext`", False
    ),
    "expand_from": FieldDoc(
        "", "`module:function` returning a list of dicts: one run per dict", False
    ),
    "cache": FieldDoc("normal", "cache mode inside the run: normal, refresh, bypass"),
    "catchup": FieldDoc("latest", "late fires: latest, all, none"),
    "max_catchup": FieldDoc("10", "most late fires `all` runs; overlap queue length"),
    "overlap": FieldDoc("forbid", "a fire while a run is going: forbid, allow, queue"),
    "jitter_seconds": FieldDoc("0", "deterministic start delay, below the period"),
    "grace_seconds": FieldDoc("60", "a fire this late or less is on time"),
    "max_fanout": FieldDoc("1000", "most items one fire may expand into"),
    "enabled": FieldDoc(
        "true", "false: never fires (restarts from now when re-enabled)"
    ),
    "executor": FieldDoc(
        "(the file's)",
        "where runs go: inline, threads, processes, nats, dask://host:port",
        False,
    ),
    "dispatch": FieldDoc("local", "`nats` is another spelling of `executor: nats`"),
    "runner": FieldDoc(
        "(the file's)",
        "cache the run goes through: a mapping with `cache_dir` (`base`,"
        " `data_dir`, `read_only_caches`, `policy`), or `none` for no cache",
    ),
    "retries": FieldDoc("0", "restarts of a run the executor lost (worker died)"),
}
"""Every key a schedule entry may carry, with its default and meaning."""

TOP_FIELDS: dict[str, FieldDoc] = {
    "schedules": FieldDoc("", "the list of entries"),
    "state_dir": FieldDoc(
        ".styxcache-schedule", "folder of the ledger, relative to the file"
    ),
    "state": FieldDoc("", "`postgresql://` URL of a run store shared by schedulers"),
    "executor": FieldDoc(
        "threads", "`kind` (inline, threads, processes, nats, dask://...), max_workers"
    ),
    "runner": FieldDoc(
        "(a default cache)",
        "the cache of every entry without `runner:`; `none` for no cache",
    ),
    "nats": FieldDoc("", "NATS server and credentials for `executor: nats`"),
    "dask": FieldDoc("", "TLS files for `tls://` Dask schedulers"),
    "defaults": FieldDoc("", "entry keys applied to every entry"),
    "max_sleep_seconds": FieldDoc("30", "longest single wait of the loop"),
    "shutdown_timeout_seconds": FieldDoc("30", "grace for running work on shutdown"),
}
"""Every top-level key of a schedule file."""


def register_entry_keys(fields: Mapping[str, FieldDoc]) -> None:
    """Accept more entry keys (for extensions such as publish entries).

    Args:
        fields: Key to its documentation row.
    """
    ENTRY_FIELDS.update(fields)


def _entry_keys() -> frozenset[str]:
    return frozenset(ENTRY_FIELDS)


def _defaultable() -> frozenset[str]:
    return frozenset(k for k, f in ENTRY_FIELDS.items() if f.defaultable)


register_entry_keys(
    {
        "dispatch_type": FieldDoc(
            "",
            "seeds 002/003: publish a `goal` or `task` message instead of"
            " running a target",
            False,
        ),
        "goal_config": FieldDoc("", "with `dispatch_type: goal`: the goal", False),
        "task_config": FieldDoc("", "with `dispatch_type: task`: the task", False),
    }
)


def render_reference() -> str:
    """Return the Markdown key reference of docs/scheduler.md.

    Generated from `TOP_FIELDS` and `ENTRY_FIELDS`, the tables the loader
    itself checks keys against, so the documentation cannot drift.

    Returns:
        Two Markdown tables.
    """

    def table(fields: Mapping[str, FieldDoc], extra: str) -> list[str]:
        rows = [
            f"| key | default | meaning{extra} |",
            "|---|---|---|" + ("---|" if extra else ""),
        ]
        for key, field in fields.items():
            default = (
                f"`{field.default}`"
                if field.default[:1] not in ("", "(")
                else (field.default or "-")
            )
            cells = [f"`{key}`", default, field.doc]
            if extra:
                cells.append("yes" if field.defaultable else "no")
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    lines = ["Top-level keys:", ""]
    lines += table(TOP_FIELDS, "")
    lines += ["", "Keys of each entry under `schedules:`:", ""]
    lines += table(ENTRY_FIELDS, " | in `defaults:`")
    lines += [
        "",
        "Keys of a `runner:` mapping: "
        + ", ".join(f"`{k}`" for k in sorted(RUNNER_KEYS))
        + ". Fields of its `policy:` (`CachePolicy`): "
        + ", ".join(f"`{k}`" for k in sorted(POLICY_FIELDS))
        + ".",
    ]
    return "\n".join(lines) + "\n"


ENTRY_KEYS: frozenset[str] = frozenset(ENTRY_FIELDS)
"""Keys a schedule entry may carry (as of import; see `register_entry_keys`)."""
_TOP_KEYS = frozenset(TOP_FIELDS)

Target = Callable[..., Any]


class ConfigError(ValueError):
    """An invalid schedule entry or file.

    Attributes:
        entry: Name (or position) of the offending entry, if any.
        field: The offending key, if any.
        file: The schedule file, when the error came from one.
        line: 1-based line of the offending value in `file`.
        column: 1-based column of the offending value.
        errors: Every error of the file (just this one for a single error).
    """

    def __init__(
        self,
        message: str,
        *,
        entry: str | None = None,
        field: str | None = None,
        file: Path | None = None,
        line: int | None = None,
        column: int | None = None,
    ):
        self.message = message
        self.entry = entry
        self.field = field
        self.file = file
        self.line = line
        self.column = column
        self.errors: list[ConfigError] = [self]
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"schedule {self.entry!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        if self.file is not None:
            spot = str(self.file)
            if self.line is not None:
                spot += f":{self.line}:{self.column or 1}"
            text = f"{spot}: {text}"
        return text

    def locate(self, file: Path | None, line: int | None, column: int | None) -> None:
        """Attach the file position (done by the loader, which knows it).

        Args:
            file: The schedule file.
            line: 1-based line.
            column: 1-based column.
        """
        self.file, self.line, self.column = file, line, column
        self.args = (self._text(),)


class ConfigErrors(ConfigError):  # noqa: N818 - still one ConfigError, listing all
    """Several errors of one file, reported together (`errors` lists them)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        """Collect errors.

        Args:
            errors: At least one error.
        """
        first = errors[0]
        super().__init__(
            first.message,
            entry=first.entry,
            field=first.field,
            file=first.file,
            line=first.line,
            column=first.column,
        )
        self.errors = list(errors)
        self.args = (self._text(),)

    def _text(self) -> str:
        errors = getattr(self, "errors", None)
        if not errors or len(errors) == 1:
            return super()._text()
        lines = [f"{len(errors)} errors:"]
        lines.extend(f"  {error._text()}" for error in errors)
        return "\n".join(lines)


def _raise_all(errors: list[ConfigError]) -> None:
    flat = [e for error in errors for e in error.errors]
    flat.sort(key=lambda e: (e.line is None, e.line or 0, e.column or 0))
    if len(flat) == 1:
        raise flat[0]
    if flat:
        raise ConfigErrors(flat)


_BOOL_WORDS = "yes/no/on/off/true/false"
# Keys whose value must be text: a YAML 1.1 boolean there is a quoting mistake.
_TEXT_KEYS = frozenset(
    {
        "name",
        "cron",
        "timezone",
        "target",
        "expand_from",
        "cache",
        "catchup",
        "overlap",
        "executor",
        "dispatch",
        "dispatch_type",
        "anchor",
    }
)


def _bool_hint(error: ConfigError, value: Any, source: str | None = None) -> None:
    """Say that YAML read a word as a boolean where text was expected."""
    if not isinstance(value, bool) or error.field not in _TEXT_KEYS:
        return
    as_bool = str(value).lower()
    if source is not None:
        error.message += (
            f" (YAML read `{source}` as the boolean {as_bool}: unquoted"
            f" {_BOOL_WORDS} are booleans in YAML; write"
            f' {error.field}: "{source}" for the text)'
        )
    else:
        error.message += (
            f" (YAML read the value as the boolean {as_bool}: quote words such"
            f" as {_BOOL_WORDS} to keep them text)"
        )
    error.args = (error._text(),)


@dataclasses.dataclass(frozen=True)
class ScheduleEntry:
    """One validated schedule.

    Attributes:
        name: Unique name; part of every run key.
        trigger: When it fires.
        target: Callable or `module:function` run for each fire (or item).
        expand_from: Callable or `module:function` returning context dicts,
            one run per dict, called at fire time.
        cache: The cache mode in force inside each run.
        catchup: What to do with fires older than `grace_seconds`.
        max_catchup: Most late fires `catchup: all` runs in one wake.
        overlap: What to do with a fire while an earlier run is still going.
        jitter_seconds: Upper bound of the deterministic start delay.
        grace_seconds: A fire this late or less counts as on time.
        max_fanout: Most items one fire may expand to.
        enabled: Disabled entries never fire (and later start from "now").
        pass_context: Call the target with a `RunContext` (True for YAML
            targets; `register_task` callbacks default to no arguments).
        executor: Where this entry's runs and fan-out items execute,
            overriding the scheduler's executor: `inline`, `threads`,
            `processes`, `dask://host:port`, `nats`, or (in code) an
            `Executor`, a `concurrent.futures.Executor` or a
            `distributed.Client`. None uses the scheduler's.
        runner: Settings each worker builds its `CachingRunner` from.
        retries: How many times a run the executor lost (worker died,
            no answer in time) is started again; a target that raised is
            never retried.
        runner_is_default: `runner` was not written in the entry: it is the
            file's default cache, used only when the worker's global Styx
            runner is not already a `CachingRunner`.
    """

    name: str
    trigger: Trigger
    target: str | Target | None = None
    expand_from: str | Target | None = None
    cache: CacheMode = CacheMode.NORMAL
    catchup: Catchup = "latest"
    max_catchup: int = 10
    overlap: Overlap = "forbid"
    jitter_seconds: float = 0.0
    grace_seconds: float = 60.0
    max_fanout: int = 1000
    enabled: bool = True
    pass_context: bool = True
    executor: Any = None
    runner: RunnerSpec | None = None
    retries: int = 0
    runner_is_default: bool = False

    @property
    def fingerprint(self) -> str:
        """A string that changes whenever any setting of the entry changes."""
        parts = [
            self.trigger.signature,
            _ref_name(self.target),
            _ref_name(self.expand_from),
            self.cache.value,
            self.catchup,
            str(self.max_catchup),
            self.overlap,
            repr(self.jitter_seconds),
            repr(self.grace_seconds),
            str(self.max_fanout),
            str(self.enabled),
            str(self.pass_context),
            executor_label(self.executor),
            repr(self.runner),
            str(self.retries),
        ]
        return "|".join(parts)


_ENTRY_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(ScheduleEntry)
    if f.default is not dataclasses.MISSING
}
_ENTRY_FACTORIES: list[tuple[str, Callable[[], Any]]] = [
    (f.name, f.default_factory)
    for f in dataclasses.fields(ScheduleEntry)
    if f.default_factory is not dataclasses.MISSING
]


@dataclasses.dataclass(frozen=True)
class ExecutorSpec:
    """Which executor a YAML file asks for.

    Attributes:
        kind: `inline`, `threads` or `processes`.
        max_workers: Worker count for pools.
    """

    kind: str = "threads"
    max_workers: int = 4


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A parsed schedule file.

    Attributes:
        entries: Validated entries, in file order.
        state_dir: Folder of the ledger.
        state: A `postgresql://` URL of a run store shared by several
            schedulers (None: the SQLite ledger in `state_dir`).
        executor: Executor choice.
        max_sleep_seconds: Longest single sleep of the loop.
        shutdown_timeout_seconds: Default grace for running work on shutdown.
        path: The file it came from, if any.
        default_runner: The cache of entries without `runner:` (None:
            `runner: none` at the top, no cache).
    """

    entries: tuple[ScheduleEntry, ...]
    state_dir: Path
    executor: ExecutorSpec = ExecutorSpec()
    max_sleep_seconds: float = 30.0
    shutdown_timeout_seconds: float = 30.0
    path: Path | None = None
    nats: NatsSettings | None = None
    default_runner: RunnerSpec | None = None
    state: str | None = None
    dask: Any = None  # DaskTLS from the `dask:` section (tls:// schedulers)


def executor_label(executor: Any) -> str:
    """Name an entry's executor setting for logs and fingerprints.

    Args:
        executor: A kind string, an executor object or None.

    Returns:
        The string itself, `""` for None, else the object's `name` or type.
    """
    if executor is None:
        return ""
    if isinstance(executor, str):
        return executor
    return str(getattr(executor, "name", type(executor).__name__))


def check_executor_kind(kind: str) -> None:
    """Accept `inline`, `threads`, `processes`, `nats` and Dask addresses.

    Args:
        kind: The setting.

    Raises:
        ValueError: Saying what is accepted.
    """
    if kind in _EXECUTORS or kind == "nats" or _DASK.match(kind):
        return
    raise ValueError(
        "must be inline, threads, processes, nats or a Dask scheduler address"
        f" such as dask://127.0.0.1:8786; got {kind!r}"
    )


def _names(names: list[str]) -> str:
    return ", ".join(map(repr, names))


def _ref_name(ref: object) -> str:
    if ref is None:
        return ""
    if isinstance(ref, str):
        return ref
    module = getattr(ref, "__module__", "?")
    qual = getattr(ref, "__qualname__", repr(ref))
    return f"{module}:{qual}"


def resolve_callable(ref: str | Target) -> Target:
    """Import a `module:function` reference (callables pass through).

    Args:
        ref: A callable or a `module:attr.path` string.

    Returns:
        The callable.

    Raises:
        ValueError: If the string is malformed, the import fails or the
            attribute is missing or not callable.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not _REF.match(ref):
        raise ValueError(f"expected 'module:function', got {ref!r}")
    if ":" in ref:
        module_name, attr_path = ref.split(":", 1)
    else:
        module_name, attr_path = ref.rsplit(".", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _number(
    raw: Mapping[str, Any],
    key: str,
    entry: str,
    default: float,
    *,
    minimum: float = 0.0,
) -> float:
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


def _integer(raw: Mapping[str, Any], key: str, entry: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"must be a whole number >= 1, got {value!r}", entry=entry, field=key
        )
    return value


def _choice(
    raw: Mapping[str, Any], key: str, entry: str, default: str, allowed: tuple[str, ...]
) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"must be one of {', '.join(allowed)}; got {value!r}",
            entry=entry,
            field=key,
        )
    return str(value)


def _anchor(raw: Mapping[str, Any], entry: str) -> float:
    value = raw.get("anchor", 0.0)
    if isinstance(value, bool):
        raise ConfigError(
            f"must be an ISO datetime or Unix seconds, got {value!r}",
            entry=entry,
            field="anchor",
        )
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"not an ISO datetime: {value!r}", entry=entry, field="anchor"
            ) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(
                "needs a UTC offset (e.g. 2024-01-01T00:00:00+00:00)",
                entry=entry,
                field="anchor",
            )
        return value.timestamp()
    raise ConfigError(
        f"must be an ISO datetime or Unix seconds, got {value!r}",
        entry=entry,
        field="anchor",
    )


class _Collector:
    """Runs checks and keeps every `ConfigError` instead of stopping at one."""

    def __init__(self, raw: Mapping[str, Any], *, collect: bool = True) -> None:
        self.raw = raw
        self.errors: list[ConfigError] = []
        self.collect = collect

    def check(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.collect:
            # First pass: stop at the first error (registering thousands of
            # valid entries stays cheap); the caller reruns collecting all.
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            self.errors.append(exc)
            return _FAILED


_FAILED: Any = object()


def build_entry(
    raw: Mapping[str, Any],
    *,
    label: str | None = None,
    resolve: bool = True,
    pass_context: bool = True,
    base_dir: Path | None = None,
    default_runner: RunnerSpec | None = None,
) -> ScheduleEntry:
    """Validate one entry mapping, reporting every bad field at once.

    Args:
        raw: The entry's keys (see `ENTRY_FIELDS`); `cron` may also be given
            as a `Trigger` under the key `trigger`.
        label: How to name the entry in errors if it has no valid name.
        resolve: Import `module:function` references now, to fail early.
        pass_context: Whether the target receives a `RunContext`.
        base_dir: Folder relative `runner:` paths are resolved against.
        default_runner: The cache of an entry without `runner:` (the file's
            default); `runner: none` opts out.

    Returns:
        The entry.

    Raises:
        ConfigError: On any unknown key or invalid value (`ConfigErrors`,
            with `errors` listing each, when there are several).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", entry=label)
    options = (label, resolve, pass_context, base_dir, default_runner)
    try:
        return _build_entry(raw, *options, collect=False)
    except ConfigError:
        return _build_entry(raw, *options, collect=True)


def _build_entry(
    raw: Mapping[str, Any],
    label: str | None,
    resolve: bool,
    pass_context: bool,
    base_dir: Path | None,
    default_runner: RunnerSpec | None,
    *,
    collect: bool,
) -> ScheduleEntry:
    got = _Collector(raw, collect=collect)
    name = raw.get("name")
    entry = label if label is not None else repr(name)
    if not isinstance(name, str) or not _NAME.match(name):
        got.check(
            _fail,
            f"name must be letters, digits, '_', '.', '-' (got {name!r})",
            entry,
            "name",
        )
    else:
        entry = name
    known = _entry_keys()
    for key in sorted(set(raw) - known - {"trigger"}):
        got.check(
            _fail,
            f"unknown key {key!r}; allowed: {_names(sorted(known))}",
            entry,
            key,
        )
    trigger = got.check(_build_trigger, raw, entry)
    publish = got.check(_publish, raw, entry)
    if publish is _FAILED:
        publish = None

    target = raw.get("target") if publish is None else publish["target"]
    expand_from = raw.get("expand_from")
    refs = [("expand_from", expand_from)]
    if publish is None:
        refs.insert(0, ("target", target))
    for key, ref in refs:
        if ref is not None:
            got.check(_check_ref, ref, entry, key, resolve)
    if target is None:
        got.check(_fail, "is required ('module:function')", entry, "target")

    cache = got.check(_cache_mode, raw, entry)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        got.check(_fail, f"must be true or false, got {enabled!r}", entry, "enabled")
    executor = got.check(_entry_executor, raw, entry)
    if publish is not None:
        executor = publish["executor"]
    elif executor == "nats" and not isinstance(target, str):
        got.check(
            _fail,
            "NATS workers import their target by name: give 'module:function',"
            f" not {target!r}",
            entry,
            "target",
        )
    runner, runner_is_default = None, False
    if publish is None:
        chosen = got.check(_entry_runner, raw, entry, base_dir, default_runner)
        if chosen is not _FAILED:
            runner, runner_is_default = chosen
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        got.check(
            _fail, f"must be a whole number >= 0, got {retries!r}", entry, "retries"
        )
    catchup = got.check(_choice, raw, "catchup", entry, "latest", _CATCHUP)
    max_catchup = got.check(_integer, raw, "max_catchup", entry, 10)
    overlap = got.check(_choice, raw, "overlap", entry, "forbid", _OVERLAP)
    jitter = got.check(_number, raw, "jitter_seconds", entry, 0.0)
    grace = got.check(_number, raw, "grace_seconds", entry, 60.0)
    max_fanout = got.check(_integer, raw, "max_fanout", entry, 1000)
    _raise_all(got.errors)
    return _new_entry(
        name=entry,
        trigger=trigger,
        target=target,
        expand_from=expand_from,
        cache=cache,
        catchup=catchup,
        max_catchup=max_catchup,
        overlap=overlap,
        jitter_seconds=jitter,
        grace_seconds=grace,
        max_fanout=max_fanout,
        enabled=enabled,
        pass_context=pass_context,
        executor=executor,
        runner=runner,
        retries=retries,
        runner_is_default=runner_is_default,
    )


def _new_entry(**values: Any) -> ScheduleEntry:
    """Make a validated `ScheduleEntry` without the frozen per-field setattr.

    Registering 10,000 entries makes 10,000 of these; filling `__dict__` at
    once (defaults first, for fields added later) gives an equal object at a
    fraction of the cost.
    """
    entry = object.__new__(ScheduleEntry)
    fields = dict(_ENTRY_DEFAULTS)
    for name, factory in _ENTRY_FACTORIES:
        fields[name] = factory()
    fields.update(values)
    entry.__dict__.update(fields)
    return entry


def _fail(message: str, entry: str, field: str) -> None:
    raise ConfigError(message, entry=entry, field=field)


def _publish(raw: Mapping[str, Any], entry: str) -> dict[str, Any] | None:
    # Seeds 002/003's publish entries (dispatch_type goal|task).
    from styxcache.scheduler.publish import PublishConfigError, publish_overrides

    try:
        return publish_overrides(raw)
    except PublishConfigError as exc:
        raise ConfigError(str(exc), entry=entry, field=exc.field) from None


def _check_ref(ref: Any, entry: str, key: str, resolve: bool) -> None:
    if not callable(ref) and not (isinstance(ref, str) and _REF.match(ref)):
        raise ConfigError(
            f"expected 'module:function', got {ref!r}", entry=entry, field=key
        )
    if resolve:
        try:
            resolve_callable(ref)
        except ValueError as exc:
            raise ConfigError(str(exc), entry=entry, field=key) from None


def _cache_mode(raw: Mapping[str, Any], entry: str) -> CacheMode:
    value = raw.get("cache", "normal")
    try:
        return CacheMode(value)
    except ValueError:
        raise ConfigError(
            f"must be one of normal, refresh, bypass; got {value!r}",
            entry=entry,
            field="cache",
        ) from None


_NO_RUNNER = ("none", "off", False)


def _entry_runner(
    raw: Mapping[str, Any],
    entry: str,
    base_dir: Path | None,
    default: RunnerSpec | None,
) -> tuple[RunnerSpec | None, bool]:
    """Return the entry's runner spec and whether it is the file's default."""
    if "runner" not in raw:
        return default, default is not None
    value = raw["runner"]
    if value is None or (isinstance(value, (str, bool)) and value in _NO_RUNNER):
        return None, False  # the explicit opt-out: no cache
    if isinstance(value, RunnerSpec):
        return value, False
    try:
        return RunnerSpec.from_mapping(value, base_dir), False
    except RunnerSpecError as exc:
        raise ConfigError(str(exc), entry=entry, field=exc.field) from None


def cache_label(entry: ScheduleEntry) -> str:
    """Say which cache an entry's runs go through, for logs and `schedule list`.

    Args:
        entry: The entry.

    Returns:
        The cache folder, with ` (default)` when the entry did not choose
        it; `none` for an entry without a cache (`runner: none`, or a code
        entry that uses whatever global runner the program set).
    """
    if entry.runner is None:
        return "none"
    folder = str(entry.runner.cache_dir)
    return f"{folder} (default)" if entry.runner_is_default else folder


def default_cache_dir(state_dir: Path | None = None) -> Path:
    """The cache used by file entries that name no `runner:`.

    `$STYXCACHE_DIR` when set (the cache commands' variable), else the
    platform's user cache folder (`~/.cache/styxcache` on Linux), else a
    `cache` folder beside the state dir.

    Args:
        state_dir: The schedule's state folder (the last resort).

    Returns:
        The folder (not created here).
    """
    env = os.environ.get("STYXCACHE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("styxcache"))
    except Exception:  # no home folder: keep it next to the ledger
        base = state_dir if state_dir is not None else Path.cwd()
        return base.parent.absolute() / "styxcache-cache"


def _entry_executor(raw: Mapping[str, Any], entry: str) -> Any:
    executor = raw.get("executor")
    dispatch = raw.get("dispatch")
    if dispatch is not None:
        # `dispatch: nats` is the spelling of `executor: nats`.
        if dispatch not in ("local", "nats"):
            raise ConfigError(
                f"must be local or nats; got {dispatch!r}",
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


def _build_trigger(raw: Mapping[str, Any], entry: str) -> Trigger:
    given = raw.get("trigger")
    cron = raw.get("cron")
    interval = raw.get("interval_seconds")
    present = [
        k
        for k, v in (("trigger", given), ("cron", cron), ("interval_seconds", interval))
        if v is not None
    ]
    if len(present) != 1:
        what = "neither" if not present else "both " + " and ".join(present)
        raise ConfigError(
            f"give exactly one of 'cron' or 'interval_seconds' ({what} given)",
            entry=entry,
            field="cron",
        )
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
    if "anchor" in raw and interval is None:
        raise ConfigError(
            "only applies to interval_seconds entries", entry=entry, field="anchor"
        )
    if given is not None:
        if not isinstance(given, Trigger):
            raise ConfigError(f"not a Trigger: {given!r}", entry=entry, field="trigger")
        return given
    if cron is not None:
        try:
            return CronTrigger(cron, timezone)
        except TriggerError as exc:
            field = "timezone" if "time zone" in str(exc) else "cron"
            raise ConfigError(str(exc), entry=entry, field=field) from None
    anchor = _anchor(raw, entry)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise ConfigError(
            f"must be a number of seconds, got {interval!r}",
            entry=entry,
            field="interval_seconds",
        )
    try:
        return IntervalTrigger(interval, anchor)
    except TriggerError as exc:
        raise ConfigError(str(exc), entry=entry, field="interval_seconds") from None


@dataclasses.dataclass
class _Marks:
    """Where each mapping key and value sits in the YAML file (1-based)."""

    file: Path | None = None
    # id(mapping) -> (line, column) of the mapping, and key -> (line,
    # column, source text) of its value.
    maps: dict[int, tuple[tuple[int, int], dict[str, tuple[int, int, str | None]]]] = (
        dataclasses.field(default_factory=dict)
    )

    def place(self, error: ConfigError, *mappings: Any) -> None:
        """Give `error` the position of its field in the first mapping holding it."""
        key = (error.field or "").split(".")[0]
        fallback: tuple[int, int] | None = None
        for mapping in mappings:
            known = self.maps.get(id(mapping)) if mapping is not None else None
            if known is None:
                continue
            start, values = known
            fallback = fallback or start
            if key in values:
                line, column, source = values[key]
                _bool_hint(error, mapping.get(key), source)
                error.locate(self.file, line, column)
                return
        for mapping in mappings:
            if isinstance(mapping, Mapping) and key in mapping:
                _bool_hint(error, mapping.get(key))
                break
        if fallback is not None:
            error.locate(self.file, *fallback)
        elif self.file is not None:
            error.locate(self.file, None, None)


def parse_config(
    data: Any,
    *,
    base_dir: Path | None = None,
    resolve: bool = True,
    path: Path | None = None,
    marks: _Marks | None = None,
) -> ScheduleConfig:
    """Validate a decoded schedule document, reporting every error at once.

    Args:
        data: The decoded YAML document.
        base_dir: Folder relative paths (state_dir) are resolved against.
        resolve: Import target references now.
        path: The file the document came from (kept on the result).
        marks: Positions of the document's keys (from `load_config`).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On any invalid key or value (`ConfigErrors` listing
            each, with file:line:column when read from a file, when there
            are several).
    """
    marks = marks or _Marks(file=path)
    base = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        error = ConfigError(
            "the file must hold a mapping with a 'schedules' list,"
            f" got {type(data).__name__}"
        )
        marks.place(error)
        raise error
    errors: list[ConfigError] = []

    def top(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except ConfigError as exc:
            for error in exc.errors:
                sub = data.get(error.entry) if error.entry is not None else None
                marks.place(error, sub if isinstance(sub, Mapping) else None, data)
            errors.append(exc)
            return _FAILED

    for key in sorted(set(data) - _TOP_KEYS):
        top(
            _fail_top,
            f"unknown top-level key {key!r}; allowed: {_names(sorted(_TOP_KEYS))}",
            key,
        )
    schedules = data.get("schedules")
    if not isinstance(schedules, list):
        top(_fail_top, "must be a list of entries", "schedules")
        schedules = []
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        top(_fail_top, "must be a mapping", "defaults")
        defaults = {}
    defaultable = _defaultable()
    for key in sorted(set(defaults) - defaultable):
        error = ConfigError(
            f"cannot set {key!r} here; allowed: {_names(sorted(defaultable))}",
            entry="defaults",
            field=key,
        )
        marks.place(error, defaults)
        errors.append(error)
    state_raw = data.get("state_dir", ".styxcache-schedule")
    state_dir = Path(".styxcache-schedule")
    if not isinstance(state_raw, str) or not state_raw:
        top(_fail_top, f"must be a folder path, got {state_raw!r}", "state_dir")
    else:
        state_dir = Path(state_raw).expanduser()
    if not state_dir.is_absolute():
        state_dir = base / state_dir
    default_runner = top(_file_runner, data, base, state_dir)
    if default_runner is _FAILED:
        default_runner = None
    entries: list[ScheduleEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(schedules, start=1):
        label = f"#{index}"
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
            label = raw["name"]
        merged = {**defaults, **raw} if isinstance(raw, Mapping) else raw
        try:
            entry = build_entry(
                merged,
                label=label,
                resolve=resolve,
                base_dir=base,
                default_runner=default_runner,
            )
        except ConfigError as exc:
            for error in exc.errors:
                marks.place(error, raw, defaults)
            errors.append(exc)
            continue
        if entry.name in seen:
            error = ConfigError("duplicate name", entry=entry.name, field="name")
            marks.place(error, raw)
            errors.append(error)
        seen.add(entry.name)
        entries.append(entry)
    state_url = data.get("state")
    if state_url is not None and not (
        isinstance(state_url, str)
        and state_url.startswith(("postgresql://", "postgres://"))
    ):
        top(
            _fail_top,
            "must be a postgresql:// URL (a folder for the SQLite ledger goes in"
            f" state_dir), got a {type(state_url).__name__}",
            "state",
        )
    executor = top(_executor_spec, data.get("executor"))
    nats = top(_nats_settings, data.get("nats"), base)
    dask = top(_dask_settings, data.get("dask"), base)
    max_sleep = top(
        functools.partial(_number, minimum=0.001),
        data,
        "max_sleep_seconds",
        "(top level)",
        30.0,
    )
    shutdown = top(_number, data, "shutdown_timeout_seconds", "(top level)", 30.0)
    _raise_all(errors)
    if nats is None and (
        executor.kind == "nats" or any(e.executor == "nats" for e in entries)
    ):
        # Seeds 002/003's files name no server: $STYXCACHE_NATS_URL, else
        # nats://127.0.0.1:4222 (credentials and key from the environment).
        nats = _nats_settings({}, base)
    return ScheduleConfig(
        entries=tuple(entries),
        state_dir=state_dir,
        state=state_url,
        executor=executor,
        max_sleep_seconds=max_sleep,
        shutdown_timeout_seconds=shutdown,
        path=path,
        nats=nats,
        dask=dask,
        default_runner=default_runner,
    )


def _fail_top(message: str, field: str) -> None:
    raise ConfigError(message, field=field)


def _file_runner(
    data: Mapping[str, Any], base: Path, state_dir: Path
) -> RunnerSpec | None:
    """The cache of entries without `runner:`: the file's, else the default."""
    value = data.get("runner", _FAILED)
    if value is _FAILED:
        return RunnerSpec.from_mapping(
            {"cache_dir": str(default_cache_dir(state_dir))}, base
        )
    if value is None or (isinstance(value, (str, bool)) and value in _NO_RUNNER):
        return None
    try:
        return RunnerSpec.from_mapping(value, base)
    except RunnerSpecError as exc:
        raise ConfigError(str(exc), field=exc.field) from None


def _dask_settings(raw: Any, base: Path) -> Any:
    if raw is None:
        return None
    # Imported here: dask_executor -> runs -> this module.
    from styxcache.scheduler.dask_executor import DaskTLS

    try:
        return DaskTLS.from_mapping(raw, base)
    except ValueError as exc:
        where, _, why = str(exc).partition(": ")
        raise ConfigError(why, entry="dask", field=where.split(".")[-1]) from None


def _executor_spec(raw: Any) -> ExecutorSpec:
    if raw is None:
        return ExecutorSpec()
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a kind name or a mapping", field="executor")
    unknown = sorted(set(raw) - {"kind", "max_workers"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))}",
            entry="executor",
            field=unknown[0],
        )
    kind = raw.get("kind", "threads")
    try:
        check_executor_kind(kind)
    except ValueError as exc:
        raise ConfigError(str(exc), entry="executor", field="kind") from None
    workers = _integer(raw, "max_workers", "executor", 4)
    return ExecutorSpec(kind=kind, max_workers=workers)


def _nats_settings(raw: Any, base_dir: Path | None = None) -> NatsSettings | None:
    if raw is None:
        return None
    try:
        return NatsSettings.from_mapping(raw, base_dir)
    except NatsSettingsError as exc:
        raise ConfigError(str(exc), entry="nats", field=exc.field) from None


class _MarkingLoader(yaml.SafeLoader):
    """A safe loader that remembers where every mapping key's value sits."""

    positions: _Marks

    def _map(self, node: yaml.MappingNode) -> Any:
        data: dict[Any, Any] = {}
        yield data
        data.update(self.construct_mapping(node))
        values: dict[str, tuple[int, int, str | None]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                source = (
                    value_node.value
                    if isinstance(value_node, yaml.ScalarNode)
                    else None
                )
                mark = value_node.start_mark
                values[str(key_node.value)] = (mark.line + 1, mark.column + 1, source)
        start = node.start_mark
        self.positions.maps[id(data)] = ((start.line + 1, start.column + 1), values)


_MarkingLoader.add_constructor("tag:yaml.org,2002:map", _MarkingLoader._map)


def load_config(path: str | Path, *, resolve: bool = True) -> ScheduleConfig:
    """Read and validate a YAML schedule file.

    The file's folder is put on `sys.path` so that `target` modules can sit
    next to it. Every error of the file is reported at once, each as
    `file:line:column: schedule 'name', field 'key': message`.

    Args:
        path: The YAML file.
        resolve: Import target references now.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file cannot be read, is not YAML, or is invalid
            (`ConfigErrors` when there are several errors).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    marks = _Marks(file=file)
    loader = _MarkingLoader(text)
    loader.positions = marks
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        error = ConfigError(
            f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        )
        if mark is not None:
            error.locate(file, mark.line + 1, mark.column + 1)
        else:
            error.locate(file, None, None)
        raise error from None
    finally:
        loader.dispose()
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return parse_config(
        data, base_dir=file.resolve().parent, resolve=resolve, path=file, marks=marks
    )
