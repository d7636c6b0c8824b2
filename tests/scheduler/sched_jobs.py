"""Importable targets and expanders for the scheduler tests (`sched_jobs:...`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from styxcache.events import CacheEvent, publish
from styxcache.modes import current_mode

CALLS: list[Any] = []
ITEMS: list[dict[str, Any]] = [{"subject": "s1"}, {"subject": "s2"}]
GATE = threading.Event()


def record(ctx: Any) -> None:
    CALLS.append(ctx)


def record_mode(ctx: Any) -> None:
    CALLS.append((ctx.key, current_mode().value))


def fake_pipeline(ctx: Any) -> None:
    """Publish events the way a CachingRunner would: one hit, two misses."""
    publish(CacheEvent(kind="hit", tool="pkg/a", key="k1"))
    publish(CacheEvent(kind="miss", tool="pkg/b", key="k2"))
    publish(CacheEvent(kind="miss", tool="pkg/c", key="k3"))
    CALLS.append(ctx)


def boom(ctx: Any) -> None:
    raise RuntimeError("target exploded")


def list_subjects() -> list[dict[str, Any]]:
    return list(ITEMS)


def broken_expander() -> list[dict[str, Any]]:
    raise OSError("subject database unreachable")


def not_a_list() -> Any:
    return {"subject": "s1"}


def append_to_file(ctx: Any) -> None:
    """Append the run key to the file named by $SCHED_OUT (multi-process test)."""
    line = f"{ctx.key} {os.getpid()}\n".encode()
    fd = os.open(os.environ["SCHED_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def touch(ctx: Any) -> None:
    Path(os.environ["SCHED_OUT"]).touch()


def sort_subjects(ctx: Any) -> None:
    """Sort a file through the global Styx runner (a cache, when one is set)."""
    from styxdefs import Metadata, get_global_runner

    source = os.environ["SCHED_SORT_INPUT"]
    execution = get_global_runner().start_execution(
        Metadata(id="sort-subjects", name="Sort subjects", package="coreutils")
    )
    execution.params({"@type": "coreutils/sort-subjects", "input": source})
    local = execution.input_file(source)
    execution.output_file("sorted.txt")
    execution.run(["sort", local, "-o", "sorted.txt"])
