"""Scheduled runs and fan-out on real Dask clusters on loopback."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_helpers import LOOPBACK, Processes, free_port, lines, port_open, wait_for

from conftest import require
from styxcache.events import read_events
from styxcache.memo import DigestMemo
from styxcache.scheduler import FakeClock, RunRecord, Scheduler

HOUR = 3600

try:
    import dask

    import distributed
except ImportError:  # the test extra installs it; require() says so in CI
    distributed = None


@pytest.fixture
def cluster(dist_env: dict[str, Path]) -> Iterator[Any]:
    """Two single-threaded worker processes (they inherit PYTHONPATH)."""
    require(
        distributed is not None, "needs distributed (pip install 'styxcache[dask]')"
    )
    # A worker that dies once fails its task at once (KilledWorker), so the
    # scheduler's own retry rule is what the kill test sees.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            dashboard_address=None,
        ) as local,
        distributed.Client(local) as client,
    ):
        client.wait_for_workers(2)
        yield client


def runner_settings(tmp_path: Path) -> dict[str, object]:
    return {"cache_dir": str(tmp_path / "cache"), "policy": {"lease_seconds": 5}}


def items_of(scheduler: Scheduler, entry: str) -> list[RunRecord]:
    return [r for r in scheduler.ledger.history(entry=entry) if r.item != "*"]


def test_fanout_on_local_cluster_runs_each_item_once(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], cluster: Any
) -> None:
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "state")
    scheduler.register_task(
        "fan",
        HOUR,
        "dist_jobs:run_item",
        expand_from="dist_jobs:six_items",
        executor=cluster,  # a distributed.Client, passed in code
        runner=runner_settings(tmp_path),
    )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        first = items_of(scheduler, "fan")
        assert sorted(r.item for r in first) == [f"i{n}" for n in range(6)]
        assert all((r.state, r.hits, r.misses) == ("ok", 0, 1) for r in first)
        runs = [line.split() for line in lines(dist_env["DIST_RUNS"])]
        assert sorted(key for key, _ in runs) == sorted(r.key for r in first)
        worker_pids = set(cluster.run(lambda: __import__("os").getpid()).values())
        assert {int(pid) for _, pid in runs} <= worker_pids
        assert sorted(lines(dist_env["DIST_TOOL"])) == [f"v{n}" for n in range(6)]

        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        second = [r for r in items_of(scheduler, "fan") if r not in first]
        assert len(second) == 6
        assert all((r.state, r.hits, r.misses) == ("ok", 1, 0) for r in second)
        assert len(lines(dist_env["DIST_TOOL"])) == 6
        # Event files are per process: their union holds every worker's events.
        events = list(read_events(tmp_path / "cache"))
        assert (sum(e.kind == "miss" for e in events), len(events)) == (6, 12)
    finally:
        scheduler.close()


def test_identical_items_on_two_workers_run_the_tool_once(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], cluster: Any
) -> None:
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "state")
    scheduler.register_task(
        "twins",
        HOUR,
        "dist_jobs:run_item",
        expand_from="dist_jobs:twin_items",
        executor=cluster,
        runner=runner_settings(tmp_path),
    )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        rows = items_of(scheduler, "twins")
        assert [r.state for r in rows] == ["ok", "ok"]
        assert sorted((r.hits, r.misses) for r in rows) == [(0, 1), (1, 0)]
        assert lines(dist_env["DIST_TOOL"]) == ["same"]
        # Two idle workers and two ready tasks: Dask gives one to each, so
        # the second waited on the first's lease in another process.
        pids = {line.split()[1] for line in lines(dist_env["DIST_RUNS"])}
        assert len(pids) == 2
    finally:
        scheduler.close()


def test_killed_worker_is_recorded_interrupted_and_retried(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], cluster: Any
) -> None:
    seen: list[RunRecord] = []
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "state", on_run=seen.append)
    scheduler.register_task(
        "fragile",
        HOUR,
        "dist_jobs:exit_once",
        pass_context=True,
        executor=cluster,
        retries=1,
        runner=runner_settings(tmp_path),
    )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (row,) = scheduler.ledger.history(entry="fragile")
        assert (row.state, row.misses) == ("ok", 1)
        (interrupted,) = [r for r in seen if r.state == "interrupted"]
        assert "KilledWorker" in interrupted.reason
        assert "retry 1 of 1" in interrupted.reason
        assert lines(dist_env["DIST_TOOL"]) == ["fragile"]
    finally:
        scheduler.close()


@pytest.fixture
def dask_cli(dist_env: dict[str, Path], processes: Processes) -> Iterator[str]:
    """`dask scheduler` and `dask worker` as separate processes on loopback."""
    require(
        distributed is not None, "needs distributed (pip install 'styxcache[dask]')"
    )
    port = free_port()
    scheduler = processes.start(
        "dask-scheduler",
        [
            sys.executable,
            "-m",
            "dask",
            "scheduler",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-dashboard",
        ],
    )
    wait_for(lambda: port_open(port) or scheduler.poll() is not None, "dask scheduler")
    assert scheduler.poll() is None, processes.log("dask-scheduler")
    address = f"tcp://{LOOPBACK}:{port}"
    for name in ("dask-worker-1", "dask-worker-2"):
        processes.start(
            name,
            [
                sys.executable,
                "-m",
                "dask",
                "worker",
                address,
                "--host",
                LOOPBACK,
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
        )
    with distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    yield f"dask://{LOOPBACK}:{port}"


def test_yaml_entry_on_separate_dask_scheduler_and_workers(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], dask_cli: str
) -> None:
    config = tmp_path / "schedule.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir: state
            executor: inline
            schedules:
              - name: subjects
                interval_seconds: 3600
                target: dist_jobs:run_item
                expand_from: dist_jobs:four_items
                executor: {dask_cli}
                runner: {{cache_dir: cache, policy: {{lease_seconds: 5}}}}
            """
        )
    )
    scheduler = Scheduler.from_yaml(config, clock=clock)
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        rows = items_of(scheduler, "subjects")
        assert sorted((r.item, r.state, r.misses) for r in rows) == [
            (f"i{n}", "ok", 1) for n in range(4)
        ]
        assert scheduler.executor_for(scheduler.jobs["subjects"]).name == "dask"
        # The relative cache_dir is the YAML file's folder's, on every worker.
        assert len(list(read_events(tmp_path / "cache"))) == 4
        assert sorted(lines(dist_env["DIST_TOOL"])) == [f"v{n}" for n in range(4)]
    finally:
        scheduler.close()


def test_worker_processes_share_the_local_digest_memo(
    tmp_path: Path,
    clock: FakeClock,
    dist_env: dict[str, Path],
    cluster: Any,
) -> None:
    # The workers inherited STYXCACHE_MEMO_DIR from the test's environment
    # (tests/conftest.py isolates it per test), so they share one memo file.
    memo_dir = Path(os.environ["STYXCACHE_MEMO_DIR"])
    source = dist_env["DIST_DIR"] / "input.txt"
    source.write_text("subject data\n")
    old = source.stat().st_mtime - 3600  # settled: older than the memo's window
    os.utime(source, (old, old))
    scheduler = Scheduler(clock=clock, state_dir=tmp_path / "state")
    scheduler.register_task(
        "memo",
        HOUR,
        "dist_jobs:hash_input",
        expand_from="dist_jobs:four_values",
        executor=cluster,
        runner=runner_settings(tmp_path),
    )
    try:
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        rows = items_of(scheduler, "memo")
        assert sorted((r.state, r.misses) for r in rows) == [("ok", 1)] * 4
        assert sorted(lines(dist_env["DIST_TOOL"])) == [f"v{n}" for n in range(4)]
        assert (memo_dir / "digests.sqlite3").exists()
        # Rows written by one process are read by the others (SQLite WAL on
        # the node's local disk; the memo is never on the shared cache).
        import dist_jobs

        DigestMemo(memo_dir).put("test", "digest-of-test")
        workers = sorted(cluster.scheduler_info()["workers"])
        for n, address in enumerate(workers):
            cluster.submit(
                dist_jobs.memo_put_and_read,
                str(memo_dir),
                f"w{n}",
                workers=[address],
                pure=False,
            ).result()
        seen = cluster.submit(
            dist_jobs.memo_put_and_read,
            str(memo_dir),
            "w0",
            workers=[workers[1]],
            pure=False,
        ).result()
        assert seen == ["test", "w0", "w1"]
        assert DigestMemo(memo_dir).get("w1") == "digest-of-w1"
    finally:
        scheduler.close()


def test_a_file_level_dask_executor_serves_every_entry(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], dask_cli: str
) -> None:
    config = tmp_path / "schedule.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            state_dir: state
            executor: {dask_cli}
            defaults: {{runner: {{cache_dir: cache}}}}
            schedules:
              - {{name: one, interval_seconds: 3600, target: "dist_jobs:run_item"}}
              - {{name: two, interval_seconds: 3600, target: "dist_jobs:boom"}}
            """
        )
    )
    scheduler = Scheduler.from_yaml(config, clock=clock)
    try:
        assert scheduler.executor.name == "dask"
        scheduler.run_pending()
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (one,) = scheduler.ledger.history(entry="one")
        (two,) = scheduler.ledger.history(entry="two")
        assert (one.state, one.misses) == ("ok", 1)
        # A target's exception travels back from the worker into the ledger.
        assert two.state == "failed" and "exploded on purpose" in two.error
    finally:
        scheduler.close()


def test_a_client_given_to_the_scheduler_is_adapted(
    tmp_path: Path, clock: FakeClock, dist_env: dict[str, Path], cluster: Any
) -> None:
    scheduler = Scheduler(clock=clock, executor=cluster, state_dir=tmp_path / "s")
    scheduler.register_task(
        "one", HOUR, "dist_jobs:run_item", runner=runner_settings(tmp_path)
    )
    try:
        assert scheduler.executor.name == "dask"
        clock.advance(HOUR)
        scheduler.run_pending()
        assert scheduler.drain(timeout=60)
        (row,) = scheduler.ledger.history(entry="one")
        assert (row.state, row.misses) == ("ok", 1)
    finally:
        scheduler.close()
    # The scheduler does not close a client it was given.
    assert cluster.status == "running"
