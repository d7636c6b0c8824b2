"""`styxcache worker`: run the entries of its own schedule file when NATS asks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from styxcache.cli._logging import (
    configure_logging,
    log_format_option,
    log_level_option,
)
from styxcache.scheduler.config_errors import ConfigError
from styxcache.scheduler.nats_connect import (
    ENV_INSECURE,
    NatsSettings,
    NatsSettingsError,
)
from styxcache.scheduler.nats_worker import WorkerEntry, WorkerSettings, serve
from styxcache.scheduler.publish import PublishAction
from styxcache.scheduler.refs import resolve_callable
from styxcache.scheduler.runner_spec import RunnerSpec, RunnerSpecError

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)

# Options naming a file of the NATS connection: (option, NatsSettings field,
# help). The same table declares the options and applies them.
_NATS_FILES = (
    ("--password-file", "password_file", "File holding the NATS password."),
    (
        "--token-file",
        "token_file",
        "File holding a NATS token (else $STYXCACHE_NATS_TOKEN).",
    ),
    ("--nkey-seed", "nkey_seed_file", "File holding an NKey seed."),
    ("--creds", "creds_file", "NATS .creds file (JWT and NKey seed)."),
    ("--tls-ca", "tls_ca_file", "CA bundle the server certificate is checked against."),
    ("--tls-cert", "tls_cert_file", "Client certificate (mutual TLS)."),
    ("--tls-key", "tls_key_file", "Key of --tls-cert."),
)
# Other options that override a NatsSettings field: (parameter, field).
_NATS_TEXTS = (
    ("url", "url"),
    ("subject_prefix", "subject_prefix"),
    ("user", "user"),
    ("key_file", "key_file"),
)


# Numbers that tune the worker: (option, parameter, type, default, help).
_TUNING = (
    (
        "--concurrency",
        "concurrency",
        click.IntRange(min=1),
        1,
        "Runs this worker executes at once (match the node's cores).",
    ),
    (
        "--heartbeat",
        "heartbeat_seconds",
        click.FloatRange(min=0.01),
        5.0,
        "Seconds between heartbeats; keep below the scheduler's lost_after_seconds.",
    ),
    (
        "--connect-timeout",
        "connect_timeout",
        click.FloatRange(min=0.1),
        30.0,
        "Seconds to wait for the server at startup.",
    ),
)


def _tuning_options(command: F) -> F:
    for option, param, kind, default, text in reversed(_TUNING):
        command = click.option(
            option, param, type=kind, default=default, show_default=True, help=text
        )(command)
    return command


def _param(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _nats_file_options(command: F) -> F:
    for option, _, text in reversed(_NATS_FILES):
        command = click.option(option, type=_FILE, help=text)(command)
    return command


@click.command()
@click.option(
    "--schedule",
    "schedule_file",
    metavar="FILE",
    help=(
        "The worker's own schedule file. Its entries are the only work this"
        " worker runs (a task names an entry, never code); its nats: section"
        " gives the server, credentials and signing key."
    ),
)
@click.option(
    "--allow",
    "allowed",
    multiple=True,
    metavar="NAME=MODULE:FUNCTION",
    help=(
        "Also run entry NAME by calling MODULE:FUNCTION(ctx), without a"
        " schedule file (repeatable). Uses --cache-dir as its cache."
    ),
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory of --allow entries (shared by every node).",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Take runs of this entry only (repeatable; default: every entry known).",
)
@click.option(
    "--nats",
    "url",
    metavar="URL",
    help=(
        "NATS server, e.g. nats://10.0.0.5:4222 or tls://nats.lab:4222"
        " (default: the schedule file's nats: url, else $STYXCACHE_NATS_URL)."
    ),
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder put on sys.path so the entries' targets import (repeatable).",
)
@click.option(
    "--subject-prefix",
    help=(
        "First token of every subject; must match the scheduler's nats:"
        " subject_prefix (default: the file's, else styxcache)."
    ),
)
@click.option(
    "--queue",
    default="styxcache-workers",
    show_default=True,
    help="NATS queue group; workers sharing it split the runs, each run goes to one.",
)
@_tuning_options
@click.option(
    "--max-runs", type=click.IntRange(min=1), help="Exit after this many runs."
)
@click.option(
    "--key-file",
    type=_FILE,
    help=(
        "File holding the shared message signing key (same as the scheduler's;"
        " default: nats: key_file, $STYXCACHE_NATS_KEY_FILE or $STYXCACHE_NATS_KEY)."
    ),
)
@click.option(
    "--insecure-no-signing",
    is_flag=True,
    help=(
        "Run without a signing key: anyone who can publish to the server can"
        " then make this worker run its entries. Private test servers only."
    ),
)
@click.option(
    "--user", help="NATS user (password: --password-file or $STYXCACHE_NATS_PASSWORD)."
)
@_nats_file_options
@log_level_option
@log_format_option
def worker(**options: Any) -> None:
    """Run scheduled work sent over NATS, through the cache.

    A worker runs only the entries of its own schedule file (--schedule) or
    of --allow: a task message names an entry and carries its data, never
    code. Tasks, results and control messages are signed with a shared key
    (--key-file); unsigned, forged or replayed messages are dropped and
    counted. Workers share a queue group, so each run goes to one of them.
    SIGTERM or Ctrl-C stops taking runs and finishes the ones in hand.

    \b
    Examples:
      styxcache worker --schedule schedule.yaml --key-file /etc/styxcache/nats.key
      styxcache worker --schedule schedule.yaml --only nightly --concurrency 4
      styxcache worker --nats tls://nats.lab:4222 --tls-ca ca.pem \\
          --allow nightly=pipeline_jobs:process_subject --cache-dir /shared/cache
    """  # noqa: D301 - click's \b marker must be a real backspace
    configure_logging(options["log_level"], options["log_format"])
    for folder in reversed(options["paths"]):
        sys.path.insert(0, str(folder.resolve()))
    settings = _settings(options)
    try:
        asyncio.run(_main(settings))
    except OSError as exc:
        # Built from the masked URL and redacted texts: no secret here.
        raise click.ClickException(str(exc)) from None


def _settings(options: dict[str, Any]) -> WorkerSettings:
    entries, nats = _schedule_entries(options["schedule_file"])
    entries.update(_allowed_entries(options["allowed"], options["cache_dir"]))
    entries = _only(entries, options["only"])
    nats = _nats_overrides(nats, options)
    try:
        return WorkerSettings(
            nats=nats,
            entries=entries,
            queue=options["queue"],
            concurrency=options["concurrency"],
            heartbeat_seconds=options["heartbeat_seconds"],
            max_runs=options["max_runs"],
            connect_timeout_seconds=options["connect_timeout"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _schedule_entries(
    file: str | None,
) -> tuple[dict[str, WorkerEntry], NatsSettings]:
    """The entries and NATS settings of the worker's own schedule file."""
    nats = NatsSettings.from_mapping(None)
    if file is None:
        return {}, nats
    path = Path(file)
    if not path.is_file():
        raise click.BadParameter(
            f"{file!r} is not a file. --schedule takes the worker's schedule"
            " file; to take only some of its entries, add --only NAME.",
            param_hint="--schedule",
        )
    # Imported here: a worker without a schedule file needs no YAML loader.
    from styxcache.scheduler.config import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    entries = {
        entry.name: WorkerEntry(entry.target, entry.pass_context, entry.runner)
        for entry in config.entries
        # Publish entries are published by the scheduler, never run by workers.
        if entry.target is not None and not isinstance(entry.target, PublishAction)
    }
    return entries, config.nats if config.nats is not None else nats


def _allowed_entries(
    allowed: tuple[str, ...], cache_dir: Path | None
) -> dict[str, WorkerEntry]:
    """The `--allow NAME=module:function` entries, cached in `--cache-dir`."""
    runner = None
    if cache_dir is not None:
        try:
            runner = RunnerSpec.from_mapping({"cache_dir": str(cache_dir)})
        except RunnerSpecError as exc:
            raise click.BadParameter(str(exc), param_hint="--cache-dir") from None
    entries: dict[str, WorkerEntry] = {}
    for spec in allowed:
        name, sep, ref = spec.partition("=")
        if not sep or not name:
            raise click.BadParameter(
                f"expected NAME=module:function, got {spec!r}", param_hint="--allow"
            )
        try:
            resolve_callable(ref)
        except ValueError as exc:
            raise click.BadParameter(f"{name}: {exc}", param_hint="--allow") from None
        entries[name] = WorkerEntry(ref, True, runner)
    return entries


def _only(
    entries: dict[str, WorkerEntry], only: tuple[str, ...]
) -> dict[str, WorkerEntry]:
    """Keep the `--only` entries; refuse an empty worker."""
    if only:
        missing = sorted(set(only) - set(entries))
        if missing:
            raise click.BadParameter(
                f"not an entry of this worker: {', '.join(missing)}",
                param_hint="--only",
            )
        entries = {name: entries[name] for name in only}
    if not entries:
        raise click.UsageError(
            "nothing to run: give the worker its schedule file (--schedule FILE)"
            " or an allowlist (--allow NAME=module:function)"
        )
    return entries


def _nats_overrides(nats: NatsSettings, options: dict[str, Any]) -> NatsSettings:
    """Apply the command line's NATS options over the file's settings."""
    pairs = [*_NATS_TEXTS, *((_param(o), field) for o, field, _ in _NATS_FILES)]
    changes: dict[str, Any] = {
        field: str(options[param])
        for param, field in pairs
        if options[param] is not None
    }
    if options["insecure_no_signing"]:
        changes["insecure_no_signing"] = True
    try:
        nats = dataclasses.replace(nats, **changes)
    except NatsSettingsError as exc:
        raise click.BadParameter(str(exc), param_hint=f"NATS {exc.field}") from None
    if nats.insecure_no_signing:
        logging.getLogger("styxcache.worker").warning(
            "--insecure-no-signing (or %s): messages are neither signed nor checked",
            ENV_INSECURE,
        )
    return nats


async def _main(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)
