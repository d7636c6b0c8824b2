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

__all__ = ["LineLog", "replay"]


class LineLog:
    """A gzip file of lines, appended to from the base runner's reader thread."""

    def __init__(self, path: Path) -> None:
        """Open the log for writing.

        Args:
            path: The `.gz` file to create.
        """
        self.path = path
        self.lines = 0
        self._lock = threading.Lock()
        # Level 1: logs can be huge and are rarely read; speed beats ratio.
        self._raw = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 - closed by close()
        self._handle = io.TextIOWrapper(
            self._raw, encoding="utf-8", errors="surrogateescape"
        )

    def write(self, line: str) -> None:
        """Append one line (without its newline).

        Args:
            line: The line.
        """
        with self._lock:
            self._handle.write(line)
            self._handle.write("\n")
            self.lines += 1

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._handle.close()


def replay(path: Path, handler: Callable[[str], None]) -> int:
    """Feed a stored log's lines to a handler, in order.

    Args:
        path: The `.gz` log.
        handler: Called once per line, without the newline.

    Returns:
        The number of lines replayed.
    """
    count = 0
    with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            handler(line[:-1] if line.endswith("\n") else line)
            count += 1
    return count
