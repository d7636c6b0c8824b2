"""Captured stdout/stderr: streamed to gzip while the tool runs, replayed on hits.

Lines are written as they arrive, so memory stays flat for a tool that prints
gigabytes, and the log of a failed run is complete up to the failure.
"""

from __future__ import annotations

import gzip
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "LineLog",
    "Tee",
    "open_log",
    "open_replays",
    "raise_handler_error",
    "replay",
]


class LineLog:
    """A gzip file of lines, appended to from the base runner's reader thread.

    Writing never raises: the base runner calls `write` from the thread that
    drains the tool's pipe, and an exception there (a full disk) would stop
    the draining and could hang the tool. The first error is kept in `error`
    instead; a log with an error is incomplete and must not be stored.
    """

    def __init__(self, path: Path) -> None:
        """Prepare the log; the file is created by the first line or by `close`.

        Args:
            path: The `.gz` file to create.
        """
        self.path = path
        self.lines = 0
        self.error: OSError | None = None
        self._lock = threading.Lock()
        self._handle: io.TextIOWrapper | None = None
        self._closed = False

    def _open(self) -> io.TextIOWrapper | None:
        # Opened at the first line: most tools print nothing, and a gzip
        # stream costs tens of microseconds a miss to set up and close.
        if self._handle is None and self.error is None and not self._closed:
            try:
                # Level 1: logs can be huge and are rarely read; speed beats ratio.
                raw = gzip.open(self.path, "wb", compresslevel=1)  # noqa: SIM115 - closed by close()
                self._handle = io.TextIOWrapper(
                    raw, encoding="utf-8", errors="surrogateescape"
                )
            except OSError as exc:
                self.error = exc
        return self._handle

    def write(self, line: str) -> None:
        """Append one line (without its newline).

        Args:
            line: The line.
        """
        with self._lock:
            self.lines += 1
            handle = self._open()
            if handle is None or self.error is not None:
                return
            try:
                handle.write(line)
                handle.write("\n")
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        """Flush and close the file; a failure is kept in `error`, not raised.

        A log that got no line is written as an empty gzip file.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handle, self._handle = self._handle, None
            if handle is None:
                if self.error is None:
                    self._write_empty()
                return
            try:
                handle.close()
            except OSError as exc:
                # io and gzip close their file descriptors even when the
                # final flush fails, so the folder can still be removed.
                if self.error is None:
                    self.error = exc

    def _write_empty(self) -> None:
        try:
            fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666
            )
        except OSError as exc:
            self.error = exc
            return
        try:
            os.write(fd, _EMPTY_GZIP)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(fd)


_EMPTY_GZIP = gzip.compress(b"", compresslevel=1, mtime=0)
"""A gzip stream of no bytes: what a log of no lines holds."""


class Tee:
    """Writes each line to the entry's log, then hands it to the caller's handler.

    A handler that raises must not cut the log short: the base runner may stop
    reading the stream (LocalRunner does, silently), and the entry would then
    replay truncated output forever. The handler's first error is kept, the
    handler gets no more lines, and the error is raised once the run is stored.
    """

    def __init__(self, log: LineLog, handler: Callable[[str], None] | None) -> None:
        self.log = log
        self.handler = handler
        self.error: Exception | None = None

    def __call__(self, line: str) -> None:
        """Log one line, then hand it to the handler (until it raises).

        Args:
            line: The line, without its newline.
        """
        self.log.write(line)
        if self.handler is None or self.error is not None:
            return
        try:
            self.handler(line)
        except Exception as exc:  # raised once the run is stored
            self.error = exc


def raise_handler_error(*tees: Tee) -> None:
    """Raise the first error a tee's handler raised, if any.

    Args:
        *tees: The run's tees.
    """
    for tee in tees:
        if tee.error is not None:
            raise tee.error


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


def open_replays(
    entry: Path,
    logs: list[tuple[str, int, Callable[[str], None] | None]],
) -> list[tuple[IO[str], Callable[[str], None]]] | None:
    """Open every log a hit replays before any line is handed out.

    Args:
        entry: The entry folder the logs are in.
        logs: `(file name, stored line count, handler or None)` per stream; a
            log with no line, or no handler to take its lines, is not opened
            (nor its path built: most tools print nothing, and a tiny hit
            would spend a tenth of its time joining paths).

    Returns:
        The open handles with their handlers; None when a log could not be
        opened (the entry vanished: a concurrent `gc`), with none left open.
    """
    opened: list[tuple[IO[str], Callable[[str], None]]] = []
    for name, lines, handler in logs:
        if not lines or handler is None:
            continue
        try:
            opened.append((open_log(entry / name), handler))
        except OSError:
            for handle, _ in opened:
                handle.close()
            return None
    return opened


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
