"""The schedule file: its top-level sections, and loading it from YAML.

Every check happens here (and in the modules it uses), before the scheduler
touches its ledger: an unknown key or a bad value raises `ConfigError`
naming the entry and the field, and every error of a file is reported at
once, each with its `file:line:column`.

The pieces, in the order data flows through them: `config_yaml` reads the
text with positions, `config_keys` is the table of accepted keys,
`entry_build` (with `entry_checks`) makes each `ScheduleEntry`, and this
module checks the top-level sections and assembles the `ScheduleConfig`.
Workers need none of this: they import `refs` and `entry` only.

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
import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from styxcache.scheduler import entry_checks as checks
from styxcache.scheduler.config_errors import ConfigError, ConfigErrors, raise_all
from styxcache.scheduler.config_keys import (
    ENTRY_FIELDS,
    ENTRY_KEYS,
    TOP_FIELDS,
    TOP_KEYS,
    FieldDoc,
    defaultable_keys,
    register_entry_keys,
    render_reference,
)
from styxcache.scheduler.config_yaml import Marks, read_yaml
from styxcache.scheduler.dask_executor import DaskTLS
from styxcache.scheduler.entry import (
    ExecutorSpec,
    ScheduleEntry,
    cache_label,
    check_executor_kind,
    executor_label,
)
from styxcache.scheduler.entry_build import build_entry
from styxcache.scheduler.nats_connect import NatsSettings, NatsSettingsError
from styxcache.scheduler.refs import Target, resolve_callable
from styxcache.scheduler.runner_spec import RunnerSpec, RunnerSpecError
from styxcache.scheduler.triggers import NextFireMemo

# The names below `load_config` and `parse_config` were defined here before
# the split; they stay importable from this module.
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
    "Target",
    "build_entry",
    "cache_label",
    "check_executor_kind",
    "default_cache_dir",
    "executor_label",
    "load_config",
    "parse_config",
    "register_entry_keys",
    "render_reference",
    "resolve_callable",
]

_DEFAULT_STATE_DIR = ".styxcache-schedule"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A parsed schedule file.

    Attributes:
        entries: Validated entries, in file order.
        state_dir: Folder of the ledger.
        executor: Executor choice.
        max_sleep_seconds: Longest single sleep of the loop.
        shutdown_timeout_seconds: Default grace for running work on shutdown.
        path: The file it came from, if any.
        nats: NATS server and credentials, when an entry or the file uses NATS.
        default_runner: The cache of entries without `runner:` (None:
            `runner: none` at the top, no cache).
        state: A `postgresql://` URL of a run store shared by several
            schedulers (None: the SQLite ledger in `state_dir`).
        dask: TLS files of the `dask:` section (for `tls://` schedulers).
    """

    entries: tuple[ScheduleEntry, ...]
    state_dir: Path
    executor: ExecutorSpec = dataclasses.field(default_factory=ExecutorSpec)
    max_sleep_seconds: float = 30.0
    shutdown_timeout_seconds: float = 30.0
    path: Path | None = None
    nats: NatsSettings | None = None
    default_runner: RunnerSpec | None = None
    state: str | None = None
    dask: DaskTLS | None = None


class _Parse:
    """One document being checked: its marks and the errors found so far."""

    def __init__(self, data: Mapping[str, Any], marks: Marks) -> None:
        self.data = data
        self.marks = marks
        self.errors: list[ConfigError] = []

    def top(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a check of a top-level section; keep its errors, placed."""
        try:
            return fn(*args)
        except ConfigError as exc:
            for error in exc.errors:
                sub = self.data.get(error.entry) if error.entry is not None else None
                self.marks.place(
                    error, sub if isinstance(sub, Mapping) else None, self.data
                )
            self.errors.append(exc)
            return checks.FAILED

    def fail_top(self, message: str, field: str) -> None:
        """Keep an error of a top-level key."""
        self.top(_fail_top, message, field)

    def keep(self, error: ConfigError, *mappings: Any) -> None:
        """Keep an error found in `mappings` (placed in the first holding it)."""
        self.marks.place(error, *mappings)
        self.errors.append(error)


def parse_config(
    data: Any,
    *,
    base_dir: Path | None = None,
    resolve: bool = True,
    path: Path | None = None,
    marks: Marks | None = None,
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
    marks = marks or Marks(file=path)
    base = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        error = ConfigError(
            "the file must hold a mapping with a 'schedules' list,"
            f" got {type(data).__name__}"
        )
        marks.place(error)
        raise error
    parse = _Parse(data, marks)
    for key in sorted(set(data) - TOP_KEYS):
        parse.fail_top(
            f"unknown top-level key {key!r}; allowed: {checks.names(sorted(TOP_KEYS))}",
            key,
        )
    schedules = data.get("schedules")
    if not isinstance(schedules, list):
        parse.fail_top("must be a list of entries", "schedules")
        schedules = []
    defaults = _defaults(parse)
    state_dir = _state_dir(parse, base)
    default_runner = parse.top(_file_runner, data, base, state_dir)
    if default_runner is checks.FAILED:
        default_runner = None
    entries = _entries(parse, schedules, defaults, base, resolve, default_runner)
    sections = _sections(parse, base)
    raise_all(parse.errors)
    if sections["nats"] is None and (
        sections["executor"].kind == "nats"
        or any(e.executor == "nats" for e in entries)
    ):
        # Seeds 002/003's files name no server: $STYXCACHE_NATS_URL, else
        # nats://127.0.0.1:4222 (credentials and key from the environment).
        sections["nats"] = _nats_settings({}, base)
    return ScheduleConfig(
        tuple(entries), state_dir, path=path, default_runner=default_runner, **sections
    )


def _sections(parse: _Parse, base: Path) -> dict[str, Any]:
    """The top-level settings besides the entries, by `ScheduleConfig` field."""
    data = parse.data
    return {
        "state": _state_url(parse),
        "executor": parse.top(_executor_spec, data.get("executor")),
        "nats": parse.top(_nats_settings, data.get("nats"), base),
        "dask": parse.top(_dask_settings, data.get("dask"), base),
        "max_sleep_seconds": parse.top(
            functools.partial(checks.number, minimum=0.001),
            data,
            "max_sleep_seconds",
            "(top level)",
            30.0,
        ),
        "shutdown_timeout_seconds": parse.top(
            checks.number, data, "shutdown_timeout_seconds", "(top level)", 30.0
        ),
    }


def _state_dir(parse: _Parse, base: Path) -> Path:
    raw = parse.data.get("state_dir", _DEFAULT_STATE_DIR)
    state_dir = Path(_DEFAULT_STATE_DIR)
    if not isinstance(raw, str) or not raw:
        parse.fail_top(f"must be a folder path, got {raw!r}", "state_dir")
    else:
        state_dir = Path(raw).expanduser()
    return state_dir if state_dir.is_absolute() else base / state_dir


def _state_url(parse: _Parse) -> str | None:
    url = parse.data.get("state")
    if url is None or (isinstance(url, str) and url.startswith(_POSTGRES_SCHEMES)):
        return url
    parse.fail_top(
        "must be a postgresql:// URL (a folder for the SQLite ledger goes in"
        f" state_dir), got a {type(url).__name__}",
        "state",
    )
    return None


def _defaults(parse: _Parse) -> Mapping[str, Any]:
    defaults = parse.data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        parse.fail_top("must be a mapping", "defaults")
        return {}
    allowed = defaultable_keys()
    for key in sorted(set(defaults) - allowed):
        error = ConfigError(
            f"cannot set {key!r} here; allowed: {checks.names(sorted(allowed))}",
            entry="defaults",
            field=key,
        )
        parse.keep(error, defaults)
    return defaults


def _entries(
    parse: _Parse,
    schedules: list[Any],
    defaults: Mapping[str, Any],
    base: Path,
    resolve: bool,
    default_runner: RunnerSpec | None,
) -> list[ScheduleEntry]:
    # One memo for the file: a herd of entries with one cron expression
    # computes each next fire once.
    memo = NextFireMemo()
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
                memo=memo,
            )
        except ConfigError as exc:
            for error in exc.errors:
                parse.marks.place(error, raw, defaults)
            parse.errors.append(exc)
            continue
        if entry.name in seen:
            duplicate = ConfigError("duplicate name", entry=entry.name, field="name")
            parse.keep(duplicate, raw)
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _fail_top(message: str, field: str) -> None:
    raise ConfigError(message, field=field)


def _file_runner(
    data: Mapping[str, Any], base: Path, state_dir: Path
) -> RunnerSpec | None:
    """The cache of entries without `runner:`: the file's, else the default."""
    if "runner" not in data:
        return RunnerSpec.from_mapping(
            {"cache_dir": str(default_cache_dir(state_dir))}, base
        )
    value = data["runner"]
    if checks.is_no_runner(value):
        return None
    try:
        return RunnerSpec.from_mapping(value, base)
    except RunnerSpecError as exc:
        raise ConfigError(str(exc), field=exc.field) from None


def _dask_settings(raw: Any, base: Path) -> DaskTLS | None:
    if raw is None:
        return None
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
    workers = checks.integer(raw, "max_workers", "executor", 4)
    return ExecutorSpec(kind=kind, max_workers=workers)


def _nats_settings(raw: Any, base_dir: Path | None = None) -> NatsSettings | None:
    if raw is None:
        return None
    try:
        return NatsSettings.from_mapping(raw, base_dir)
    except NatsSettingsError as exc:
        raise ConfigError(str(exc), entry="nats", field=exc.field) from None


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
    data, marks = read_yaml(file)
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return parse_config(
        data, base_dir=file.resolve().parent, resolve=resolve, path=file, marks=marks
    )
