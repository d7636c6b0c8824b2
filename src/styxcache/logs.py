"""Captured stdout/stderr: streamed to gzip while the tool runs, replayed on hits.

Lines are written as they arrive, so memory stays flat for a tool that prints
gigabytes, and the log of a failed run is complete up to the failure.
"""

from __future__ import annotations

import gzip
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["LineLog", "open_log", "replay"]


class LineLog:
    """A gzip file of lines, appended to from the base runner's reader thread.

    Writing never raises: the base runner calls `write` from the thread that
    drains the tool's pipe, and an exception there (a full disk) would stop
    the draining and could hang the tool. The first error is kept in `error`
    instead; a log with an error is incomplete and must not be stored.
    """

    def __init__(self, path: Path) -> None:
        """Open the log for writing.

        Args:
            path: The `.gz` file to create.
        """
        self.path = path
        self.lines = 0
        self.error: OSError | None = None
        self._lock = threading.Lock()
        self._handle: io.TextIOWrapper | None = None
        try:
            # Level 1: logs can be huge and are rarely read; speed beats ratio.
            raw = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 - closed by close()
            self._handle = io.TextIOWrapper(
                raw, encoding="utf-8", errors="surrogateescape"
            )
        except OSError as exc:
            self.error = exc

    def write(self, line: str) -> None:
        """Append one line (without its newline).

        Args:
            line: The line.
        """
        with self._lock:
            self.lines += 1
            if self._handle is None or self.error is not None:
                return
            try:
                self._handle.write(line)
                self._handle.write("\n")
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        """Flush and close the file; a failure is kept in `error`, not raised."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            try:
                handle.close()
            except OSError as exc:
                # io and gzip close their file descriptors even when the
                # final flush fails, so the folder can still be removed.
                if self.error is None:
                    self.error = exc


def open_log(path: Path) -> IO[str]:
    """Open a stored log for replay.

    Opening first and reading later lets a hit hold both logs before it hands
    any line to the caller: if the entry vanishes (a concurrent `gc`), the
    open fails and the call can run the tool instead, with no line delivered
    twice.

    Args:
        path: The `.gz` log.

    Returns:
        A text handle; the caller closes it.
    """
    return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")


def replay(source: Path | IO[str], handler: Callable[[str], None]) -> int:
    """Feed a stored log's lines to a handler, in order.

    Args:
        source: The `.gz` log, or a handle from `open_log` (closed here).
        handler: Called once per line, without the newline.

    Returns:
        The number of lines replayed.
    """
    count = 0
    handle = open_log(source) if isinstance(source, Path) else source
    with handle:
        for line in handle:
            handler(line[:-1] if line.endswith("\n") else line)
            count += 1
    return count
