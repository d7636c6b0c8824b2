"""One `run()` call, and what running it needs from the caching execution.

`committing.py` runs and stores a missed call through the `Host` protocol,
which `CachingExecution` implements: running never imports the execution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from styxdefs import Execution

from styxcache.key import RegisteredInput
from styxcache.manifest import Manifest, OutsideRecord
from styxcache.planning import Plan

__all__ = ["Call", "Host", "LineHandler"]

LineHandler = Callable[[str], None]
"""Receives one line of a tool's stdout or stderr, without its newline."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One `run()` call: the command line, the caller's handlers, its start."""

    cargs: list[str]
    handle_stdout: LineHandler | None
    handle_stderr: LineHandler | None
    started: float


class Host(Protocol):
    """What running and committing need from the caching execution."""

    @property
    def tool(self) -> str:
        """`package/id`."""

    @property
    def base(self) -> Execution:
        """The base execution (started now if it was deferred)."""

    @property
    def inner(self) -> Any:
        """The execution that owns the output folder."""

    @property
    def outputs(self) -> list[tuple[str, bool]]:
        """Declared outputs inside the entry: (relative path, optional)."""

    @property
    def inputs(self) -> list[RegisteredInput]:
        """Registered inputs, in order."""

    def outside_paths(self) -> list[str]:
        """Declared outputs outside the entry, sorted."""

    def outside_state(self, path: str) -> OutsideRecord:
        """What is at an outside output's path now."""

    def outside_problem(self, manifest: Manifest) -> str:
        """Why an entry's outside outputs do not match this call, or ""."""

    def drop_base_dir(self) -> None:
        """Remove the base runner's unused output folder."""

    def default_handler(self, stream: str) -> LineHandler | None:
        """Where a stream's lines go when the caller gave no handler."""

    def real_cargs(self, cargs: list[str]) -> list[str]:
        """The command line with the base execution's input paths."""

    def serve(self, plan: Plan, manifest: Manifest, call: Call, reason: str) -> bool:
        """Serve a verified entry; False if it vanished."""

    def run_in_base_folder(self, plan: Plan, call: Call) -> None:
        """Run uncached in the base runner's own folder."""

    def emit_run(self, plan: Plan, call: Call, *, ok: bool) -> None:
        """Emit the event of a call that ran."""
