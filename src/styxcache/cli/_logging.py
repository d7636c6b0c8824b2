"""Log output of the long-running commands (`schedule run`, `worker`).

On a terminal, rich output; anywhere else (a file, a pipe, journald), plain
records, one line each, with ISO-8601 timestamps, so `grep` and log shippers
see whole records. `--log-format json` prints one JSON object per line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_format_option",
    "log_level_option",
]

LOG_FORMATS = ("auto", "text", "json", "rich")
"""`auto`: rich on a terminal, else text."""

F = TypeVar("F", bound=Callable[..., Any])


def _iso(record: logging.LogRecord) -> str:
    return (
        dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        .astimezone()
        .isoformat(timespec="milliseconds")
    )


class TextFormatter(logging.Formatter):
    r"""`<ISO time> <LEVEL> <logger>: <message>` on one line.

    Newlines inside a message or traceback are written as `\\n`, so one
    record is always one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as one line."""
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + record.stack_info
        text = text.replace("\r", "").replace("\n", "\\n")
        return f"{_iso(record)} {record.levelname} {record.name}: {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a JSON line."""
        data: dict[str, Any] = {
            "time": _iso(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", log_format: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Send log records to `stream` (stderr) in the chosen format.

    Args:
        level: Root level name (`DEBUG`, `INFO`, ...).
        log_format: One of `LOG_FORMATS`.
        stream: Where to write; default stderr.

    Returns:
        The installed handler.

    Raises:
        ValueError: For an unknown format.
    """
    out = stream if stream is not None else sys.stderr
    chosen = log_format.lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    if chosen == "auto":
        is_tty = getattr(out, "isatty", None)
        chosen = "rich" if is_tty is not None and is_tty() else "text"
    handler: logging.Handler
    if chosen == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=out),
            show_path=False,
            rich_tracebacks=False,
            log_time_format="[%Y-%m-%dT%H:%M:%S]",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return handler


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The `--log-level` choices."""


def _choice_option(
    name: str, choices: tuple[str, ...], default: str, text: str
) -> Callable[[F], F]:
    return click.option(
        name,
        type=click.Choice(choices, case_sensitive=False),
        default=default,
        show_default=True,
        help=text,
    )


def log_level_option(command: F) -> F:
    """Add `--log-level DEBUG|INFO|WARNING|ERROR` (default INFO) to a command."""
    text = "Least severe log records shown."
    return _choice_option("--log-level", LOG_LEVELS, "INFO", text)(command)


def log_format_option(command: F) -> F:
    """Add `--log-format auto|text|json|rich` to a command."""
    text = (
        "Log records: text (one line each, ISO-8601 times), json (one"
        " object per line), rich; auto is rich on a terminal, else text."
    )
    return _choice_option("--log-format", LOG_FORMATS, "auto", text)(command)
