"""Targets and expanders run by Dask and NATS workers (`dist_jobs:...`).

Workers import this module by name, so tests put this folder on PYTHONPATH
before starting them. Side effects go to files named by environment
variables, which worker processes inherit:

* DIST_RUNS: one line per target call, `<run key> <pid>`.
* DIST_TOOL: one line per real tool execution (a cache hit adds none).
* DIST_DIR: marker files of the kill tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from styxdefs import Metadata

from styxcache.scheduler import RunContext

ECHO = Metadata(id="echo-log", name="echo-log", package="test")
# $0 is the value; the log path comes from the environment, so it is not
# part of the cache key.
SCRIPT = 'echo "$0" >> "$DIST_TOOL"; sleep "$1"; echo "$0" > out.txt'


def _append(variable: str, line: str) -> None:
    fd = os.open(os.environ[variable], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def run_item(ctx: RunContext) -> None:
    """Run the echo tool on the item's value through the worker's cached runner."""
    _append("DIST_RUNS", f"{ctx.key} {os.getpid()}")
    value = str(ctx.get("value", ctx.schedule))
    pause = str(ctx.get("pause", 0))
    execution = ctx.runner.start_execution(ECHO)
    execution.params({"@type": "test/echo-log", "value": value, "pause": pause})
    execution.output_file("out.txt")
    execution.run(["sh", "-c", SCRIPT, value, pause])


def six_items() -> list[dict[str, Any]]:
    return [{"key": f"i{n}", "value": f"v{n}"} for n in range(6)]


def four_items() -> list[dict[str, Any]]:
    return [{"key": f"i{n}", "value": f"v{n}"} for n in range(4)]


def twin_items() -> list[dict[str, Any]]:
    # Two items, one tool call: identical params, so one cache key.
    return [{"key": k, "value": "same", "pause": 1} for k in ("a", "b")]


def one_twin() -> list[dict[str, Any]]:
    return [{"key": "a", "value": "same", "pause": 1}]


def exit_once(ctx: RunContext) -> None:
    """Kill the worker process the first time (as a crash would), then work."""
    marker = Path(os.environ["DIST_DIR"]) / "crashed-once"
    if not marker.exists():
        marker.touch()
        os._exit(17)
    run_item(ctx)


def hold_once(ctx: RunContext) -> None:
    """First call: say where it runs and wait to be killed; later calls work."""
    folder = Path(os.environ["DIST_DIR"])
    if not (folder / "killed").exists():
        (folder / f"holding.{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (folder / "killed").exists():
            time.sleep(0.05)  # polls for the test's kill, bounded
    run_item(ctx)


CAT = Metadata(id="cat-input", name="cat-input", package="test")


def hash_input(ctx: RunContext) -> None:
    """Run a tool on the shared file $DIST_DIR/input.txt (hashed by each worker)."""
    value = str(ctx["value"])
    execution = ctx.runner.start_execution(CAT)
    execution.params({"@type": "test/cat-input", "input": "in", "value": value})
    path = execution.input_file(str(Path(os.environ["DIST_DIR"]) / "input.txt"))
    execution.output_file("out.txt")
    script = 'cat "$0" > out.txt; echo "$1" >> "$DIST_TOOL"'
    execution.run(["sh", "-c", script, path, value])


def four_values() -> list[dict[str, Any]]:
    return [{"key": f"i{n}", "value": f"v{n}"} for n in range(4)]


def note_run(ctx: RunContext) -> str:
    """Say where the run ran (the executor contract's target)."""
    _append("DIST_RUNS", f"{ctx.key} {os.getpid()}")
    return ctx.key


def boom(ctx: RunContext) -> None:
    raise RuntimeError(f"{ctx.key} exploded on purpose")


def memo_put_and_read(folder: str, key: str) -> list[str]:
    """Write this process's digest row, then list every row visible here."""
    from styxcache.memo import DigestMemo

    memo = DigestMemo(Path(folder))
    memo.put(key, f"digest-of-{key}")
    return sorted(k for k in ("w0", "w1", "test") if memo.get(k) is not None)


def two_sessions() -> list[dict[str, Any]]:
    """Seeds 002/003's example expansion: one context dict per active session."""
    return [{"session_id": "s1"}, {"session_id": "s2"}]
