"""The entry filters that `ls`, `export`, `push` and `pull` share.

One definition of each option (its name, type and help) and one test of an
entry against them, so the commands cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

import click

from styxcache.inventory import EntryInfo

from ._units import DurationType, SizeType, WhenType

__all__ = [
    "EntryFilter",
    "last_use_options",
    "size_options",
    "tool_matches",
    "tool_option",
    "used_since_option",
]

F = TypeVar("F", bound=Callable[..., Any])


def tool_option(command: F) -> F:
    """Add `--tool` (package/id, or a glob)."""
    return click.option(
        "--tool", help="Only entries of this tool (package/id, or a glob)."
    )(command)


def used_since_option(what: str = "used") -> Callable[[F], F]:
    """Add `--used-since` (a duration ago or an ISO date).

    Args:
        what: What the time is of, for the help ("used", "uploaded").
    """

    def add(command: F) -> F:
        return click.option(
            "--used-since",
            type=WhenType(),
            help=f"Only entries {what} after this time: a duration ago (2h) "
            "or an ISO date.",
        )(command)

    return add


def _pair(
    param: DurationType | SizeType, *options: tuple[str, str]
) -> Callable[[F], F]:
    """Options of one type, listed in the help in the order given."""

    def add(command: F) -> F:
        for name, text in reversed(options):
            command = click.option(name, type=param, help=text)(command)
        return command

    return add


last_use_options = _pair(
    DurationType(),
    ("--unused-for", "Only entries not used for this long."),
    ("--used-within", "Only entries used this recently."),
)
"""Add `--unused-for` and `--used-within`."""

size_options = _pair(
    SizeType(),
    ("--larger-than", "Only entries larger than this."),
    ("--smaller-than", "Only entries smaller than this."),
)
"""Add `--larger-than` and `--smaller-than`."""


def tool_matches(pattern: str | None, tool: str) -> bool:
    """Return True when `tool` is `pattern`, matches it as a glob, or no pattern.

    Args:
        pattern: `--tool`'s value.
        tool: An entry's `package/id`.
    """
    return pattern is None or tool == pattern or fnmatch.fnmatchcase(tool, pattern)


@dataclasses.dataclass(frozen=True)
class EntryFilter:
    """The filter options' values; None means "no such filter".

    Attributes:
        now: Unix time the command started (durations count back from it).
        tool: `--tool`.
        used_since: `--used-since`, a Unix time.
        unused_for: `--unused-for`, seconds.
        used_within: `--used-within`, seconds.
        larger_than: `--larger-than`, bytes.
        smaller_than: `--smaller-than`, bytes.
    """

    now: float
    tool: str | None = None
    used_since: float | None = None
    unused_for: float | None = None
    used_within: float | None = None
    larger_than: int | None = None
    smaller_than: int | None = None

    @property
    def by_last_use_only(self) -> bool:
        """No filter needs more than an entry's last use."""
        return (
            self.tool is None
            and self.larger_than is None
            and (self.smaller_than is None)
        )

    @property
    def by_nothing(self) -> bool:
        """No filter at all."""
        return self.by_last_use_only and (
            self.used_since is None
            and self.unused_for is None
            and self.used_within is None
        )

    def last_use_ok(self, last_used: float) -> bool:
        """Return True when a last use passes the time filters.

        Args:
            last_used: Unix time.
        """
        return (
            (self.used_since is None or last_used >= self.used_since)
            and (self.unused_for is None or last_used <= self.now - self.unused_for)
            and (self.used_within is None or last_used >= self.now - self.used_within)
        )

    def described_ok(self, tool: str, size: int) -> bool:
        """Return True when an entry's tool and size pass the filters.

        Args:
            tool: `package/id`.
            size: Bytes.
        """
        return (
            tool_matches(self.tool, tool)
            and (self.larger_than is None or size > self.larger_than)
            and (self.smaller_than is None or size < self.smaller_than)
        )

    def matches(self, entry: EntryInfo) -> bool:
        """Return True when an entry passes every filter.

        Args:
            entry: The entry.
        """
        return self.last_use_ok(entry.last_used) and self.described_ok(
            entry.tool, entry.size
        )
