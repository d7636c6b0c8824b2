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
import importlib
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from styxcache.modes import CacheMode
from styxcache.scheduler.nats_connect import NatsSettings, NatsSettingsError
from styxcache.scheduler.runner_spec import RunnerSpec, RunnerSpecError
from styxcache.scheduler.triggers import (
    CronTrigger,
    IntervalTrigger,
    Trigger,
    TriggerError,
    load_zone,
)

__all__ = [
    "ENTRY_KEYS",
    "ConfigError",
    "ExecutorSpec",
    "NatsSettings",
    "ScheduleConfig",
    "ScheduleEntry",
    "build_entry",
    "load_config",
    "parse_config",
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

ENTRY_KEYS = frozenset(
    {
        "name",
        "cron",
        "interval_seconds",
        "timezone",
        "anchor",
        "target",
        "expand_from",
        "cache",
        "catchup",
        "max_catchup",
        "overlap",
        "jitter_seconds",
        "grace_seconds",
        "max_fanout",
        "enabled",
        "executor",
        "dispatch",
        "runner",
        "retries",
    }
)
"""Keys a schedule entry may carry."""

_DEFAULTABLE = ENTRY_KEYS - {
    "name",
    "cron",
    "interval_seconds",
    "target",
    "expand_from",
    "executor",
}
_TOP_KEYS = frozenset(
    {
        "schedules",
        "state_dir",
        "state",
        "executor",
        "nats",
        "dask",
        "defaults",
        "max_sleep_seconds",
        "shutdown_timeout_seconds",
    }
)

Target = Callable[..., Any]


class ConfigError(ValueError):
    """An invalid schedule entry or file.

    Attributes:
        entry: Name (or position) of the offending entry, if any.
        field: The offending key, if any.
    """

    def __init__(
        self, message: str, *, entry: str | None = None, field: str | None = None
    ):
        where = []
        if entry is not None:
            where.append(f"schedule {entry!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.entry = entry
        self.field = field


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
    """

    entries: tuple[ScheduleEntry, ...]
    state_dir: Path
    executor: ExecutorSpec = ExecutorSpec()
    max_sleep_seconds: float = 30.0
    shutdown_timeout_seconds: float = 30.0
    path: Path | None = None
    nats: NatsSettings | None = None
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


def build_entry(
    raw: Mapping[str, Any],
    *,
    label: str | None = None,
    resolve: bool = True,
    pass_context: bool = True,
    base_dir: Path | None = None,
) -> ScheduleEntry:
    """Validate one entry mapping.

    Args:
        raw: The entry's keys (see `ENTRY_KEYS`); `cron` may also be given as
            a `Trigger` under the key `trigger`.
        label: How to name the entry in errors if it has no valid name.
        resolve: Import `module:function` references now, to fail early.
        pass_context: Whether the target receives a `RunContext`.
        base_dir: Folder relative `runner:` paths are resolved against.

    Returns:
        The entry.

    Raises:
        ConfigError: On any unknown key or invalid value.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", entry=label)
    name = raw.get("name")
    entry = label if label is not None else repr(name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"name must be letters, digits, '_', '.', '-' (got {name!r})",
            entry=entry,
            field="name",
        )
    entry = name
    allowed = ENTRY_KEYS | {"trigger"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {_names(unknown)}; allowed: {_names(sorted(ENTRY_KEYS))}",
            entry=entry,
            field=unknown[0],
        )
    trigger = _build_trigger(raw, entry)

    target = raw.get("target")
    expand_from = raw.get("expand_from")
    for key, ref in (("target", target), ("expand_from", expand_from)):
        if ref is None:
            continue
        if not callable(ref) and not (isinstance(ref, str) and _REF.match(ref)):
            raise ConfigError(
                f"expected 'module:function', got {ref!r}", entry=entry, field=key
            )
        if resolve:
            try:
                resolve_callable(ref)
            except ValueError as exc:
                raise ConfigError(str(exc), entry=entry, field=key) from None
    if target is None:
        raise ConfigError(
            "is required ('module:function')", entry=entry, field="target"
        )

    cache_value = raw.get("cache", "normal")
    try:
        cache = CacheMode(cache_value)
    except ValueError:
        raise ConfigError(
            f"must be one of normal, refresh, bypass; got {cache_value!r}",
            entry=entry,
            field="cache",
        ) from None
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(
            f"must be true or false, got {enabled!r}", entry=entry, field="enabled"
        )
    executor = _entry_executor(raw, entry)
    if executor == "nats" and not isinstance(target, str):
        raise ConfigError(
            "NATS workers import their target by name: give 'module:function',"
            f" not {target!r}",
            entry=entry,
            field="target",
        )
    runner = raw.get("runner")
    if runner is not None and not isinstance(runner, RunnerSpec):
        try:
            runner = RunnerSpec.from_mapping(runner, base_dir)
        except RunnerSpecError as exc:
            raise ConfigError(str(exc), entry=entry, field=exc.field) from None
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(
            f"must be a whole number >= 0, got {retries!r}",
            entry=entry,
            field="retries",
        )
    return ScheduleEntry(
        name=name,
        trigger=trigger,
        target=target,
        expand_from=expand_from,
        cache=cache,
        catchup=_choice(raw, "catchup", entry, "latest", _CATCHUP),  # type: ignore[arg-type]
        max_catchup=_integer(raw, "max_catchup", entry, 10),
        overlap=_choice(raw, "overlap", entry, "forbid", _OVERLAP),  # type: ignore[arg-type]
        jitter_seconds=_number(raw, "jitter_seconds", entry, 0.0),
        grace_seconds=_number(raw, "grace_seconds", entry, 60.0),
        max_fanout=_integer(raw, "max_fanout", entry, 1000),
        enabled=enabled,
        pass_context=pass_context,
        executor=executor,
        runner=runner,
        retries=retries,
    )


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


def parse_config(
    data: Any,
    *,
    base_dir: Path | None = None,
    resolve: bool = True,
    path: Path | None = None,
) -> ScheduleConfig:
    """Validate a decoded schedule document.

    Args:
        data: The decoded YAML document.
        base_dir: Folder relative paths (state_dir) are resolved against.
        resolve: Import target references now.
        path: The file the document came from (kept on the result).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: On any invalid key or value.
    """
    base = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError(
            "the file must hold a mapping with a 'schedules' list,"
            f" got {type(data).__name__}"
        )
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {_names(unknown)};"
            f" allowed: {_names(sorted(_TOP_KEYS))}",
            field=unknown[0],
        )
    schedules = data.get("schedules")
    if not isinstance(schedules, list):
        raise ConfigError("must be a list of entries", field="schedules")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError("must be a mapping", field="defaults")
    bad_defaults = sorted(set(defaults) - _DEFAULTABLE)
    if bad_defaults:
        raise ConfigError(
            f"cannot set {_names(bad_defaults)} here;"
            f" allowed: {_names(sorted(_DEFAULTABLE))}",
            entry="defaults",
            field=bad_defaults[0],
        )
    entries: list[ScheduleEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(schedules, start=1):
        label = f"#{index}"
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
            label = raw["name"]
        merged = {**defaults, **raw} if isinstance(raw, Mapping) else raw
        entry = build_entry(merged, label=label, resolve=resolve, base_dir=base)
        if entry.name in seen:
            raise ConfigError("duplicate name", entry=entry.name, field="name")
        seen.add(entry.name)
        entries.append(entry)
    state_raw = data.get("state_dir", ".styxcache-schedule")
    if not isinstance(state_raw, str) or not state_raw:
        raise ConfigError(
            f"must be a folder path, got {state_raw!r}", field="state_dir"
        )
    state_dir = Path(state_raw).expanduser()
    if not state_dir.is_absolute():
        state_dir = base / state_dir
    state_url = data.get("state")
    if state_url is not None and not (
        isinstance(state_url, str)
        and state_url.startswith(("postgresql://", "postgres://"))
    ):
        raise ConfigError(
            "must be a postgresql:// URL (a folder for the SQLite ledger goes in"
            f" state_dir), got a {type(state_url).__name__}",
            field="state",
        )
    executor = _executor_spec(data.get("executor"))
    nats = _nats_settings(data.get("nats"), base)
    dask = None
    if data.get("dask") is not None:
        # Imported here: dask_executor -> runs -> this module.
        from styxcache.scheduler.dask_executor import DaskTLS

        try:
            dask = DaskTLS.from_mapping(data["dask"], base)
        except ValueError as exc:
            where, _, why = str(exc).partition(": ")
            raise ConfigError(why, entry="dask", field=where.split(".")[-1]) from None
    if nats is None and (
        executor.kind == "nats" or any(e.executor == "nats" for e in entries)
    ):
        # Seeds 002/003's files name no server: $STYXCACHE_NATS_URL, else
        # nats://127.0.0.1:4222 (credentials and key from the environment).
        nats = _nats_settings({}, base)
    max_sleep = _number(data, "max_sleep_seconds", "(top level)", 30.0, minimum=0.001)
    shutdown = _number(data, "shutdown_timeout_seconds", "(top level)", 30.0)
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
    )


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


def load_config(path: str | Path, *, resolve: bool = True) -> ScheduleConfig:
    """Read and validate a YAML schedule file.

    The file's folder is put on `sys.path` so that `target` modules can sit
    next to it.

    Args:
        path: The YAML file.
        resolve: Import target references now.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file cannot be read, is not YAML, or is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return parse_config(
        data, base_dir=file.resolve().parent, resolve=resolve, path=file
    )
