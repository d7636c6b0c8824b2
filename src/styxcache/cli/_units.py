"""Units of the command line: durations, points in time and byte sizes.

Parsing turns user input into seconds, Unix times and bytes with a specific
error; formatting turns them back into short human text.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable

import click

__all__ = [
    "DurationType",
    "SizeType",
    "WhenType",
    "human_duration",
    "human_size",
    "human_time",
    "parse_duration",
    "parse_when",
]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parse a duration such as `30d`, `12h`, `90m`, `45s`, `2w` or `600`.

    Args:
        text: A number with an optional unit (s, m, h, d, w); plain numbers
            are seconds.

    Returns:
        Seconds.

    Raises:
        ValueError: If the text is not a duration.
    """
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30d, 12h, 90m, 45s, 2w)")
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[(unit or "s").lower()]


def parse_when(text: str, *, now: float | None = None) -> float:
    """Parse a point in time: a duration ago (`2h`) or an ISO 8601 date/time.

    A date or time without a zone is local time.

    Args:
        text: `2h`, `30d`, `2026-11-22`, `2026-11-22T18:00:00Z`...
        now: The current Unix time (for durations).

    Returns:
        A Unix time.

    Raises:
        ValueError: If the text is neither.
    """
    current = time.time() if now is None else now
    try:
        return current - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (give a duration ago such as 2h or 30d, "
            "or an ISO date such as 2026-11-22 or 2026-11-22T18:00:00Z)"
        ) from None
    return when.timestamp()


def human_size(size: float) -> str:
    """Format bytes with binary units, like ccache: `0 B`, `12.0 KiB`, `3.4 GiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Format seconds as `0.42 s`, `12.3 s`, `4 min 05 s`, `3 h 12 min`, `2 d 4 h`."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def human_time(when: float | None, *, now: float | None = None) -> str:
    """Format a Unix time as local `YYYY-MM-DD HH:MM` with how long ago it was."""
    if when is None:
        return "-"
    current = time.time() if now is None else now
    stamp = dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M")
    ago = current - when
    if ago < 0:
        return stamp
    if ago < 60:
        rel = "just now"
    elif ago < 3600:
        rel = f"{int(ago // 60)} min ago"
    elif ago < 2 * 86400:
        rel = f"{int(ago // 3600)} h ago"
    else:
        rel = f"{int(ago // 86400)} d ago"
    return f"{stamp} ({rel})"


class _ParsedType(click.ParamType):  # type: ignore[type-arg]
    """A click parameter type whose text goes through one parse function.

    A value that already has the parsed type (a default) passes unchanged; a
    parse error becomes click's usage error, naming the option.
    """

    parse: Callable[[str], float]
    parsed: type

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """Convert the option's text, or fail with a usage error."""
        if isinstance(value, self.parsed) and not isinstance(value, bool):
            return value  # type: ignore[return-value]
        try:
            return type(self).parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(_ParsedType):
    """A click parameter type for durations (seconds)."""

    name = "duration"
    parse = staticmethod(parse_duration)
    parsed = float


class WhenType(_ParsedType):
    """A click parameter type for points in time (Unix time)."""

    name = "time"
    parse = staticmethod(parse_when)
    parsed = float


class SizeType(_ParsedType):
    """A click parameter type for byte sizes (`50G`, `512M`, `1000`)."""

    name = "size"
    parsed = int

    @staticmethod
    def parse(text: str) -> int:
        """Parse a byte size (`policy.parse_size`)."""
        # Imported on use: policy's imports cost `stats` and `ls` 10 ms.
        from styxcache.policy import parse_size

        return parse_size(text)
