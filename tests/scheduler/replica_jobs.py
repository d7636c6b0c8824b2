"""Targets for the replica tests: every start is appended to `$STYX_RUN_LOG`.

One line per event, written with O_APPEND by whichever replica process runs
the target, so the test can count how often each run key really started.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def _log(ctx: Any, event: str) -> None:
    line = f"{ctx.key} {ctx.attempt} {os.getpid()} {event}\n"
    fd = os.open(os.environ["STYX_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def short(ctx: Any) -> None:
    """A short run that is still in flight for a moment (0.2 s of work)."""
    _log(ctx, "start")
    time.sleep(0.2)
    _log(ctx, "done")


def hang_first(ctx: Any) -> None:
    """The first attempt hangs (its replica gets killed); a retry finishes."""
    _log(ctx, "start")
    if ctx.attempt == 1:
        threading.Event().wait(600)
    _log(ctx, "done")


def subjects() -> list[dict[str, str]]:
    """Fan-out items: each fire runs `short` once per subject."""
    return [{"key": "sub-01"}, {"key": "sub-02"}, {"key": "sub-03"}]
