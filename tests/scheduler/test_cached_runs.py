"""Scheduled runs through a real CachingRunner(LocalRunner) in worker threads."""

from __future__ import annotations

import shutil
from pathlib import Path

from styxdefs import LocalRunner, Metadata

from conftest import require, run_tool
from styxcache import CachingRunner
from styxcache.scheduler import FakeClock, RunContext, Scheduler, ThreadExecutor

SORT = Metadata(id="sort-lines", name="Sort lines", package="coreutils")


def test_hits_and_misses_of_threaded_runs_reach_the_ledger(
    tmp_path: Path, clock: FakeClock
) -> None:
    require(shutil.which("sort") is not None, "needs coreutils sort")
    source = tmp_path / "subjects.txt"
    source.write_text("sub-02\nsub-01\n")
    runner = CachingRunner(LocalRunner(data_dir=tmp_path / "styx"), tmp_path / "cache")

    def pipeline(ctx: RunContext) -> None:
        run_tool(
            runner,
            SORT,
            {"@type": "coreutils/sort-lines", "input": str(source)},
            inputs={"input": {}},
            outputs={"sorted": "sorted.txt"},
            cargs=lambda paths: ["sort", paths["input"], "-o", "sorted.txt"],
        )

    scheduler = Scheduler(
        clock=clock, executor=ThreadExecutor(1), state_dir=tmp_path / "s"
    )
    scheduler.register_task("nightly", 86_400, pipeline, pass_context=True)
    scheduler.register_task(
        "rebuild", 86_400, pipeline, pass_context=True, cache="refresh"
    )
    scheduler.run_pending()
    for _ in range(2):
        clock.advance(86_400)
        scheduler.run_pending()
        assert scheduler.drain(timeout=120)
    nightly = sorted(scheduler.ledger.history(entry="nightly"), key=lambda r: r.nominal)
    rebuild = scheduler.ledger.history(entry="rebuild")
    assert all(r.state == "ok" for r in nightly + rebuild)
    # One worker thread runs nightly, then rebuild, each night. The refresh
    # schedule reruns the tool every time (counted as a miss); the normal
    # schedule misses on night one and hits on night two.
    assert all((r.hits, r.misses) == (0, 1) for r in rebuild)
    assert [(r.hits, r.misses) for r in nightly] == [(0, 1), (1, 0)]
    scheduler.close()
